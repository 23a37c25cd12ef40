//! Multi-head self-attention: timm's standard layout and the paper's tied `PeAttention`.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::Error;
use crate::init;

/// Width, heads and regularisation of a self-attention layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionConfig {
    pub dim: i64,
    pub heads: i64,
    /// Biases on the Q/K/V projections (timm's `qkv_bias`, true for DeiT).
    pub qkv_bias: bool,
    /// Dropout on the attention probabilities.
    pub attn_drop: f64,
    /// Dropout after the output projection.
    pub proj_drop: f64,
}

impl Default for AttentionConfig {
    fn default() -> Self {
        Self { dim: 384, heads: 6, qkv_bias: true, attn_drop: 0.0, proj_drop: 0.0 }
    }
}

impl AttentionConfig {
    fn check(&self) -> Result<(), Error> {
        if self.heads > 0 && self.dim % self.heads == 0 {
            Ok(())
        } else {
            Err(Error::HeadsDoNotDivide { dim: self.dim, heads: self.heads })
        }
    }

    /// Per-head width; `init`/`init_pe` checked that the heads divide `dim`.
    fn head_dim(&self) -> i64 {
        self.dim / self.heads
    }

    /// timm's `Attention`: one fused `qkv` linear `[3·dim, dim]` and a `proj` linear.
    pub fn init(&self, path: nn::Path) -> Result<Attention, Error> {
        self.check()?;
        Ok(Attention {
            qkv: init::vit_linear(&path / "qkv", self.dim, 3 * self.dim, self.qkv_bias),
            proj: init::vit_linear(&path / "proj", self.dim, self.dim, true),
            config: self.clone(),
        })
    }

    /// The paper's eqs. (1)–(2): two square matrices `W_q`, `W_kv: [dim, dim]`.
    pub fn init_pe(&self, path: nn::Path) -> Result<PeAttention, Error> {
        self.check()?;
        let bias = |name: &str| self.qkv_bias.then(|| path.zeros(name, &[self.dim]));
        Ok(PeAttention {
            wq: init::trunc_normal(&path, "wq", &[self.dim, self.dim], init::VIT_STD),
            wkv: init::trunc_normal(&path, "wkv", &[self.dim, self.dim], init::VIT_STD),
            q_bias: bias("q_bias"),
            k_bias: bias("k_bias"),
            v_bias: bias("v_bias"),
            proj_bias: path.zeros("proj_bias", &[self.dim]),
            config: self.clone(),
        })
    }

    /// Scaled dot-product attention over heads, shared by both layouts. The queries may be fewer
    /// than the keys (see `forward_leading`).
    /// q: [B, Nq, C], k, v: [B, N, C] -> [B, Nq, C]
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, train: bool) -> Tensor {
        let split = |t: &Tensor| {
            // The batch stays -1, so a traced model (`pe export`) takes any batch.
            let (_, n, _) = t.size3().expect("attention input must be [B, N, C]");
            t.reshape([-1, n, self.heads, self.head_dim()]).transpose(1, 2)
        };
        let drop = if train { self.attn_drop } else { 0.0 };
        // [B, H, Nq, D], [B, H, N, D] x2 -> [B, H, Nq, D]
        let out = Tensor::scaled_dot_product_attention::<Tensor>(
            &split(q),
            &split(k),
            &split(v),
            None,
            drop,
            false,
            None,
            false,
        );
        let (_, n, c) = q.size3().expect("attention input must be [B, N, C]");
        out.transpose(1, 2).reshape([-1, n, c])
    }
}

/// Standard attention: `Q, K, V` from a fused `qkv` projection, output through `proj`.
#[derive(Debug)]
pub struct Attention {
    pub qkv: nn::Linear,
    pub proj: nn::Linear,
    pub config: AttentionConfig,
}

impl Attention {
    /// The output and the attended tokens `x̂` that `proj` reads (for weight-space analysis).
    pub fn forward_with_hidden(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        // [B, N, C] -> [B, N, 3C] -> 3 x [B, N, C]
        let qkv = xs.apply(&self.qkv).chunk(3, -1);
        let mixed = self.config.attend(&qkv[0], &qkv[1], &qkv[2], train);
        (self.project(&mixed, train), mixed)
    }

    /// The output of the first `queries` tokens only, each attending over every token of `xs`:
    /// the keys and values need all tokens, the queries and the output projection only these.
    /// [B, N, C] -> [B, queries, C]
    pub fn forward_leading(&self, xs: &Tensor, queries: i64, train: bool) -> Tensor {
        let dim = self.config.dim;
        // Rows [0, C) of the fused weight make Q, rows [C, 3C) make K and V.
        let rows = |start: i64, len: i64| {
            let bias = self.qkv.bs.as_ref().map(|b| b.narrow(0, start, len));
            (self.qkv.ws.narrow(0, start, len), bias)
        };
        let (q_weight, q_bias) = rows(0, dim);
        let (kv_weight, kv_bias) = rows(dim, 2 * dim);
        let q = xs.narrow(1, 0, queries).linear(&q_weight, q_bias.as_ref());
        let kv = xs.linear(&kv_weight, kv_bias.as_ref()).chunk(2, -1);
        self.project(&self.config.attend(&q, &kv[0], &kv[1], train), train)
    }

    fn project(&self, mixed: &Tensor, train: bool) -> Tensor {
        mixed.apply(&self.proj).dropout(self.config.proj_drop, train)
    }
}

impl nn::ModuleT for Attention {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_with_hidden(xs, train).0
    }
}

/// Tied attention: `Q = W_q x`, `K = W_kv x`, `V = W_kvᵀ x`, output `W_qᵀ x̂`, plus biases.
#[derive(Debug)]
pub struct PeAttention {
    pub wq: Tensor,
    pub wkv: Tensor,
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    pub proj_bias: Tensor,
    pub config: AttentionConfig,
}

impl PeAttention {
    /// The output and the attended tokens `x̂` that `W_qᵀ` reads (for weight-space analysis).
    pub fn forward_with_hidden(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        // `linear(x, A)` computes x Aᵀ, i.e. A applied to each token. The three projections run as
        // one GEMM over the stacked [W_q; W_kv; W_kvᵀ] ([3C, C], a small copy of the two
        // parameters per call): one large matrix product uses the cores better than three, and
        // autograd routes each block's gradient back to W_q, W_kv and (transposed) W_kv.
        // [B, N, C] -> [B, N, 3C] -> 3 x [B, N, C]
        let stacked = Tensor::cat(&[&self.wq, &self.wkv, &self.wkv.tr()], 0);
        let bias = stacked_biases(&[&self.q_bias, &self.k_bias, &self.v_bias]);
        let qkv = xs.linear(&stacked, bias.as_ref()).chunk(3, -1);
        let mixed = self.config.attend(&qkv[0], &qkv[1], &qkv[2], train);
        (self.project(&mixed, train), mixed)
    }

    /// The output of the first `queries` tokens only, as [`Attention::forward_leading`].
    /// [B, N, C] -> [B, queries, C]
    pub fn forward_leading(&self, xs: &Tensor, queries: i64, train: bool) -> Tensor {
        let q = xs.narrow(1, 0, queries).linear(&self.wq, self.q_bias.as_ref());
        // [B, N, C] -> [B, N, 2C] -> K, V
        let stacked = Tensor::cat(&[&self.wkv, &self.wkv.tr()], 0);
        let bias = stacked_biases(&[&self.k_bias, &self.v_bias]);
        let kv = xs.linear(&stacked, bias.as_ref()).chunk(2, -1);
        self.project(&self.config.attend(&q, &kv[0], &kv[1], train), train)
    }

    /// [B, N, C] -> W_qᵀ x̂ + b
    fn project(&self, mixed: &Tensor, train: bool) -> Tensor {
        mixed.linear(&self.wq.tr(), Some(&self.proj_bias)).dropout(self.config.proj_drop, train)
    }
}

impl nn::ModuleT for PeAttention {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_with_hidden(xs, train).0
    }
}

/// The biases of stacked projections, one after the other; `init_pe` creates all or none.
fn stacked_biases(biases: &[&Option<Tensor>]) -> Option<Tensor> {
    let biases: Option<Vec<&Tensor>> = biases.iter().map(|b| b.as_ref()).collect();
    biases.map(|b| Tensor::cat(&b, 0))
}
