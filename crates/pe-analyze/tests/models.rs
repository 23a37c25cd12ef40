//! Real registry models: what is extracted, tied pairs overlap fully, untied ones do not, and
//! activations flow to the energy meters.

mod common;

use tch::{nn, Device, Kind};

use pe_analyze::matrices::{Layout, Matrices, PairKind, Role};
use pe_analyze::{Analysis, Report, RunInfo};
use pe_models::{preset, Model};

/// Held while a test seeds and draws from libtorch's global generator (model initialisation
/// draws from it): the tests of this binary run at once and would interleave their draws.
static GLOBAL_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn build(name: &str) -> (nn::VarStore, Model) {
    let _generator = GLOBAL_GENERATOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = preset(name).unwrap().init(vs.root()).unwrap();
    (vs, model)
}

/// The report of a freshly initialised model, with activations of two random batches.
fn report(name: &str) -> Report {
    let (_vs, model) = build(name);
    let analysis = Analysis::new(&model).unwrap();
    let mut energy = analysis.energy();
    for seed in 0..2 {
        let batch = common::gaussian(&[4, 3, 28, 28], seed).to_kind(Kind::Float);
        energy.observe(&model, &batch).unwrap();
    }
    analysis.report(name, RunInfo::default(), Some(&energy)).unwrap()
}

#[test]
fn pe_layers_overlap_one_and_baselines_less() {
    for name in ["vit_pe_mini", "resnet_mini_pe"] {
        let pe = report(name);
        assert!(!pe.pairs.is_empty());
        for pair in &pe.pairs {
            assert!(pair.tied, "{pair:?}");
            for o in [&pair.full, &pair.dominant] {
                assert!((o.mean_cos2 - 1.0).abs() < 1e-4 && o.grassmann < 0.05, "{}: {o:?}", pair.name);
            }
        }
    }
    // At initialisation W₁ and W₂ are independent, so their dominant subspaces overlap about as
    // much as random ones: a quarter of the MLP's hidden space, a fraction of attention's.
    for pair in &report("vit_mini").pairs {
        assert!(!pair.tied && pair.dominant.mean_cos2 < 0.9, "{}: {:?}", pair.name, pair.dominant);
    }
    // A bottleneck's 1×1 pair lives in the narrow width, which its effective rank nearly fills
    // (chance is close to 1): still below the tie wherever the subspaces leave room.
    let resnet = report("resnet50");
    let roomy: Vec<_> = resnet.pairs.iter().filter(|p| p.dominant.chance < 1.0).collect();
    assert!(!roomy.is_empty());
    for pair in roomy {
        assert!(!pair.tied && pair.dominant.mean_cos2 < 0.999, "{}: {:?}", pair.name, pair.dominant);
    }
}

#[test]
fn every_probed_pair_gets_an_energy_share() {
    for name in ["vit_mini", "vit_pe_mini", "resnet_mini", "resnet_mini_pe"] {
        let report = report(name);
        for pair in &report.pairs {
            let reads_activation = pair.kind != PairKind::AttnKv;
            assert_eq!(pair.energy_outside.is_some(), reads_activation, "{name} {}", pair.name);
            if let Some(e) = &pair.energy_outside {
                assert!(
                    (0.0..=1.0).contains(&e.full_rank) && e.effective_rank >= e.full_rank - 1e-9,
                    "{e:?}"
                );
                assert!(e.vectors > 0);
            }
        }
        // The MLP's W: [384, 96] spans a quarter of the hidden space and GELU moves some energy
        // out of it (little at initialisation, where pre-activations are small and GELU nearly linear).
        for pair in report.pairs.iter().filter(|p| p.kind == PairKind::MlpFc1Fc2) {
            assert!(pair.energy_outside.as_ref().unwrap().full_rank > 0.01, "{name} {pair:?}");
        }
    }
}

#[test]
fn matrices_are_the_models_weights_under_their_own_names() {
    // (model, matrices, tied pairs): resnet50 = stem + 16 × 3 convs + 4 downsamples + fc.
    for (name, count, pairs) in
        [("resnet50", 54, 16), ("resnet_mini_pe", 14, 6), ("vit_mini", 26, 12), ("vit_pe_mini", 14, 12)]
    {
        let (vs, model) = build(name);
        let variables = vs.variables();
        let matrices = Matrices::of(&model);
        assert_eq!((matrices.matrices.len(), matrices.pairs.len()), (count, pairs), "{name}");
        for m in &matrices.matrices {
            let (var_name, part) = match m.layout {
                Layout::FusedSlice => m.name.rsplit_once('.').map(|(v, p)| (v.to_owned(), Some(p))).unwrap(),
                _ => (m.name.clone(), None),
            };
            let var = variables.get(&var_name).unwrap_or_else(|| panic!("{name}: no variable {var_name}"));
            let expected = match part {
                Some(part) => {
                    let index = ["q", "k", "v"].iter().position(|p| *p == part).unwrap() as i64;
                    var.chunk(3, 0)[index as usize].shallow_clone()
                }
                None => var.reshape([var.size()[0], -1]),
            };
            assert!(expected.allclose(&m.weight, 0.0, 0.0, false), "{}", m.name);
            if let Layout::ConvReshaped { kh, kw } = m.layout {
                assert_eq!(m.cols(), var.size()[1] * kh * kw, "{}", m.name);
                assert!(matches!(m.role, Role::Stem | Role::Conv3x3), "{}", m.name);
            }
        }
    }
}
