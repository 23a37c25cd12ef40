//! A trained standard model turned into its PE twin (`pe convert`): the baseline's weights moved
//! along the network's exact symmetries until the pairs the PE model ties are as close as they can
//! be, then tied.
//!
//! # Why not average
//! A PE layer uses one `W` where the baseline has two matrices, e.g. `fc1` and `fc2ᵀ`. Trained
//! independently they are barely aligned, so `W = (fc1 + fc2ᵀ)/2` keeps little of either. But each
//! pair is only defined up to transformations that leave the network's function unchanged; the
//! tie should be fitted to the closest members of the two equivalence classes.
//!
//! # The symmetries used (each exact unless said otherwise)
//! Each matrix `M` a tied `W` replaces is reported with its relative error `‖M − W‖ / ‖M‖`; for a
//! pair averaged into `W = (X + Y)/2` of equal norms that is 0 when identical, ≈ 0.71 unrelated.
//!
//! - **MLP** `B F(A x + a) + b`, tied as `Wᵀ F(W x + a) + b`: unit `i` pairs row `aᵢ` of `A` with
//!   column `bᵢ` of `B`. A permutation of the hidden units moves both together, so it cannot help;
//!   a positive scale `dᵢ` (`aᵢ → dᵢaᵢ`, its bias too, `bᵢ → bᵢ/dᵢ`) is exact for ReLU (positively
//!   homogeneous) and approximate for GELU (homogeneous only far from 0). `‖dᵢaᵢ − bᵢ/dᵢ‖²` is least
//!   at `dᵢ = √(‖bᵢ‖/‖aᵢ‖)`, leaving `‖aᵢ‖‖bᵢ‖(1 − cos(aᵢ, bᵢ))`: only the angle is left to lose.
//! - **Attention**, per head `h`: `Q_h → A_h Q_h`, `K_h → A_h⁻ᵀ K_h` keep `Q_hᵀK_h`; `V_h → B_h V_h`
//!   with `P_h → P_h B_h⁻¹` (`P_h`: the output projection's columns for head `h`) keep the output.
//!   The PE layer wants `W_q ≈ Pᵀ` and `W_kv ≈ W_k ≈ W_vᵀ`. Conformal maps `A_h = s_h O_h`,
//!   `B_h = t_h R_h` (a rotation and a positive scale; `A_h⁻ᵀ = O_h / s_h`) keep the problem
//!   well-posed: the errors are `Σ_h ‖s_h O_h Q_h − R_h P_hᵀ / t_h‖²` and
//!   `‖diag(O/s) W_k − (diag(t R) W_v)ᵀ‖²`. The second couples the heads (rows of `W_kv` are K
//!   heads, its columns V heads), so all are solved together by alternation: with the rest fixed,
//!   each `O_h` and each `R_h` is an orthogonal Procrustes problem (`U Vᵀ` of an SVD), and each
//!   scale minimises `a x² − 2bx + c/x² − 2d/x` in one variable. Every step is an exact (or
//!   checked) minimisation, so the error never rises above the naive one (all maps the identity).
//!   Biases follow their projections.
//! - **ResNet stage**: one `W: [width, C]` replaces each block's `conv1` and `conv3ᵀ`. Between
//!   `conv1` and `conv2` sit BN and ReLU, between `conv2` and `conv3` BN and ReLU: the conv2 input
//!   channels can be permuted (`conv1` rows, `bn1`, `conv2` input channels) and so can its output
//!   channels (`conv2` output channels, `bn2`, `conv3` columns), independently, per block. So here
//!   permutations matter: a linear assignment (see [`assignment`]) pairs `W`'s rows with each
//!   block's. A BN after a 1×1 conv absorbs any non-zero scale of each of its input channels
//!   (`μ → dμ`, `σ² → d²σ²`, `γ → γ√(d²σ² + ε)/(d√(σ² + ε))`, exact in eval mode including ε), which
//!   frees the sign and norm of every `conv1` row and the scale of every `conv3` row (`bn3`); a
//!   positive scale of a `conv3` column is absorbed by `bn2` through the ReLU (`γ, β → γ/e, β/e`).
//!   `W` is fitted by alternation: match every block's rows to `W` (assignment on the cosine), fit
//!   the `bn3` scales by least squares, bring every row to one norm, and average.
//!
//! Whatever cannot be mapped is reported, not hidden: a PE stage entered through a projection
//! (`first_block = "projection"`) has no counterpart of the baseline block 0's `conv1` (that block
//! reads the stage input, the PE block the projection's output at the new resolution), so block 0
//! keeps its 3×3 conv and BNs and the projection takes the baseline's `downsample`; its `conv3`
//! still enters the fit.
//!
//! The tie itself is not a symmetry: it moves every activation after it, and a ResNet's BatchNorm
//! running statistics then describe activations that no longer occur. `pe convert` therefore
//! measures them again on training batches (`--recompute-bn`, as SWA does); on the Fashion-MNIST
//! ResNet the converted logits otherwise grow to ~60× the baseline's.

pub mod assignment;
mod report;
mod resnet;
mod vit;

use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::model::ModelConfig;

pub use report::{Conversion, TiedMatrix};

/// A model's tensors by parameter name (torchvision/timm names for the baselines).
pub type Weights = HashMap<String, Tensor>;

/// How the tied matrices are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// Average each pair as it is.
    Naive,
    /// Move each pair along the network's symmetries first (see the module doc).
    #[default]
    Symmetric,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "naive" => Ok(Method::Naive),
            "symmetric" => Ok(Method::Symmetric),
            other => Err(format!("unknown method {other:?} (expected naive or symmetric)")),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Naive => "naive",
            Method::Symmetric => "symmetric",
        })
    }
}

/// Why a model cannot be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}")]
    Mismatch(String),
    #[error("the weights have no {name} (are they the baseline's?)")]
    Missing { name: String },
    #[error("{name}: shape {found:?}, expected {expected:?}")]
    Shape { name: String, found: Vec<i64>, expected: Vec<i64> },
}

fn other_family(from: &ModelConfig, to: &ModelConfig) -> ConvertError {
    let family = |config: &ModelConfig| match config {
        ModelConfig::Vit(_) => "a ViT",
        ModelConfig::Resnet(_) => "a ResNet",
    };
    ConvertError::Mismatch(format!("the baseline is {}, the PE model {}", family(from), family(to)))
}

/// The PE weights for `to` from the weights of its baseline `from`, and what the tie cost.
pub fn convert(
    from: &ModelConfig,
    to: &ModelConfig,
    weights: Weights,
    method: Method,
) -> Result<Conversion, ConvertError> {
    match (from, to) {
        (ModelConfig::Vit(from), ModelConfig::Vit(to)) => vit::convert(from, to, weights, method),
        (ModelConfig::Resnet(from), ModelConfig::Resnet(to)) => resnet::convert(from, to, weights, method),
        _ => Err(other_family(from, to)),
    }
}

/// The baseline's weights moved along the symmetries [`Method::Symmetric`] uses, still in the
/// baseline's layout: the same function (exactly where the module doc says so), for checking.
pub fn aligned(from: &ModelConfig, to: &ModelConfig, weights: Weights) -> Result<Weights, ConvertError> {
    match (from, to) {
        (ModelConfig::Vit(from), ModelConfig::Vit(to)) => vit::aligned(from, to, weights),
        (ModelConfig::Resnet(from), ModelConfig::Resnet(to)) => resnet::aligned(from, to, weights),
        _ => Err(other_family(from, to)),
    }
}

/// The same tensors under the same names (shallow clones: the conversion never writes in place).
pub fn share(weights: &Weights) -> Weights {
    weights.iter().map(|(name, tensor)| (name.clone(), tensor.shallow_clone())).collect()
}

/// `weights[name]` as f64, checked to have `shape`.
fn take(weights: &Weights, name: &str, shape: &[i64]) -> Result<Tensor, ConvertError> {
    let tensor = weights.get(name).ok_or_else(|| ConvertError::Missing { name: name.into() })?;
    if tensor.size() != shape {
        return Err(ConvertError::Shape {
            name: name.into(),
            found: tensor.size(),
            expected: shape.to_vec(),
        });
    }
    Ok(tensor.to_kind(Kind::Double))
}

/// Stores `value` under `name` in float32, the kind every model parameter here has.
fn put(weights: &mut Weights, name: &str, value: &Tensor) {
    weights.insert(name.into(), value.to_kind(Kind::Float).contiguous());
}

/// Frobenius norm as f64.
fn norm(tensor: &Tensor) -> f64 {
    tensor.square().sum(Kind::Double).double_value(&[]).sqrt()
}

/// The relative error `‖m − w‖ / ‖m‖` of using `w` in place of `m`.
fn replacement_error(m: &Tensor, w: &Tensor) -> f64 {
    let scale = norm(m);
    if scale == 0.0 {
        0.0
    } else {
        norm(&(m - w)) / scale
    }
}
