//! DeiT/ViT → ViT-PE: per-unit MLP scales and per-head attention rotations (see the parent module).

use tch::{Kind, Tensor};

use super::{put, replacement_error, share, take, Conversion, ConvertError, Method, TiedMatrix, Weights};
use crate::vit::VitConfig;

/// Alternations of the attention fit; each can only lower the error, and it settles well before.
const PROCRUSTES_ROUNDS: usize = 100;
/// Stop alternating once a round improves the squared error by less than this fraction.
const PROCRUSTES_TOLERANCE: f64 = 1e-9;

pub(super) fn convert(
    from: &VitConfig,
    to: &VitConfig,
    weights: Weights,
    method: Method,
) -> Result<Conversion, ConvertError> {
    check(from, to)?;
    let original = weights;
    let moved = match method {
        Method::Naive => share(&original),
        Method::Symmetric => aligned(from, to, share(&original))?,
    };
    let mut out = share(&moved);
    let mut tied = Vec::new();
    for block in 0..from.depth {
        let p = format!("blocks.{block}");
        if to.pe_attention {
            tied.extend(tie_attention(&original, &moved, &mut out, &p, from.embed_dim)?);
        }
        if to.pe_mlp {
            tied.extend(tie_mlp(&original, &moved, &mut out, &p, from.embed_dim, from.hidden())?);
        }
    }
    let notes = if method == Method::Symmetric && to.pe_mlp {
        vec!["the MLP's per-unit scales are exact for ReLU; under GELU they change the function slightly (see the logit change)".into()]
    } else {
        Vec::new()
    };
    let aligned = (method == Method::Symmetric).then_some(moved);
    Ok(Conversion { weights: out, tied, notes, aligned })
}

/// The baseline's weights after the symmetry fit, in the baseline's layout.
pub(super) fn aligned(
    from: &VitConfig,
    to: &VitConfig,
    mut weights: Weights,
) -> Result<Weights, ConvertError> {
    check(from, to)?;
    for block in 0..from.depth {
        let p = format!("blocks.{block}");
        if to.pe_attention {
            align_attention(&mut weights, &p, from.embed_dim, from.heads)?;
        }
        if to.pe_mlp {
            align_mlp(&mut weights, &p, from.embed_dim, from.hidden())?;
        }
    }
    Ok(weights)
}

/// The PE model must be the baseline with ties: same geometry, untied baseline.
fn check(from: &VitConfig, to: &VitConfig) -> Result<(), ConvertError> {
    if from.pe_attention || from.pe_mlp {
        return Err(ConvertError::Mismatch("the model converted from is already tied (a PE model)".into()));
    }
    if !to.pe_attention && !to.pe_mlp {
        return Err(ConvertError::Mismatch("the model converted to ties nothing (not a PE model)".into()));
    }
    let geometry =
        |c: &VitConfig| (c.patch_size, c.in_channels, c.embed_dim, c.depth, c.heads, c.hidden(), c.qkv_bias);
    if geometry(from) != geometry(to) {
        return Err(ConvertError::Mismatch(format!(
            "the PE model is not the baseline's twin: (patch, channels, width, depth, heads, MLP hidden, qkv bias) \
             {:?} vs {:?}",
            geometry(from),
            geometry(to)
        )));
    }
    Ok(())
}

/// Per unit `i`: `fc1` row and bias times `dᵢ`, `fc2` column divided by it, `dᵢ = √(‖bᵢ‖/‖aᵢ‖)`.
fn align_mlp(weights: &mut Weights, p: &str, dim: i64, hidden: i64) -> Result<(), ConvertError> {
    let fc1 = take(weights, &format!("{p}.mlp.fc1.weight"), &[hidden, dim])?;
    let fc1_bias = take(weights, &format!("{p}.mlp.fc1.bias"), &[hidden])?;
    let fc2 = take(weights, &format!("{p}.mlp.fc2.weight"), &[dim, hidden])?;
    let rows = fc1.square().sum_dim_intlist(1, false, Kind::Double).sqrt();
    let columns = fc2.square().sum_dim_intlist(0, false, Kind::Double).sqrt();
    // A dead unit (a zero row or column) keeps its scale.
    let dead = rows.eq(0.0).logical_or(&columns.eq(0.0));
    let scale = (&columns / rows.clamp_min(f64::MIN_POSITIVE)).sqrt().masked_fill(&dead, 1.0);
    put(weights, &format!("{p}.mlp.fc1.weight"), &(fc1 * scale.unsqueeze(1)));
    put(weights, &format!("{p}.mlp.fc1.bias"), &(fc1_bias * &scale));
    put(weights, &format!("{p}.mlp.fc2.weight"), &(fc2 / scale.unsqueeze(0)));
    Ok(())
}

/// `W = (fc1 + fc2ᵀ)/2` from the (aligned) baseline `moved`; errors against `original` for naive.
fn tie_mlp(
    original: &Weights,
    moved: &Weights,
    out: &mut Weights,
    p: &str,
    dim: i64,
    hidden: i64,
) -> Result<Vec<TiedMatrix>, ConvertError> {
    let (fc1, fc2) = (format!("{p}.mlp.fc1.weight"), format!("{p}.mlp.fc2.weight"));
    let pair = |w: &Weights| -> Result<(Tensor, Tensor), ConvertError> {
        Ok((take(w, &fc1, &[hidden, dim])?, take(w, &fc2, &[dim, hidden])?.tr()))
    };
    let tied = format!("{p}.mlp.weight");
    let rows = tie_pair(pair(original)?, pair(moved)?, &tied, [fc1.clone(), format!("{fc2}ᵀ")], out);
    put(out, &format!("{p}.mlp.fc1_bias"), &take(moved, &format!("{p}.mlp.fc1.bias"), &[hidden])?);
    put(out, &format!("{p}.mlp.fc2_bias"), &take(moved, &format!("{p}.mlp.fc2.bias"), &[dim])?);
    for name in [fc1, fc2, format!("{p}.mlp.fc1.bias"), format!("{p}.mlp.fc2.bias")] {
        out.remove(&name);
    }
    Ok(rows)
}

/// Writes `tied = (x + y)/2` of the moved pair and reports both replaced matrices.
fn tie_pair(
    original: (Tensor, Tensor),
    moved: (Tensor, Tensor),
    tied: &str,
    replaces: [String; 2],
    out: &mut Weights,
) -> Vec<TiedMatrix> {
    let naive = (&original.0 + &original.1) / 2.0;
    let fitted = (&moved.0 + &moved.1) / 2.0;
    put(out, tied, &fitted);
    let [first, second] = replaces;
    vec![
        TiedMatrix {
            tied: tied.into(),
            replaces: first,
            naive_error: replacement_error(&original.0, &naive),
            error: replacement_error(&moved.0, &fitted),
        },
        TiedMatrix {
            tied: tied.into(),
            replaces: second,
            naive_error: replacement_error(&original.1, &naive),
            error: replacement_error(&moved.1, &fitted),
        },
    ]
}

/// The baseline attention's projections: `W_q, W_k, W_v` and `P` ([C, C] each), biases [C].
struct Projections {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    proj: Tensor,
    biases: Option<[Tensor; 3]>,
}

impl Projections {
    fn read(weights: &Weights, p: &str, dim: i64) -> Result<Self, ConvertError> {
        let qkv = take(weights, &format!("{p}.attn.qkv.weight"), &[3 * dim, dim])?.chunk(3, 0);
        let biases = match weights.contains_key(&format!("{p}.attn.qkv.bias")) {
            true => {
                let b = take(weights, &format!("{p}.attn.qkv.bias"), &[3 * dim])?.chunk(3, 0);
                Some([b[0].shallow_clone(), b[1].shallow_clone(), b[2].shallow_clone()])
            }
            false => None,
        };
        let proj = take(weights, &format!("{p}.attn.proj.weight"), &[dim, dim])?;
        Ok(Self {
            q: qkv[0].shallow_clone(),
            k: qkv[1].shallow_clone(),
            v: qkv[2].shallow_clone(),
            proj,
            biases,
        })
    }

    fn write(&self, weights: &mut Weights, p: &str) {
        put(weights, &format!("{p}.attn.qkv.weight"), &Tensor::cat(&[&self.q, &self.k, &self.v], 0));
        if let Some([q, k, v]) = &self.biases {
            put(weights, &format!("{p}.attn.qkv.bias"), &Tensor::cat(&[q, k, v], 0));
        }
        put(weights, &format!("{p}.attn.proj.weight"), &self.proj);
    }
}

/// Per head `h`, a rotation `A_h` and scale `s_h` of the queries (keys get `A_h / s_h`), and a
/// rotation `B_h` and scale `t_h` of the values (the output projection's columns get
/// `B_hᵀ / t_h`), chosen to bring `W_q` closest to `Pᵀ` and `W_k` to `W_vᵀ`.
struct HeadMaps {
    a: Vec<Tensor>,
    b: Vec<Tensor>,
    s: Vec<f64>,
    t: Vec<f64>,
}

/// The four matrices the ties compare, after the maps: `Q'`, `K'`, `V'` and `P'ᵀ` ([C, C]).
struct Moved {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    proj_t: Tensor,
}

impl HeadMaps {
    fn identity(heads: i64, d: i64) -> Self {
        let eye = Tensor::eye(d, (Kind::Double, tch::Device::Cpu));
        let n = heads as usize;
        let eyes = || (0..n).map(|_| eye.copy()).collect();
        Self { a: eyes(), b: eyes(), s: vec![1.0; n], t: vec![1.0; n] }
    }

    fn scaled(maps: &[Tensor], scales: &[f64], inverse: bool) -> Tensor {
        let blocks: Vec<Tensor> =
            maps.iter().zip(scales).map(|(m, &s)| m * if inverse { 1.0 / s } else { s }).collect();
        Tensor::block_diag(&blocks)
    }

    fn apply(&self, x: &Projections) -> Moved {
        Moved {
            q: Self::scaled(&self.a, &self.s, false).matmul(&x.q),
            k: Self::scaled(&self.a, &self.s, true).matmul(&x.k),
            v: Self::scaled(&self.b, &self.t, false).matmul(&x.v),
            proj_t: Self::scaled(&self.b, &self.t, true).matmul(&x.proj.tr()),
        }
    }
}

impl Moved {
    /// The squared error of both ties (what the fit lowers).
    fn error(&self) -> f64 {
        let q = (&self.q - &self.proj_t).square().sum(Kind::Double);
        let kv = (&self.k - self.v.tr()).square().sum(Kind::Double);
        (q + kv).double_value(&[])
    }
}

/// Fits the [`HeadMaps`] from two starts (every map the identity; and each value rotation
/// taken from the keys alone, `B_h V_h ≈ (W_k[:, h])ᵀ`, with `A_h = B_h O_h` for `O_h` the best
/// rotation of `Q_h` onto `P_hᵀ`), keeps the better, and applies it to the baseline's attention and
/// its biases. The K/V coupling makes the problem non-convex: alternation from the identity alone
/// stalls in a local minimum on a planted tie (see the tests).
fn align_attention(weights: &mut Weights, p: &str, dim: i64, heads: i64) -> Result<(), ConvertError> {
    let mut x = Projections::read(weights, p, dim)?;
    let d = dim / heads;
    let rows = |t: &Tensor, h: i64| t.narrow(0, h * d, d);
    let cols = |t: &Tensor, h: i64| t.narrow(1, h * d, d);
    let mut keyed = HeadMaps::identity(heads, d);
    for h in 0..heads {
        let b = procrustes(&rows(&x.v, h), &cols(&x.k, h).tr());
        keyed.a[h as usize] = b.matmul(&procrustes(&rows(&x.q, h), &cols(&x.proj, h).tr()));
        keyed.b[h as usize] = b;
    }
    let (from_identity, identity_error) = fit_maps(&x, heads, d, HeadMaps::identity(heads, d));
    let (from_keys, keys_error) = fit_maps(&x, heads, d, keyed);
    let maps = if keys_error < identity_error { from_keys } else { from_identity };
    let moved = maps.apply(&x);
    if let Some([q, k, v]) = &mut x.biases {
        *q = HeadMaps::scaled(&maps.a, &maps.s, false).matmul(&*q);
        *k = HeadMaps::scaled(&maps.a, &maps.s, true).matmul(&*k);
        *v = HeadMaps::scaled(&maps.b, &maps.t, false).matmul(&*v);
    }
    (x.q, x.k, x.v, x.proj) = (moved.q, moved.k, moved.v, moved.proj_t.tr());
    x.write(weights, p);
    Ok(())
}

/// Alternating exact minimisations from `maps` (Procrustes for the rotations, a 1-D search for
/// the scales) until a round gains less than the tolerance; the maps and their squared error.
fn fit_maps(x: &Projections, heads: i64, d: i64, mut maps: HeadMaps) -> (HeadMaps, f64) {
    let rows = |t: &Tensor, h: i64| t.narrow(0, h * d, d);
    let cols = |t: &Tensor, h: i64| t.narrow(1, h * d, d);
    let dot = |a: &Tensor, b: &Tensor| (a * b).sum(Kind::Double).double_value(&[]);
    let square = |a: &Tensor| dot(a, a);
    let mut last = maps.apply(x).error();
    for _ in 0..PROCRUSTES_ROUNDS {
        // A_h [s Q_h | K_h / s] ≈ [P'ᵀ_h | (V'ᵀ)_h]
        let moved = maps.apply(x);
        for h in 0..heads {
            let s = maps.s[h as usize];
            let source = Tensor::cat(&[rows(&x.q, h) * s, rows(&x.k, h) / s], 1);
            let target = Tensor::cat(&[rows(&moved.proj_t, h), rows(&moved.v.tr(), h)], 1);
            maps.a[h as usize] = procrustes(&source, &target);
        }
        // B_h [P_hᵀ / t | t V_h] ≈ [Q'_h | (K'[:, h])ᵀ]
        let moved = maps.apply(x);
        for h in 0..heads {
            let t = maps.t[h as usize];
            let source = Tensor::cat(&[cols(&x.proj, h).tr() / t, rows(&x.v, h) * t], 1);
            let target = Tensor::cat(&[rows(&moved.q, h), cols(&moved.k, h).tr()], 1);
            maps.b[h as usize] = procrustes(&source, &target);
        }
        // s_h: ‖s X − Y‖² + ‖Z / s − U‖² with X = A_h Q_h, Z = A_h K_h.
        let moved = maps.apply(x);
        for h in 0..heads {
            let a = &maps.a[h as usize];
            let (qx, kz) = (a.matmul(&rows(&x.q, h)), a.matmul(&rows(&x.k, h)));
            let (y, u) = (rows(&moved.proj_t, h), rows(&moved.v.tr(), h));
            let i = h as usize;
            maps.s[i] = best_scale(square(&qx), dot(&qx, &y), square(&kz), dot(&kz, &u), maps.s[i]);
        }
        // t_h: ‖t W − Z‖² + ‖X − Y / t‖² with W = (B_h V_h)ᵀ, Y = B_h P_hᵀ.
        let moved = maps.apply(x);
        for h in 0..heads {
            let b = &maps.b[h as usize];
            let (w, y) = (b.matmul(&rows(&x.v, h)).tr(), b.matmul(&cols(&x.proj, h).tr()));
            let (z, q) = (cols(&moved.k, h), rows(&moved.q, h));
            let i = h as usize;
            maps.t[i] = best_scale(square(&w), dot(&z, &w), square(&y), dot(&q, &y), maps.t[i]);
        }
        let now = maps.apply(x).error();
        let settled = last - now <= PROCRUSTES_TOLERANCE * last;
        last = now;
        if settled {
            break;
        }
    }
    (maps, last)
}

/// The `x > 0` minimising `a x² − 2 b x + c / x² − 2 d / x` (a, c ≥ 0), or `current` when
/// nothing found beats it: a grid over log x in [−4, 4], refined by golden-section search
/// around its best point (the quartic stationarity condition can have several roots).
fn best_scale(a: f64, b: f64, c: f64, d: f64, current: f64) -> f64 {
    let f = |u: f64| a * (2.0 * u).exp() - 2.0 * b * u.exp() + c * (-2.0 * u).exp() - 2.0 * d * (-u).exp();
    let step = 0.01;
    let best =
        (-400..=400).map(|i| i as f64 * step).fold(0.0, |best: f64, u| if f(u) < f(best) { u } else { best });
    let (mut lo, mut hi) = (best - step, best + step);
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..40 {
        let (m1, m2) = (hi - ratio * (hi - lo), lo + ratio * (hi - lo));
        if f(m1) < f(m2) {
            hi = m2;
        } else {
            lo = m1;
        }
    }
    let u = (lo + hi) / 2.0;
    if f(u) < f(current.ln()) {
        u.exp()
    } else {
        current
    }
}

/// The orthogonal `R` minimising `‖R·source − target‖` (both [d, n]): `U Vᵀ` of `target·sourceᵀ`.
fn procrustes(source: &Tensor, target: &Tensor) -> Tensor {
    // torch.svd's V (not Vᵀ): M = U diag(S) Vᵀ.
    let (u, _, v) = target.matmul(&source.tr()).svd(true, true);
    u.matmul(&v.tr())
}

/// `W_q = (W_q + Pᵀ)/2`, `W_kv = (W_k + W_vᵀ)/2`, biases taken over.
fn tie_attention(
    original: &Weights,
    moved: &Weights,
    out: &mut Weights,
    p: &str,
    dim: i64,
) -> Result<Vec<TiedMatrix>, ConvertError> {
    let (before, after) = (Projections::read(original, p, dim)?, Projections::read(moved, p, dim)?);
    let qkv = format!("{p}.attn.qkv.weight");
    let proj = format!("{p}.attn.proj.weight");
    let mut rows = tie_pair(
        (before.q.shallow_clone(), before.proj.tr()),
        (after.q.shallow_clone(), after.proj.tr()),
        &format!("{p}.attn.wq"),
        [format!("{qkv}[q]"), format!("{proj}ᵀ")],
        out,
    );
    rows.extend(tie_pair(
        (before.k.shallow_clone(), before.v.tr()),
        (after.k.shallow_clone(), after.v.tr()),
        &format!("{p}.attn.wkv"),
        [format!("{qkv}[k]"), format!("{qkv}[v]ᵀ")],
        out,
    ));
    if let Some([q, k, v]) = &after.biases {
        put(out, &format!("{p}.attn.q_bias"), q);
        put(out, &format!("{p}.attn.k_bias"), k);
        put(out, &format!("{p}.attn.v_bias"), v);
    }
    put(out, &format!("{p}.attn.proj_bias"), &take(moved, &format!("{p}.attn.proj.bias"), &[dim])?);
    for name in [qkv, format!("{p}.attn.qkv.bias"), proj, format!("{p}.attn.proj.bias")] {
        out.remove(&name);
    }
    Ok(rows)
}
