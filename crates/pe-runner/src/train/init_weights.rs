//! `[model] init = PATH`: the weights a new run starts from (fine-tuning, transfer to other
//! classes or resolutions), and what the run records of them.
//!
//! PATH is a run folder (its `best` checkpoint, else its `last`), a checkpoint folder, or a
//! safetensors file with this workspace's parameter names, which are torchvision's and timm's for
//! the baselines. A checkpoint's files are checked against the hashes it recorded; the file read
//! is hashed into the run identity, so resuming with other weights is refused like any change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::config::ModelInit;
use crate::train::checkpoint::{self, Checkpoints};

/// Why `model.init` cannot start this run (exit code 2: nothing was started).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("model.init = {}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
    #[error("model.init: {0}")]
    Weights(#[from] pe_models::weights::WeightsError),
}

/// What a run folder's identity records of its initial weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitIdentity {
    /// The file read (recorded, not compared: the weights may move).
    pub file: String,
    /// `blake3:<hex>` of its bytes (compared).
    pub digest: String,
}

/// The weights read for `model.init`, not yet copied into a model.
pub struct InitialWeights {
    pub identity: InitIdentity,
    pub file: PathBuf,
    pub tensors: HashMap<String, Tensor>,
}

impl InitialWeights {
    /// Reads what `init` names; `None` when the recipe sets no `model.init`.
    pub fn open(init: &ModelInit) -> Result<Option<Self>, InitError> {
        let Some(path) = &init.init else { return Ok(None) };
        let file = weights_file(path, init.init_ema)?;
        let source_error = |reason: String| InitError::Source { path: path.clone(), reason };
        let digest = checkpoint::content_hash(&file).map_err(|e| source_error(format!("{e:#}")))?;
        let tensors = pe_models::pretrained::read(&file)?;
        let identity = InitIdentity { file: file.display().to_string(), digest };
        Ok(Some(Self { identity, file, tensors }))
    }
}

/// The safetensors file `path` stands for (see the module doc), its checkpoint verified.
pub fn weights_file(path: &Path, ema: bool) -> Result<PathBuf, InitError> {
    let error = |reason: String| InitError::Source { path: path.to_owned(), reason };
    if path.is_file() {
        if ema {
            return Err(error(
                "model.init_ema = true takes the EMA weights of a checkpoint (its ema.safetensors); a single \
                 file has no EMA: name the checkpoint or run folder, or drop model.init_ema"
                    .into(),
            ));
        }
        return Ok(path.to_owned());
    }
    if !path.is_dir() {
        return Err(error(
            "no such file or folder (expected a run folder, a checkpoint folder or a .safetensors file)"
                .into(),
        ));
    }
    let dir = if path.join(checkpoint::STATE).is_file() {
        path.to_owned()
    } else if path.join("checkpoints").is_dir() {
        let checkpoints = Checkpoints::new(path);
        checkpoints.best().or_else(|| checkpoints.last()).ok_or_else(|| {
            error("the run folder has no best or last checkpoint (has it trained an epoch?)".into())
        })?
    } else {
        return Err(error(format!(
            "a folder that is neither a run folder (with checkpoints/) nor a checkpoint folder (with {})",
            checkpoint::STATE
        )));
    };
    let name = if ema { checkpoint::EMA } else { checkpoint::MODEL };
    if !dir.join(name).is_file() {
        let why = if ema { " (the run trained with train.ema_decay = 0: no EMA weights)" } else { "" };
        return Err(error(format!("{} has no {name}{why}", dir.display())));
    }
    checkpoint::verify(&dir, Some(&[name])).map_err(|e| error(format!("{e:#}")))?;
    Ok(dir.join(name))
}
