//! The share of a hidden activation's energy outside `col(W)`: `1 − ‖U_rᵀ h‖² / ‖h‖²`.
//!
//! The paper's argument is that `h = F(W x + b)` leaves the column space of `W`, so `Wᵀ` reads
//! something new. `U_r` are the top-`r` left singular vectors of `W`; sums run over all measured
//! vectors (tokens, or pixels of a feature map), so the share is energy-weighted.

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::{AnalyzeError, Result};

/// Energy outside `col(W)` at two ranks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnergyOutside {
    /// With `r` = the numerical rank of `W` (its whole column space).
    pub full_rank: f64,
    /// With `r` = `W`'s effective rank, rounded (its dominant directions).
    pub effective_rank: f64,
    /// The two `r`s and the hidden dimension.
    pub ranks: [usize; 2],
    pub hidden_dim: usize,
    /// How many hidden vectors were measured.
    pub vectors: u64,
}

/// Accumulates `‖h‖²` and its parts inside two column-space bases over batches.
#[derive(Debug)]
pub struct EnergyMeter {
    name: String,
    /// `[n, r_full]`; its first `r_eff` columns are the dominant basis.
    basis: Tensor,
    r_eff: usize,
    total: f64,
    inside_full: f64,
    inside_eff: f64,
    vectors: u64,
}

impl EnergyMeter {
    /// `left` holds `W`'s left singular vectors `[n, k]`, ordered by decreasing σ.
    pub fn new(name: &str, left: &Tensor, r_full: usize, r_eff: usize) -> Self {
        let r_full = r_full.max(1);
        Self {
            name: name.to_owned(),
            basis: left.narrow(1, 0, r_full as i64).to_kind(Kind::Float),
            r_eff: r_eff.clamp(1, r_full),
            total: 0.0,
            inside_full: 0.0,
            inside_eff: 0.0,
            vectors: 0,
        }
    }

    /// Adds a hidden activation: `[.., n]` (tokens) or `[B, n, H, W]` (a feature map).
    pub fn add(&mut self, hidden: &Tensor) -> Result<()> {
        let n = self.basis.size()[0];
        let vectors = match hidden.dim() {
            4 => hidden.permute([0, 2, 3, 1]).reshape([-1, hidden.size()[1]]),
            _ => hidden.reshape([-1, *hidden.size().last().unwrap_or(&0)]),
        };
        let got = vectors.size()[1];
        if got != n {
            return Err(AnalyzeError::HiddenShape { name: self.name.clone(), expected: n, got });
        }
        // float32 products on the activation's device, sums in float64.
        let vectors = vectors.to_kind(Kind::Float);
        let basis = self.basis.to_device(vectors.device());
        // [V, n] x [n, r] -> [V, r]; squared coordinates per basis direction, summed over vectors.
        let per_direction = vectors.f_matmul(&basis)?.square().sum_dim_intlist(0, false, Kind::Double);
        let per_direction: Vec<f64> = Vec::try_from(&per_direction.to_device(tch::Device::Cpu))?;
        self.total += vectors.square().sum(Kind::Double).double_value(&[]);
        self.inside_full += per_direction.iter().sum::<f64>();
        self.inside_eff += per_direction[..self.r_eff].iter().sum::<f64>();
        self.vectors += vectors.size()[0] as u64;
        Ok(())
    }

    /// The shares so far; `None` before any non-zero activation.
    pub fn outside(&self) -> Option<EnergyOutside> {
        (self.total > 0.0).then(|| EnergyOutside {
            full_rank: (1.0 - self.inside_full / self.total).max(0.0),
            effective_rank: (1.0 - self.inside_eff / self.total).max(0.0),
            ranks: [self.basis.size()[1] as usize, self.r_eff],
            hidden_dim: self.basis.size()[0] as usize,
            vectors: self.vectors,
        })
    }
}
