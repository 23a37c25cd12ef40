//! The paper's core idea as reusable layers: one matrix `W` used twice, as `W` and `Wᵀ`.
//!
//! Every layer comes as a plain serde `Config` plus `init(path)` returning a real struct whose
//! weights stay reachable (`mlp.weight`, `stage.shared_w`), next to the standard two-matrix layer
//! it replaces, so both can be compared, counted and exported side by side.
//!
//! | standard ([`Mlp`], [`Attention`], [`Bottleneck`]) | parameter-efficient ([`PeMlp`], [`PeAttention`], [`PeStage`]) |
//! |---|---|
//! | `W₂ F(W₁x + b₁) + b₂` | `Wᵀ F(Wx + b₁) + b₂` |
//! | `Q,K,V = W_q x, W_k x, W_v x`, out `W_o x̂` | `Q,K,V = W_q x, W_kv x, W_kvᵀ x`, out `W_qᵀ x̂` |
//! | `conv3(G(conv1 x)) + x` per block | `Wᵀ G_i(W x) + x`, one `W` per stage |

pub mod activation;
pub mod attention;
pub mod batch_norm;
pub mod conv;
pub mod drop_path;
pub mod error;
pub mod init;
pub mod mlp;
pub mod pe_stage;
pub mod residual;
pub mod stage_shared;

pub use activation::Activation;
pub use attention::{Attention, AttentionConfig, PeAttention};
pub use batch_norm::BatchNorm;
pub use conv::Conv;
pub use drop_path::DropPath;
pub use error::Error;
pub use mlp::{Mlp, MlpConfig, PeMlp};
pub use pe_stage::{FirstBlock, PeBottleneck, PeStage, PeStageConfig, StageEntry};
pub use residual::{BasicBlock, Bottleneck, ConvBn, ResidualConfig};
pub use stage_shared::StageShared;
