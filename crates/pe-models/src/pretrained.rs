//! Starting a model from weights trained for another task: strict name/shape matching with
//! deliberate exclusions, a head re-initialised for other classes, and a ViT position embedding
//! resampled to another patch grid.
//!
//! Everything that does not fit is an error that lists it (grouped: `blocks.*.attn.wq ×12`, not
//! one line per block), except the two adaptations a fine-tune needs and names in one line each:
//! a head whose class count differs keeps its fresh initialisation (timm's), scaled by
//! `head_init_scale`; a position embedding for another grid is resampled bicubically with the
//! class token kept (timm's `resample_abs_pos_embed`, antialiased).

use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Kind, Tensor};

use crate::model::ModelConfig;
use crate::weights::{copy_checked, WeightsError, BN_COUNTER};

/// What to take from the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection<'a> {
    /// Name patterns (see [`glob_match`]) of model tensors that keep their fresh initialisation.
    pub exclude: &'a [String],
    /// Factor for a head re-initialised because the class count differs.
    pub head_init_scale: f64,
}

/// The adaptations made, for the run's log.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Adapted {
    /// The weights' class count, when the head was re-initialised for this model's.
    pub head_reinitialised_from: Option<i64>,
    /// The position embedding's grid side, before and after resampling.
    pub pos_embed_resampled: Option<(i64, i64)>,
    /// Model tensors left out on purpose (`exclude`).
    pub excluded: usize,
}

impl Adapted {
    /// One line per adaptation; empty when the weights were taken as they are.
    pub fn lines(&self, config: &ModelConfig) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(classes) = self.head_reinitialised_from {
            lines.push(format!(
                "the weights have {classes} classes, this model {}: {} re-initialised",
                config.num_classes(),
                config.head_prefixes().iter().map(|head| format!("{head}.*")).collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some((from, to)) = self.pos_embed_resampled {
            lines.push(format!(
                "pos_embed resampled from a {from}×{from} to a {to}×{to} patch grid (bicubic)"
            ));
        }
        if self.excluded > 0 {
            lines.push(format!(
                "{} tensor(s) kept their fresh initialisation (model.init_exclude)",
                self.excluded
            ));
        }
        lines
    }
}

/// Shell-style match of a dotted name: `*` is any run of characters (dots included), `?` one.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative wildcard matching with one backtrack point (the last `*`).
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Reads a safetensors file into memory (CPU).
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>, WeightsError> {
    if !path.is_file() {
        return Err(WeightsError::Missing { path: path.into() });
    }
    Ok(Tensor::read_safetensors(path)
        .map_err(|e| WeightsError::Read { path: path.into(), reason: e.to_string() })?
        .into_iter()
        .collect())
}

/// Copies `weights` (read from `path`) into the freshly initialised model `vs` of `config`.
pub fn load(
    config: &ModelConfig,
    vs: &nn::VarStore,
    path: &Path,
    mut weights: HashMap<String, Tensor>,
    selection: &Selection,
) -> Result<Adapted, WeightsError> {
    let variables = vs.variables();
    let excluded = |name: &str| selection.exclude.iter().any(|p| glob_match(p, name));
    let mut adapted =
        Adapted { excluded: variables.keys().filter(|n| excluded(n)).count(), ..Adapted::default() };
    weights.retain(|name, _| !excluded(name) && !name.ends_with(BN_COUNTER));

    let heads = config.head_prefixes();
    let head_weight = format!("{}.weight", config.head_prefix());
    if let (Some(stored), Some(var)) = (weights.get(&head_weight), variables.get(&head_weight)) {
        let (stored, wanted) = (stored.size(), var.size());
        // Another class count, same feature width: new heads (both of a distilled ViT) for the
        // new classes.
        if stored.len() == 2 && stored[1] == wanted[1] && stored[0] != wanted[0] {
            adapted.head_reinitialised_from = Some(stored[0]);
            for name in heads.iter().flat_map(|head| [format!("{head}.weight"), format!("{head}.bias")]) {
                weights.remove(&name);
                if let Some(var) = variables.get(&name) {
                    let _ = tch::no_grad(|| var.shallow_clone().g_mul_scalar_(selection.head_init_scale));
                }
            }
        }
    }
    if let (ModelConfig::Vit(vit), Some(stored), Some(var)) =
        (config, weights.get("pos_embed"), variables.get("pos_embed"))
    {
        if stored.size() != var.size() {
            let grid = vit.img_size / vit.patch_size;
            if let Some((from, resampled)) = resample_pos_embed(stored, grid, vit.prefix_tokens()) {
                adapted.pos_embed_resampled = Some((from, grid));
                weights.insert("pos_embed".into(), resampled);
            }
        }
    }

    let in_head = |name: &str| heads.iter().any(|head| name.starts_with(&format!("{head}.")));
    let reinitialised = |name: &str| adapted.head_reinitialised_from.is_some() && in_head(name);
    copy_checked(vs, &weights, path, |n| excluded(n) || reinitialised(n))
        .map_err(|e| with_hint(e, config))?;
    Ok(adapted)
}

/// The mismatch error with a hint at the way out: a new head when only the head differs.
fn with_hint(error: WeightsError, config: &ModelConfig) -> WeightsError {
    let WeightsError::Mismatch { path, missing, unexpected, mismatched, .. } = error else { return error };
    let heads: Vec<String> = config.head_prefixes().iter().map(|head| format!("{head}.")).collect();
    let only_head = missing
        .iter()
        .chain(&unexpected)
        .chain(&mismatched)
        .all(|n| heads.iter().any(|head| n.starts_with(head.as_str())));
    let head = heads.iter().map(|head| format!("\"{head}*\"")).collect::<Vec<_>>().join(" and ");
    let hint = if only_head {
        format!("only the head differs: add {head} to model.init_exclude to train a new one")
    } else {
        "the weights are of another architecture; model.init_exclude leaves tensors out on purpose".into()
    };
    WeightsError::Mismatch { path, missing, unexpected, mismatched, hint: Some(hint) }
}

/// `posemb` [1, prefix + g², C] resampled to [1, prefix + grid², C]: the prefix tokens (class and
/// distillation token) kept, the patch tokens interpolated as a g×g image, bicubic, antialiased, in fp32 (timm's
/// `resample_abs_pos_embed`). `None` when the stored tokens do not form a square grid.
pub fn resample_pos_embed(posemb: &Tensor, grid: i64, prefix: i64) -> Option<(i64, Tensor)> {
    let size = posemb.size();
    let [1, tokens, dim] = size[..] else { return None };
    let from = ((tokens - prefix) as f64).sqrt().round() as i64;
    if from * from != tokens - prefix {
        return None;
    }
    let kind = posemb.kind();
    let posemb = posemb.to_kind(Kind::Float);
    let (head, patches) = (posemb.narrow(1, 0, prefix), posemb.narrow(1, prefix, tokens - prefix));
    let image = patches.reshape([1, from, from, dim]).permute([0, 3, 1, 2]);
    let resized = image.internal_upsample_bicubic2d_aa([grid, grid], false, None, None);
    let patches = resized.permute([0, 2, 3, 1]).reshape([1, grid * grid, dim]);
    Some((from, Tensor::cat(&[head, patches], 1).to_kind(kind)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_dotted_names() {
        assert!(glob_match("head.*", "head.weight"));
        assert!(!glob_match("head.*", "heads.weight"));
        assert!(glob_match("blocks.*.mlp.*", "blocks.11.mlp.fc1_bias"));
        assert!(!glob_match("blocks.*.mlp.*", "blocks.1.attn.wq"));
        assert!(glob_match("*", "anything.at.all"));
        assert!(glob_match("layer?.0.conv1.weight", "layer3.0.conv1.weight"));
        assert!(glob_match("*shared_w", "layer3.shared_w"));
        assert!(!glob_match("fc", "fc.weight"));
    }
}
