//! Why a model cannot be built: an unknown registry name, an impossible configuration or a layer's refusal.

/// Errors of the registry and of config validation; the message names what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// No preset has this name.
    #[error("unknown model {name:?}; registered models: {}", registered.join(", "))]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// Every registered name, in registry order.
        registered: Vec<&'static str>,
    },
    /// A config value is out of range or inconsistent with another (`arch` is "ResNet" or "ViT").
    #[error("invalid {arch} config: {reason}")]
    InvalidConfig {
        /// The architecture whose config is wrong.
        arch: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer refused its config (validation catches these first; kept for direct builders).
    #[error(transparent)]
    Layer(#[from] pe_layers::Error),
}
