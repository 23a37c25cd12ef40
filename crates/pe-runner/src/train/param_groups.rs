//! Which parameters train, and with what learning-rate scale and weight decay each.
//!
//! - Weight decay: none for 1-D parameters (norm scales/shifts, biases) and the named ones
//!   (position embedding, class token), as timm's `param_groups_weight_decay`.
//! - `optimizer.layer_decay` (ViTs): timm's `param_groups_layer_decay` block ids — the embeddings
//!   (`cls_token`, `dist_token`, `pos_embed`, `patch_embed.*`) 0, `blocks.i.*` i + 1, the final norm with the last
//!   block (depth), everything else (the head) depth + 1 — and the scale `layer_decay^(depth + 1 − id)`.
//! - `[[optimizer.groups]]`: the first rule whose `match` pattern names a parameter multiplies its
//!   learning rate by `lr_mult` and its weight decay by `wd_mult` (PE's stage-shared `shared_w`
//!   included: `match = "*.shared_w"`).
//! - `optimizer.freeze` / `optimizer.train`: parameters a freeze pattern matches and no train
//!   pattern does get no gradient and no optimizer state (`freeze = ["*"]`, `train = ["head.*"]` is
//!   a linear probe).
//!
//! A pattern that matches no parameter is an error: a typo would otherwise train another model.

use pe_models::pretrained::glob_match;
use pe_models::ModelConfig;
use tch::{nn, Tensor};

use crate::config::OptimizerConfig;

/// One optimizer group: its tensors (sorted by name) and what they train with.
pub struct Group {
    pub names: Vec<String>,
    pub params: Vec<Tensor>,
    pub lr_scale: f64,
    pub weight_decay: f64,
}

/// A pattern of the config that names no parameter of the model.
#[derive(Debug, thiserror::Error)]
#[error("{key}: the pattern {pattern:?} matches no parameter of the model")]
pub struct UnmatchedPattern {
    pub key: &'static str,
    pub pattern: String,
}

/// Stops the gradient of every frozen parameter (see the module doc).
pub fn freeze(vs: &nn::VarStore, config: &OptimizerConfig) -> Result<(), UnmatchedPattern> {
    let variables: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    check_patterns(&variables, "optimizer.freeze", &config.freeze)?;
    check_patterns(&variables, "optimizer.train", &config.train)?;
    for (name, tensor) in variables {
        let frozen = config.freeze.iter().any(|p| glob_match(p, &name))
            && !config.train.iter().any(|p| glob_match(p, &name));
        if frozen {
            let _ = tensor.set_requires_grad(false);
        }
    }
    Ok(())
}

fn check_patterns(
    variables: &[(String, Tensor)],
    key: &'static str,
    patterns: &[String],
) -> Result<(), UnmatchedPattern> {
    match patterns.iter().find(|p| !variables.iter().any(|(name, _)| glob_match(p, name))) {
        Some(pattern) => Err(UnmatchedPattern { key, pattern: pattern.clone() }),
        None => Ok(()),
    }
}

/// The trainable parameters in groups: the decay groups first, then the no-decay ones, each kind in
/// the order of its first parameter's name. With no rules and no layer decay that is exactly the
/// two groups (decay, no decay) checkpoints have always been written with.
pub fn groups(
    vs: &nn::VarStore,
    config: &OptimizerConfig,
    model: &ModelConfig,
) -> Result<Vec<Group>, UnmatchedPattern> {
    let mut named: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let rule_patterns: Vec<String> = config.groups.iter().map(|rule| rule.pattern.clone()).collect();
    check_patterns(&named, "optimizer.groups.match", &rule_patterns)?;
    let depth = match model {
        ModelConfig::Vit(vit) => vit.depth,
        ModelConfig::Resnet(_) => 0,
    };
    let mut groups: Vec<(bool, Group)> = Vec::new();
    for (name, tensor) in named {
        // The distillation token goes with the class token (timm exempts both), so recipes written
        // before distilled models keep their meaning.
        let named_as = if name == "dist_token" { "cls_token" } else { name.as_str() };
        let exempt = (config.no_decay_1d && tensor.dim() <= 1)
            || config.no_decay_names.iter().any(|n| named_as == n || named_as.ends_with(&format!(".{n}")));
        let rule = config.groups.iter().find(|rule| glob_match(&rule.pattern, &name));
        let (lr_mult, wd_mult) = rule.map_or((1.0, 1.0), |rule| (rule.lr_mult, rule.wd_mult));
        let lr_scale = lr_mult * config.layer_decay.powi((depth + 1 - vit_layer_id(&name, depth)) as i32);
        let weight_decay = if exempt { 0.0 } else { config.weight_decay * wd_mult };
        let decays_here = !exempt;
        let same = |(decays, g): &&mut (bool, Group)| {
            *decays == decays_here && g.lr_scale == lr_scale && g.weight_decay == weight_decay
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some((_, group)) => {
                group.names.push(name);
                group.params.push(tensor);
            }
            None => groups.push((
                decays_here,
                Group { names: vec![name], params: vec![tensor], lr_scale, weight_decay },
            )),
        }
    }
    // Stable: decay groups before no-decay ones, each in first-appearance order.
    groups.sort_by_key(|(decays, _)| !decays);
    Ok(groups.into_iter().map(|(_, group)| group).collect())
}

/// timm's layer id of a ViT parameter (`depth` blocks): embeddings 0, block i i + 1, the final
/// norm depth (timm's matcher puts it in the last block's group), the rest (the head, which the
/// matcher does not name) depth + 1.
fn vit_layer_id(name: &str, depth: usize) -> usize {
    let root = name.split('.').next().unwrap_or(name);
    match root {
        "cls_token" | "dist_token" | "pos_embed" | "patch_embed" => 0,
        "blocks" => name.split('.').nth(1).and_then(|i| i.parse::<usize>().ok()).map_or(depth + 1, |i| i + 1),
        "norm" => depth,
        _ => depth + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pe_models::preset;

    fn built(name: &str) -> (nn::VarStore, ModelConfig) {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let config = preset(name).unwrap();
        config.init(vs.root()).unwrap();
        (vs, config)
    }

    #[test]
    fn vit_pe_groups_follow_timms_rule() {
        let (vs, model) = built("vit_pe_mini");
        let groups = groups(&vs, &OptimizerConfig::default(), &model).unwrap();
        assert_eq!(groups.len(), 2, "no rules: the decay and the no-decay group");
        let (decay, no_decay) = (&groups[0].names, &groups[1].names);
        assert!(groups[0].weight_decay > 0.0 && groups[1].weight_decay == 0.0);
        assert!(no_decay.contains(&"pos_embed".into()) && no_decay.contains(&"cls_token".into()));
        assert!(
            no_decay.contains(&"blocks.0.mlp.fc1_bias".into()) && no_decay.contains(&"norm.weight".into())
        );
        assert!(decay.contains(&"blocks.0.attn.wq".into()) && decay.contains(&"blocks.0.mlp.weight".into()));
        assert!(decay.contains(&"head.weight".into()) && !decay.contains(&"head.bias".into()));
        assert_eq!(decay.len() + no_decay.len(), vs.trainable_variables().len());
    }

    #[test]
    fn a_rule_reaches_the_stage_shared_matrix_and_freezing_removes_parameters() {
        let (vs, model) = built("resnet_mini_pe");
        let rule = crate::config::GroupRule { pattern: "*.shared_w".into(), lr_mult: 0.5, wd_mult: 0.0 };
        let config = OptimizerConfig { groups: vec![rule], ..OptimizerConfig::default() };
        let groups = groups(&vs, &config, &model).unwrap();
        let shared = groups.iter().find(|g| g.names.iter().any(|n| n.ends_with("shared_w"))).unwrap();
        assert_eq!((shared.lr_scale, shared.weight_decay), (0.5, 0.0));
        assert!(shared.names.iter().all(|n| n.ends_with("shared_w")));

        let config =
            OptimizerConfig { freeze: vec!["*".into()], train: vec!["fc.*".into()], ..Default::default() };
        freeze(&vs, &config).unwrap();
        let groups = super::groups(&vs, &config, &model).unwrap();
        let names: Vec<&str> = groups.iter().flat_map(|g| &g.names).map(String::as_str).collect();
        assert_eq!(names, ["fc.weight", "fc.bias"]);
    }

    #[test]
    fn a_pattern_that_matches_nothing_is_an_error() {
        let (vs, _) = built("resnet_mini");
        let config = OptimizerConfig { freeze: vec!["backbone.*".into()], ..Default::default() };
        let error = freeze(&vs, &config).unwrap_err();
        assert_eq!(
            error.to_string(),
            "optimizer.freeze: the pattern \"backbone.*\" matches no parameter of the model"
        );
    }
}
