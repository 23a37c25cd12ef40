//! Named presets: the names TOML recipes and `pe summary` use, with the paper's reported numbers.

use crate::error::Error;
use crate::model::ModelConfig;
use crate::resnet::ResNetConfig;
use crate::vit::VitConfig;

/// A registered model with what the paper (or the reference library) reports for it.
#[derive(Debug, Clone)]
pub struct Preset {
    pub name: &'static str,
    pub config: ModelConfig,
    /// Parameters (millions) as the paper's tables print them, if the paper lists the model.
    pub paper_params_m: Option<f64>,
    /// How our count relates to the paper's.
    pub note: &'static str,
}

/// Every registered model, in the order `pe summary` prints them.
pub fn presets() -> Vec<Preset> {
    use ModelConfig::{Resnet, Vit};
    let preset = |name, config, paper_params_m, note| Preset { name, config, paper_params_m, note };
    vec![
        preset("resnet18", Resnet(ResNetConfig::resnet18()), Some(11.7), "torchvision resnet18"),
        preset("resnet34", Resnet(ResNetConfig::resnet34()), Some(21.8), "torchvision resnet34"),
        preset("resnet50", Resnet(ResNetConfig::resnet50()), Some(25.6), "torchvision resnet50"),
        preset(
            "resnet50_pe",
            Resnet(ResNetConfig::resnet50_pe(&[1, 2, 3, 4])),
            Some(12.8),
            "PE¹: one W per stage in all 4 stages. Paper's 12.8M = ours without head minus the 4 stage-entrance projections (2.78M)",
        ),
        preset(
            "resnet50_pe_stage34",
            Resnet(ResNetConfig::resnet50_pe(&[3, 4])),
            Some(13.4),
            "PE²: stages 3-4 PE. Paper's 13.4M = ours without head minus the 2 PE stage-entrance projections (2.63M)",
        ),
        preset("deit_tiny", Vit(VitConfig::deit_tiny()), Some(5.7), "timm deit_tiny_patch16_224"),
        preset("deit_small", Vit(VitConfig::deit_small()), Some(22.1), "timm deit_small_patch16_224"),
        preset("vit_pe_tiny", Vit(VitConfig::deit_tiny().pe()), None, "DeiT-T geometry, tied attention + MLP"),
        preset(
            "vit_pe_small",
            Vit(VitConfig::deit_small().pe()),
            Some(11.1),
            "DeiT-S geometry, tied attention + MLP; paper's 11.1M = ours without head (11.05M)",
        ),
        preset(
            "deit_tiny_distilled",
            Vit(VitConfig::deit_tiny().distilled()),
            Some(5.9),
            "timm deit_tiny_distilled_patch16_224: DeiT-T with a distillation token and head",
        ),
        preset(
            "deit_small_distilled",
            Vit(VitConfig::deit_small().distilled()),
            Some(22.4),
            "timm deit_small_distilled_patch16_224: DeiT-S with a distillation token and head",
        ),
        preset(
            "vit_pe_small_distilled",
            Vit(VitConfig::deit_small().pe().distilled()),
            None,
            "vit_pe_small with DeiT's distillation token and head",
        ),
        preset("resnet_mini", Resnet(ResNetConfig::resnet_mini(&[])), None, "CPU scale: 28×28 input, 3 bottleneck stages of widths 8-32"),
        preset("resnet_mini_pe", Resnet(ResNetConfig::resnet_mini(&[1, 2, 3])), None, "resnet_mini with one shared W in each of its 3 stages"),
        preset("vit_mini", Vit(VitConfig::vit_mini()), None, "CPU scale: 28×28 input, patch 4, dim 96, depth 4, 3 heads"),
        preset("vit_pe_mini", Vit(VitConfig::vit_mini().pe()), None, "vit_mini with tied attention + MLP"),
        preset(
            "resnet50_matched",
            Resnet(ResNetConfig::resnet50_matched()),
            None,
            "ResNet-50 at width ×53/64 (stage widths 53-424): the parameters of PE¹ and PE², untied",
        ),
        preset(
            "vit_small_matched",
            Vit(VitConfig::deit_small_matched()),
            None,
            "DeiT-S at width 276 (6 heads of 46): the parameters of vit_pe_small, untied",
        ),
        preset(
            "resnet_mini_matched",
            Resnet(ResNetConfig::resnet_mini_matched()),
            None,
            "resnet_mini at width ×7/8 (stage widths 7-28): the parameters of resnet_mini_pe, untied",
        ),
        preset(
            "vit_mini_matched",
            Vit(VitConfig::vit_mini_matched()),
            None,
            "vit_mini at width 69 (3 heads of 23): the parameters of vit_pe_mini, untied",
        ),
    ]
}

/// Parameter-matched baselines and the PE model each stands beside, `(matched, pe_twin)`: the same
/// untied family made narrower to the twin's parameter count with head, within [`MATCH_TOLERANCE`].
/// They answer whether tying beats simply shrinking (issue 15); one ResNet-50 matches both PE¹ and PE².
pub const MATCHED_TWINS: &[(&str, &str)] = &[
    ("resnet50_matched", "resnet50_pe"),
    ("resnet50_matched", "resnet50_pe_stage34"),
    ("vit_small_matched", "vit_pe_small"),
    ("resnet_mini_matched", "resnet_mini_pe"),
    ("vit_mini_matched", "vit_pe_mini"),
];

/// How far (relative) a matched baseline's parameter count may sit from its twin's.
pub const MATCH_TOLERANCE: f64 = 0.02;

/// The config registered under `name`, or an error listing the valid names.
pub fn preset(name: &str) -> Result<ModelConfig, Error> {
    presets().into_iter().find(|p| p.name == name).map(|p| p.config).ok_or_else(|| Error::UnknownModel {
        name: name.to_owned(),
        registered: presets().iter().map(|p| p.name).collect(),
    })
}
