//! What a conversion produced and what each tie cost.

use serde::Serialize;

use super::Weights;

/// One matrix of the baseline replaced by a tied one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TiedMatrix {
    /// The PE parameter, e.g. `blocks.0.mlp.weight` or `layer2.shared_w`.
    pub tied: String,
    /// The baseline matrix it stands for, as the PE layer uses it (`blocks.0.mlp.fc2.weightᵀ`).
    pub replaces: String,
    /// `‖M − W‖ / ‖M‖` with `W` the plain average of the matrices it ties.
    pub naive_error: f64,
    /// The same for the method used (equal to `naive_error` for the naive method).
    pub error: f64,
}

/// The PE model's weights and the report of how they were made.
#[derive(Debug)]
pub struct Conversion {
    /// Every tensor of the PE model (the baseline's others copied by name).
    pub weights: Weights,
    pub tied: Vec<TiedMatrix>,
    /// What the PE model could not take over exactly, one sentence each.
    pub notes: Vec<String>,
    /// Symmetric method: the baseline after the symmetry moves alone, in its own layout (the
    /// same function, bar the GELU MLP's scales), what the ties were taken from.
    pub aligned: Option<Weights>,
}
