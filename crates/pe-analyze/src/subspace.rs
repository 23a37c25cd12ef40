//! Principal angles between two subspaces given by orthonormal bases.

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::Result;

/// How much two subspaces of the same ambient space coincide.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overlap {
    /// Dimensions of the two subspaces; `min` of them principal angles are measured.
    pub dims: [usize; 2],
    /// The ambient dimension.
    pub ambient: usize,
    /// Mean of `cos² θᵢ`: 1 when the smaller subspace lies in the larger, 0 when orthogonal.
    pub mean_cos2: f64,
    /// `sqrt(Σ θᵢ²)` in radians: 0 when one contains the other.
    pub grassmann: f64,
    /// `mean_cos2` expected for random subspaces of these dimensions: `max(dims) / ambient`.
    pub chance: f64,
}

/// Principal angles between `span(a)` and `span(b)`, both `[ambient, rᵢ]` with orthonormal columns.
pub fn overlap(a: &Tensor, b: &Tensor) -> Result<Overlap> {
    let (ambient, ra) = a.size2()?;
    let (_, rb) = b.size2()?;
    // The singular values of aᵀb are the cosines of the principal angles.
    // (`svd` rather than `linalg_svdvals`: tch always passes a `driver`, which CPU tensors reject.)
    let (_, cosines, _) = a.tr().f_matmul(b)?.to_kind(Kind::Double).f_svd(true, false)?;
    let cosines = cosines.clamp(0.0, 1.0);
    let cosines: Vec<f64> = Vec::<f64>::try_from(&cosines)?;
    let count = cosines.len().max(1) as f64;
    let mean_cos2 = cosines.iter().map(|c| c * c).sum::<f64>() / count;
    let grassmann = cosines.iter().map(|c| c.acos().powi(2)).sum::<f64>().sqrt();
    Ok(Overlap {
        dims: [ra as usize, rb as usize],
        ambient: ambient as usize,
        mean_cos2,
        grassmann,
        chance: ra.max(rb) as f64 / ambient.max(1) as f64,
    })
}
