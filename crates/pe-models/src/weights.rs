//! Model weights as safetensors files that PyTorch reads and writes with the same names.
//!
//! Baselines use torchvision/timm parameter names, so a file saved here loads into
//! `torchvision.models.resnet50()` / `timm.create_model("deit_small_patch16_224")` with
//! `load_state_dict(strict=True)`, and their `state_dict()` loads here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tch::{nn, Kind, Tensor};

/// The reasons are kept as text in the message (not as an error source), so a report that prints
/// the whole chain names the file once.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("no weights file {path}")]
    Missing { path: PathBuf },
    #[error("reading weights {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("writing weights {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    /// Each list grouped by [`group_names`]; `hint` says what to do about it.
    #[error("weights {path} do not fit the model:{}{}{}{}", list("missing", .missing), list("unexpected", .unexpected), list("wrong shape", .mismatched), hint.as_ref().map(|h| format!("\n  {h}")).unwrap_or_default())]
    Mismatch {
        path: PathBuf,
        missing: Vec<String>,
        unexpected: Vec<String>,
        mismatched: Vec<String>,
        hint: Option<String>,
    },
}

fn list(what: &str, names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = names.iter().take(12).map(String::as_str).collect();
    let more = if names.len() > 12 { format!(" (+{} more)", names.len() - 12) } else { String::new() };
    format!("\n  {what}: {}{more}", shown.join(", "))
}

/// Names (optionally followed by a shape note) with their numeric parts (`blocks.3`, `layer2.1`)
/// replaced by `*` and counted: 200 names of a 12-block model read as 17 lines, `blocks.*.attn.wq
/// ×12`. A name that occurs once stays as it is. Sorted.
pub fn group_names(names: Vec<String>) -> Vec<String> {
    let pattern = |name: &str| -> String {
        let (name, note) = name.split_once(' ').unwrap_or((name, ""));
        let parts: Vec<&str> =
            name.split('.').map(|p| if p.chars().all(|c| c.is_ascii_digit()) { "*" } else { p }).collect();
        if note.is_empty() {
            parts.join(".")
        } else {
            format!("{} {note}", parts.join("."))
        }
    };
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in names {
        groups.entry(pattern(&name)).or_default().push(name);
    }
    groups
        .into_iter()
        .map(|(pattern, members)| match &members[..] {
            [one] => one.clone(),
            many => format!("{pattern} ×{}", many.len()),
        })
        .collect()
}

/// BatchNorm's step counter: PyTorch's state dicts carry it, our var stores do not need it.
pub(crate) const BN_COUNTER: &str = "num_batches_tracked";

/// Every variable of `vs` (parameters and BN running statistics) plus a `num_batches_tracked`
/// per BatchNorm, as PyTorch's `state_dict()` has them.
pub fn state_dict(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    let mut named: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let counters: Vec<String> = named
        .keys()
        .filter_map(|name| name.strip_suffix("running_mean"))
        .map(|prefix| format!("{prefix}{BN_COUNTER}"))
        .collect();
    for name in counters {
        named.insert(name, Tensor::from(0i64));
    }
    named
}

/// Writes `vs` to `path` atomically (a temporary file renamed into place), in fp32 on the CPU.
pub fn save(vs: &nn::VarStore, path: &Path) -> Result<(), WeightsError> {
    let tensors: Vec<(String, Tensor)> = state_dict(vs)
        .into_iter()
        .map(|(name, t)| {
            let t = if t.is_floating_point() { t.to_kind(Kind::Float) } else { t };
            (name, t.to_device(tch::Device::Cpu).contiguous())
        })
        .collect();
    let tmp = path.with_extension("safetensors.tmp");
    Tensor::write_safetensors(&tensors, &tmp)
        .map_err(|e| WeightsError::Write { path: path.into(), reason: reason(&e, &tmp) })?;
    std::fs::rename(&tmp, path).map_err(|e| WeightsError::Write { path: path.into(), reason: e.to_string() })
}

/// tch's message without the path it repeats (`safetensors error PATH: ...`).
fn reason(error: &tch::TchError, path: &Path) -> String {
    let text = error.to_string();
    let prefix = format!("safetensors error {}: ", path.display());
    text.strip_prefix(&prefix).map_or_else(|| text.clone(), str::to_owned)
}

/// Loads `path` into `vs` strictly: every variable must be present with the same shape, and
/// the file may hold nothing else (BN counters aside). Values are cast to each variable's kind.
pub fn load(vs: &nn::VarStore, path: &Path) -> Result<(), WeightsError> {
    if !path.exists() {
        return Err(WeightsError::Missing { path: path.into() });
    }
    let file: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| WeightsError::Read { path: path.into(), reason: reason(&e, path) })?
        .into_iter()
        .collect();
    copy_checked(vs, &file, path, |_| false)
}

/// Copies `stored` (read from `path`) into `vs`'s variables, cast to each one's kind and device,
/// once they are known to fit: every variable present with its shape (except those `may_miss`
/// names: they keep their values), and nothing else stored (BatchNorm counters aside).
pub(crate) fn copy_checked(
    vs: &nn::VarStore,
    stored: &HashMap<String, Tensor>,
    path: &Path,
    may_miss: impl Fn(&str) -> bool,
) -> Result<(), WeightsError> {
    let variables = vs.variables();
    let missing: Vec<String> =
        variables.keys().filter(|n| !stored.contains_key(*n) && !may_miss(n)).cloned().collect();
    let unexpected: Vec<String> =
        stored.keys().filter(|n| !variables.contains_key(*n) && !n.ends_with(BN_COUNTER)).cloned().collect();
    let mismatched: Vec<String> = variables
        .iter()
        .filter_map(|(name, var)| {
            let stored = stored.get(name)?;
            (stored.size() != var.size())
                .then(|| format!("{name} {:?} vs model {:?}", stored.size(), var.size()))
        })
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        return Err(WeightsError::Mismatch {
            path: path.into(),
            missing: group_names(missing),
            unexpected: group_names(unexpected),
            mismatched: group_names(mismatched),
            hint: None,
        });
    }
    tch::no_grad(|| {
        for (name, var) in &variables {
            if let Some(value) = stored.get(name) {
                var.shallow_clone().copy_(&value.to_kind(var.kind()).to_device(var.device()));
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::group_names;

    #[test]
    fn names_that_differ_only_by_block_index_are_one_group() {
        let mut names: Vec<String> = (0..12).map(|i| format!("blocks.{i}.attn.wq")).collect();
        names.push("layer2.1.conv1.weight [64, 8] vs model [64, 16]".into());
        names.push("layer2.3.conv1.weight [64, 8] vs model [64, 16]".into());
        names.push("head.weight".into());
        assert_eq!(
            group_names(names),
            ["blocks.*.attn.wq ×12", "head.weight", "layer2.*.conv1.weight [64, 8] vs model [64, 16] ×2"]
        );
    }
}
