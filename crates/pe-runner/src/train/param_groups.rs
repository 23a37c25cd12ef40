//! Splitting a model's parameters into weight-decay and no-decay groups (timm's rule).

use tch::{nn, Tensor};

use crate::config::OptimizerConfig;

/// Trainable parameters by group, each sorted by name so optimizer state has a stable order.
pub struct ParamGroups {
    pub decay: Vec<(String, Tensor)>,
    pub no_decay: Vec<(String, Tensor)>,
}

/// Norm scales/shifts and biases (1-D) and the named parameters (position embedding, cls token)
/// get no weight decay, as in timm's `param_groups_weight_decay`.
pub fn split(vs: &nn::VarStore, config: &OptimizerConfig) -> ParamGroups {
    let mut named: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let exempt = |name: &str, t: &Tensor| {
        (config.no_decay_1d && t.dim() <= 1)
            || config.no_decay_names.iter().any(|n| name == n || name.ends_with(&format!(".{n}")))
    };
    let (no_decay, decay) = named.into_iter().partition(|(name, t)| exempt(name, t));
    ParamGroups { decay, no_decay }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pe_models::preset;

    #[test]
    fn vit_pe_groups_follow_timms_rule() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        preset("vit_pe_mini").unwrap().init(vs.root()).unwrap();
        let groups = split(&vs, &OptimizerConfig::default());
        let no_decay: Vec<&str> = groups.no_decay.iter().map(|(n, _)| n.as_str()).collect();
        assert!(no_decay.contains(&"pos_embed") && no_decay.contains(&"cls_token"));
        assert!(no_decay.contains(&"blocks.0.mlp.fc1_bias") && no_decay.contains(&"norm.weight"));
        let decay: Vec<&str> = groups.decay.iter().map(|(n, _)| n.as_str()).collect();
        assert!(decay.contains(&"blocks.0.attn.wq") && decay.contains(&"blocks.0.mlp.weight"));
        assert!(decay.contains(&"head.weight") && !decay.contains(&"head.bias"));
        assert_eq!(groups.decay.len() + groups.no_decay.len(), vs.trainable_variables().len());
    }
}
