//! Principal-angle overlap between col(W₁) and row(W₂), and energy outside col(W).

mod common;

use std::f64::consts::FRAC_PI_2;

use tch::{Kind, Tensor};

use pe_analyze::energy::EnergyMeter;
use pe_analyze::subspace::overlap;
use pe_analyze::{Analysis, RunInfo};

use common::{gaussian, orthonormal, pair_of, with_singular_values};

fn basis(columns: &[&[f64]]) -> Tensor {
    let n = columns[0].len() as i64;
    let flat: Vec<f64> = columns.iter().flat_map(|c| c.iter().copied()).collect();
    Tensor::from_slice(&flat).view([columns.len() as i64, n]).tr().to_kind(Kind::Float)
}

#[test]
fn orthogonal_subspaces_do_not_overlap() {
    let a = basis(&[&[1.0, 0.0, 0.0, 0.0], &[0.0, 1.0, 0.0, 0.0]]);
    let b = basis(&[&[0.0, 0.0, 1.0, 0.0], &[0.0, 0.0, 0.0, 1.0]]);
    let o = overlap(&a, &b).unwrap();
    assert!(o.mean_cos2.abs() < 1e-12, "{o:?}");
    // Two right angles: sqrt(2 · (π/2)²).
    assert!((o.grassmann - 2f64.sqrt() * FRAC_PI_2).abs() < 1e-6, "{o:?}");
    assert_eq!((o.dims, o.ambient, o.chance), ([2, 2], 4, 0.5));
}

#[test]
fn equal_subspaces_overlap_fully_whatever_the_basis() {
    let a = orthonormal(50, 7, 11).to_kind(Kind::Float);
    // Another basis of the same span: a rotated by a random 7×7 orthogonal matrix.
    let b = a.matmul(&orthonormal(7, 7, 12).to_kind(Kind::Float));
    let o = overlap(&a, &b).unwrap();
    assert!((o.mean_cos2 - 1.0).abs() < 1e-5 && o.grassmann < 1e-2, "{o:?}");
}

#[test]
fn half_turned_plane_by_hand() {
    // span(e₁, e₂) vs span(e₁, (e₂ + e₃)/√2): angles 0 and π/4, so mean cos² = (1 + ½)/2.
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let a = basis(&[&[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0]]);
    let b = basis(&[&[1.0, 0.0, 0.0], &[0.0, h, h]]);
    let o = overlap(&a, &b).unwrap();
    assert!((o.mean_cos2 - 0.75).abs() < 1e-6, "{o:?}");
    assert!((o.grassmann - std::f64::consts::FRAC_PI_4).abs() < 1e-3, "{o:?}");
}

#[test]
fn tied_pair_overlaps_fully_and_untied_pair_at_chance() {
    let w = with_singular_values(64, 16, &[4.0, 3.0, 2.0, 1.0], 1);
    let tied = Analysis::from_matrices(pair_of(vec![w.shallow_clone()])).unwrap();
    let tied = tied.report("tied", RunInfo::default(), None).unwrap();
    let pair = &tied.pairs[0];
    assert!(pair.tied && (pair.full.mean_cos2 - 1.0).abs() < 1e-5, "{pair:?}");
    assert!((pair.dominant.mean_cos2 - 1.0).abs() < 1e-5, "{pair:?}");
    // W₂ = Wᵀ given explicitly gives the same answer as the tie.
    let explicit = Analysis::from_matrices(pair_of(vec![w.shallow_clone(), w.tr().contiguous()])).unwrap();
    let explicit = explicit.report("explicit", RunInfo::default(), None).unwrap();
    assert!((explicit.pairs[0].full.mean_cos2 - 1.0).abs() < 1e-5, "{:?}", explicit.pairs[0]);
    // An unrelated W₂: 4-dimensional subspaces of R⁶⁴ overlap about 4/64.
    let other = with_singular_values(16, 64, &[4.0, 3.0, 2.0, 1.0], 9);
    let untied = Analysis::from_matrices(pair_of(vec![w, other])).unwrap();
    let untied = untied.report("untied", RunInfo::default(), None).unwrap();
    let pair = &untied.pairs[0];
    assert!(!pair.tied && pair.full.mean_cos2 < 0.3, "{pair:?}");
    assert_eq!((pair.full.dims, pair.full.ambient), ([4, 4], 64));
}

#[test]
fn activation_inside_col_w_has_no_energy_outside() {
    // h = W x (a linear "activation") lies in col(W) exactly.
    let w = with_singular_values(32, 8, &[5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.5], 2);
    let (u, _, _) = w.svd(true, true);
    let mut meter = EnergyMeter::new("h", &u, 8, 3);
    let x = gaussian(&[100, 8], 4).to_kind(Kind::Float);
    meter.add(&x.matmul(&w.tr())).unwrap();
    let e = meter.outside().unwrap();
    assert!(e.full_rank < 1e-5, "{e:?}");
    // Restricted to the 3 dominant directions, the rest of the energy is outside.
    assert!(e.effective_rank > 0.05 && e.effective_rank < 1.0, "{e:?}");
    assert_eq!((e.ranks, e.hidden_dim, e.vectors), ([8, 3], 32, 100));
}

#[test]
fn activation_orthogonal_to_col_w_is_all_outside() {
    let u = orthonormal(10, 4, 3).to_kind(Kind::Float);
    // Vectors in the orthogonal complement: (I − UUᵀ) z.
    let z = gaussian(&[20, 10], 5).to_kind(Kind::Float);
    let h = &z - z.matmul(&u).matmul(&u.tr());
    let mut meter = EnergyMeter::new("h", &u, 4, 2);
    meter.add(&h).unwrap();
    assert!((meter.outside().unwrap().full_rank - 1.0).abs() < 1e-5);
    // A feature map [B, C, H, W] is measured per position; a wrong channel count is an error.
    assert!(meter.add(&Tensor::ones([2, 10, 3, 3], (Kind::Float, tch::Device::Cpu))).is_ok());
    assert!(meter.add(&Tensor::ones([2, 9], (Kind::Float, tch::Device::Cpu))).is_err());
}
