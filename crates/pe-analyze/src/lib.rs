//! How a network uses its weight space — the paper's own question, measured.
//!
//! For every weight matrix (linear layers; convolutions as `[out, in·k·k]`): effective rank,
//! stable rank, numerical rank, spectral/Frobenius norms and WeightWatcher's power-law α. For
//! every pair the paper ties (`W₂ = W₁ᵀ`): principal angles between `col(W₁)` and `row(W₂)`,
//! and, with data, the share of the hidden activation's energy outside `col(W₁)`.
//!
//! ```no_run
//! # fn demo(model: &pe_models::Model, images: &tch::Tensor) -> pe_analyze::Result<()> {
//! let analysis = pe_analyze::Analysis::new(model)?;
//! let mut energy = analysis.energy();
//! energy.observe(model, images)?;
//! let report = analysis.report("my-run", Default::default(), Some(&energy))?;
//! println!("{}", pe_analyze::render::table(&[report]));
//! # Ok(()) }
//! ```

pub mod analysis;
pub mod energy;
pub mod error;
pub mod figures;
pub mod matrices;
pub mod power_law;
pub mod render;
pub mod report;
pub mod spectrum;
pub mod subspace;
pub mod summaries;

pub use analysis::{Analysis, Energy};
pub use error::{AnalyzeError, Result};
pub use report::{Report, RunInfo};
pub use summaries::{headline_scalars, log_to_tensorboard, SummarySink};
