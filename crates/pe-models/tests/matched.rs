//! Parameter-matched baselines (issue 15): each is its untied family made narrower, and its count
//! with head is within 2 % of its PE twin's. Every number below is derived by hand here, not
//! copied from `pe summary`.

use pe_models::registry::{MATCHED_TWINS, MATCH_TOLERANCE};
use pe_models::ModelConfig;
use tch::nn;
use tch::Device;

/// Parameters with head.
///
/// Untied bottleneck ResNet, stem width s = stage-1 width w, stage widths w-2w-4w(-8w), expansion 4,
/// 3-channel input. A stage of inner width v and output 4v entered from c channels has first block
/// c·v + 9v² + 4v² + 4c·v (with its projection) and 17v² per further block, plus 12v per block
/// and 8v of projection BN.
/// - ResNet-50 ([3, 4, 6, 3], 7×7 stem, 1000 classes): quadratic 52 + 296 + 1728 + 3648 = 5724 w²;
///   linear 147w (stem conv) + 2w (bn1) + 828w (stage BNs) + 32000w (fc) = 32977 w; fc bias 1000.
///   w = 64 gives torchvision's 25,557,032; w = 53 gives 16,078,716 + 1,747,781 + 1000 = 17,827,497.
/// - resnet_mini ([2, 2, 2], 3×3 stem of 2w, 10 classes): 40 + 160 + 640 = 840 w²; linear
///   54w + 4w + 224w + 160w = 442 w; bias 10. w = 8 gives 57,306; w = 7 gives 41,160 + 3,094 + 10 = 44,264.
///
/// Untied ViT, width C, MLP ratio 4, qkv bias, 3-channel input: a block is 4C² + 2C·4C + 9C + 4C
/// = 12C² + 13C.
/// - vit_mini (depth 4, patch 4 at 28: 50 tokens, 10 classes): patch 48C + C, cls C, pos 50C, norm
///   2C, head 10C + 10, so 48C² + 164C + 10. C = 96 gives 458,122; C = 69 gives 228,528 + 11,316 + 10
///   = 239,854.
/// - DeiT-S (depth 12, patch 16 at 224: 197 tokens, 1000 classes): blocks 144C² + 156C, then patch
///   769C, cls C, pos 197C, norm 2C, head 1000C + 1000, so 144C² + 2125C + 1000. C = 384 gives timm's
///   22,050,664; C = 276 gives 10,969,344 + 586,500 + 1000 = 11,556,844.
///
/// PE twins. A PE ResNet stage (projection entrance) has W (v·4v), the projection c·4v + 8v, and per
/// block 9v² + 12v. resnet_mini_pe: stem 464, stages 2,176 + 8,192 + 31,744, fc 1,290 = 43,866.
/// A tied ViT block is 2C² + 4C (attention) + C·4C + 5C (MLP) + 4C (norms) = 6C² + 13C; vit_pe_mini
/// at C = 96: 4 · 56,544 + 10,762 = 236,938. ResNet50-PE¹/PE² and ViT-PE (DeiT-S) are the hand
/// counts of tests/registry.rs.
const COUNTS: &[(&str, i64)] = &[
    ("resnet50_matched", 17_827_497),
    ("resnet50_pe", 17_590_312),
    ("resnet50_pe_stage34", 18_085_928),
    ("vit_small_matched", 11_556_844),
    ("vit_pe_small", 11_433_832),
    ("resnet_mini_matched", 44_264),
    ("resnet_mini_pe", 43_866),
    ("vit_mini_matched", 239_854),
    ("vit_pe_mini", 236_938),
];

/// Each matched preset's untied full-width baseline: the architecture it scales down.
const BASELINES: &[(&str, &str)] = &[
    ("resnet50_matched", "resnet50"),
    ("vit_small_matched", "deit_small"),
    ("resnet_mini_matched", "resnet_mini"),
    ("vit_mini_matched", "vit_mini"),
];

fn documented(name: &str) -> i64 {
    COUNTS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name} has no hand count")).1
}

fn built_params(name: &str) -> i64 {
    let vs = nn::VarStore::new(Device::Cpu);
    pe_models::preset(name).unwrap().init(vs.root()).unwrap();
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

#[test]
fn matched_and_twin_counts_equal_the_hand_counts() {
    for &(name, expected) in COUNTS {
        assert_eq!(built_params(name), expected, "{name}");
        let config = pe_models::preset(name).unwrap();
        assert_eq!(config.costs(config.default_img_size()).params(), expected, "{name}: cost sheet");
    }
}

#[test]
fn every_matched_preset_is_within_two_percent_of_its_pe_twin() {
    assert_eq!(MATCH_TOLERANCE, 0.02);
    for &(matched, twin) in MATCHED_TWINS {
        let (m, t) = (documented(matched), documented(twin));
        let gap = (m - t) as f64 / t as f64;
        assert!(gap.abs() <= MATCH_TOLERANCE, "{matched} vs {twin}: {:+.2} %", 100.0 * gap);
    }
    // The gaps themselves, by hand: (239,854 − 236,938) / 236,938 = +1.23 %, and so on.
    let gap = |m: i64, t: i64| 10_000 * (m - t) / t;
    assert_eq!(gap(239_854, 236_938), 123);
    assert_eq!(gap(44_264, 43_866), 90);
    assert_eq!(gap(11_556_844, 11_433_832), 107);
    assert_eq!(gap(17_827_497, 17_590_312), 134);
    assert_eq!(gap(17_827_497, 18_085_928), -142);
}

#[test]
fn matched_presets_differ_from_their_baselines_only_in_width() {
    for &(matched, baseline) in BASELINES {
        let (m, b) = (pe_models::preset(matched).unwrap(), pe_models::preset(baseline).unwrap());
        match (m, b) {
            (ModelConfig::Resnet(m), ModelConfig::Resnet(b)) => {
                assert!(m.widths.iter().zip(&b.widths).all(|(mw, bw)| mw < bw), "{matched}");
                let widened =
                    pe_models::ResNetConfig { widths: b.widths.clone(), stem_channels: b.stem_channels, ..m };
                assert_eq!(widened, b, "{matched}");
            }
            (ModelConfig::Vit(m), ModelConfig::Vit(b)) => {
                assert!(m.embed_dim < b.embed_dim && m.embed_dim % m.heads == 0, "{matched}");
                assert_eq!(pe_models::VitConfig { embed_dim: b.embed_dim, ..m }, b, "{matched}");
            }
            _ => panic!("{matched} and {baseline} are different families"),
        }
    }
}

#[test]
fn every_matched_pair_names_registered_presets() {
    for &(matched, twin) in MATCHED_TWINS {
        assert!(pe_models::preset(matched).is_ok() && pe_models::preset(twin).is_ok(), "{matched}/{twin}");
        assert!(BASELINES.iter().any(|(m, _)| *m == matched), "{matched} has no baseline here");
    }
}
