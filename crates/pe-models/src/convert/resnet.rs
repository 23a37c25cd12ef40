//! ResNet → ResNet-PE: per-stage permutations and BN-absorbed scales (see the parent module).

use tch::{Kind, Tensor};

use super::assignment::min_cost_assignment;
use super::{put, replacement_error, share, take, Conversion, ConvertError, Method, TiedMatrix, Weights};
use crate::resnet::{BlockKind, ResNetConfig};
use pe_layers::FirstBlock;

/// BatchNorm's ε (torch's default, which every BN here uses).
const BN_EPS: f64 = 1e-5;
/// Rounds of the alternating fit of a stage's `W`.
const FIT_ROUNDS: usize = 12;
/// Least-squares refinements of an expand member's column scales per round.
const COLUMN_REFINEMENTS: usize = 5;
/// Alternations of an expand member's row pairing and column scales per round.
const PAIRING_ROUNDS: usize = 3;

/// One stage as the conversion sees it.
struct StagePlan {
    name: String,
    in_channels: i64,
    width: i64,
    channels: i64,
    blocks: usize,
    /// The index of the stage's first PE block.
    first_pe: usize,
    /// Whether the PE stage enters through `transition` (the baseline's block 0 `downsample`).
    projection: bool,
}

impl StagePlan {
    /// Whether block `j`'s `conv1` reads what the PE block's `W` reads (the stage's channels).
    fn reduce_maps(&self, block: usize) -> bool {
        block > 0 || (!self.projection && self.in_channels == self.channels)
    }
}

fn pe_stages(from: &ResNetConfig, to: &ResNetConfig) -> Result<Vec<StagePlan>, ConvertError> {
    if from.block != BlockKind::Bottleneck || to.block != BlockKind::Bottleneck {
        return Err(ConvertError::Mismatch("only bottleneck ResNets have PE stages".into()));
    }
    if !from.pe_stages.is_empty() {
        return Err(ConvertError::Mismatch("the model converted from already has PE stages".into()));
    }
    if to.pe_stages.is_empty() {
        return Err(ConvertError::Mismatch("the model converted to has no PE stage (not a PE model)".into()));
    }
    let geometry =
        |c: &ResNetConfig| (c.layers.clone(), c.widths.clone(), c.stem, c.stem_channels, c.in_channels);
    if geometry(from) != geometry(to) {
        return Err(ConvertError::Mismatch(format!(
            "the PE model is not the baseline's twin: (blocks, widths, stem, stem channels, input channels) \
             {:?} vs {:?}",
            geometry(from),
            geometry(to)
        )));
    }
    let mut in_channels = from.stem_channels;
    let mut plans = Vec::new();
    for (index, (&blocks, &width)) in from.layers.iter().zip(&from.widths).enumerate() {
        let channels = width * 4;
        let stride = if index == 0 { 1 } else { 2 };
        if to.pe_stages.contains(&(index + 1)) {
            let standard = to.first_block == FirstBlock::Standard;
            plans.push(StagePlan {
                name: format!("layer{}", index + 1),
                in_channels,
                width,
                channels,
                blocks,
                first_pe: usize::from(standard),
                projection: !standard && (stride != 1 || in_channels != channels),
            });
        }
        in_channels = channels;
    }
    Ok(plans)
}

pub(super) fn convert(
    from: &ResNetConfig,
    to: &ResNetConfig,
    weights: Weights,
    method: Method,
) -> Result<Conversion, ConvertError> {
    let plans = pe_stages(from, to)?;
    let aligned = match method {
        Method::Naive => share(&weights),
        Method::Symmetric => self::aligned(from, to, share(&weights))?,
    };
    let mut out = share(&aligned);
    let (mut tied, mut notes) = (Vec::new(), Vec::new());
    for plan in &plans {
        let original = members(&weights, plan)?;
        let moved = members(&aligned, plan)?;
        let naive = mean(&original);
        let shared = mean(&moved);
        put(&mut out, &format!("{}.shared_w", plan.name), &shared);
        for (before, after) in original.iter().zip(&moved) {
            tied.push(TiedMatrix {
                tied: format!("{}.shared_w", plan.name),
                replaces: before.describe(plan),
                naive_error: replacement_error(&before.matrix, &naive),
                error: replacement_error(&after.matrix, &shared),
            });
        }
        rename_to_pe(&mut out, plan, &mut notes);
    }
    let aligned = (method == Method::Symmetric).then_some(aligned);
    Ok(Conversion { weights: out, tied, notes, aligned })
}

/// The baseline's weights after the symmetry fit of every PE stage, in the baseline's layout.
pub(super) fn aligned(
    from: &ResNetConfig,
    to: &ResNetConfig,
    mut weights: Weights,
) -> Result<Weights, ConvertError> {
    for plan in &pe_stages(from, to)? {
        let original = members(&weights, plan)?;
        let fit = fit_stage(&original);
        apply(&mut weights, plan, &original, &fit)?;
    }
    Ok(weights)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `conv1` as `[width, C]`.
    Reduce,
    /// `conv3ᵀ` as `[width, C]`.
    Expand,
}

/// A baseline matrix that the stage's `W` replaces.
struct Member {
    block: usize,
    role: Role,
    matrix: Tensor,
}

impl Member {
    fn describe(&self, plan: &StagePlan) -> String {
        match self.role {
            Role::Reduce => format!("{}.{}.conv1.weight", plan.name, self.block),
            Role::Expand => format!("{}.{}.conv3.weightᵀ", plan.name, self.block),
        }
    }
}

fn members(weights: &Weights, plan: &StagePlan) -> Result<Vec<Member>, ConvertError> {
    let (w, c) = (plan.width, plan.channels);
    let mut found = Vec::new();
    for block in plan.first_pe..plan.blocks {
        let p = format!("{}.{block}", plan.name);
        if plan.reduce_maps(block) {
            let conv1 = take(weights, &format!("{p}.conv1.weight"), &[w, c, 1, 1])?;
            found.push(Member { block, role: Role::Reduce, matrix: conv1.reshape([w, c]) });
        }
        let conv3 = take(weights, &format!("{p}.conv3.weight"), &[c, w, 1, 1])?;
        found.push(Member { block, role: Role::Expand, matrix: conv3.reshape([c, w]).tr() });
    }
    Ok(found)
}

fn mean(members: &[Member]) -> Tensor {
    let matrices: Vec<&Tensor> = members.iter().map(|m| &m.matrix).collect();
    Tensor::stack(&matrices, 0).mean_dim(0, false, Kind::Double)
}

/// How one member moves: rows `permutation[i]` to row `i`, times `row_scale[i]`; an expand
/// member's columns (output channels) also times `column_scale`.
struct Move {
    permutation: Vec<i64>,
    row_scale: Tensor,
    column_scale: Option<Tensor>,
}

/// The moves that bring every member's rows to one common `W` (see the parent module): all rows
/// end at the members' root-mean-square row norm.
fn fit_stage(members: &[Member]) -> Vec<Move> {
    let row_norms = |m: &Tensor| m.square().sum_dim_intlist(1, true, Kind::Double).sqrt();
    let all: Vec<Tensor> = members.iter().map(|m| row_norms(&m.matrix).square().mean(Kind::Double)).collect();
    let rho = Tensor::stack(&all, 0).mean(Kind::Double).sqrt().double_value(&[]);
    let reference = members.iter().find(|m| m.role == Role::Reduce).unwrap_or(&members[0]);
    let mut shared = &reference.matrix / row_norms(&reference.matrix).clamp_min(1e-30) * rho;
    let mut moves: Vec<Move> = Vec::new();
    for _ in 0..FIT_ROUNDS {
        moves = members.iter().map(|m| fit_member(m, &shared, rho)).collect();
        let moved: Vec<Tensor> = members.iter().zip(&moves).map(|(m, mv)| moved(&m.matrix, mv)).collect();
        shared = Tensor::stack(&moved, 0).mean_dim(0, false, Kind::Double);
    }
    moves
}

/// `matrix` after `mv`.
fn moved(matrix: &Tensor, mv: &Move) -> Tensor {
    let permuted = matrix.index_select(0, &Tensor::from_slice(&mv.permutation));
    let scaled = permuted * mv.row_scale.unsqueeze(1);
    match &mv.column_scale {
        Some(columns) => scaled * columns.unsqueeze(0),
        None => scaled,
    }
}

/// The best move of one member towards `shared`, its rows brought to norm `rho`.
fn fit_member(member: &Member, shared: &Tensor, rho: f64) -> Move {
    let matrix = &member.matrix;
    // An expand member's output-channel scales (bn3's freedom) hide its rows' directions, so they
    // are estimated first, from statistics the row order does not change; their overall sign is
    // left to the assignment.
    let candidates = match member.role {
        Role::Reduce => vec![None],
        Role::Expand => {
            let columns = column_scales(matrix, shared);
            vec![Some(columns.neg()), Some(columns)]
        }
    };
    let (mut permutation, mut column_scale, _) = candidates
        .into_iter()
        .map(|columns| {
            let columned =
                columns.as_ref().map_or_else(|| matrix.shallow_clone(), |c| matrix * c.unsqueeze(0));
            let (permutation, gain) = assign(shared, &columned, member.role);
            (permutation, columns, gain)
        })
        .max_by(|a, b| a.2.total_cmp(&b.2))
        .expect("one candidate at least");
    // With the rows paired, the column scales are refitted (signs included) and the rows paired again.
    if let Some(mut columns) = column_scale.take() {
        for _ in 0..PAIRING_ROUNDS {
            let permuted = matrix.index_select(0, &Tensor::from_slice(&permutation));
            columns = refine_columns(&permuted, columns, shared, rho);
            permutation = assign(shared, &(matrix * columns.unsqueeze(0)), member.role).0;
        }
        column_scale = Some(columns);
    }
    let permuted = matrix.index_select(0, &Tensor::from_slice(&permutation));
    let columned = match &column_scale {
        Some(columns) => &permuted * columns.unsqueeze(0),
        None => permuted,
    };
    let norms = columned.square().sum_dim_intlist(1, false, Kind::Double).sqrt().clamp_min(1e-30);
    let sign = match member.role {
        Role::Reduce => signs(&(shared * &columned).sum_dim_intlist(1, false, Kind::Double)),
        Role::Expand => Tensor::ones_like(&norms),
    };
    let row_scale = sign * rho / norms;
    match column_scale {
        // `diag(e) M diag(c)` is also `diag(e/g) M diag(g c)`: the gauge puts the common factor g
        // (the geometric mean of e) on bn3's side, whose input scale a BatchNorm forgets, so that
        // bn2's affine (divided by e) keeps its trained magnitude. Without it bn2's γ fell to
        // ~1e-3 and bn3's rose to ~1e3 on the Fashion-MNIST ResNet: the same function, but a
        // parametrisation that fine-tuning could not recover from.
        Some(columns) => {
            let g = row_scale.log().mean(Kind::Double).exp();
            Move { permutation, row_scale: &row_scale / &g, column_scale: Some(columns * g) }
        }
        None => Move { permutation, row_scale, column_scale },
    }
}

/// The member's rows (a permutation) that best match `shared`'s by cosine, and the total cosine:
/// a reduce row's sign is free (bn1 absorbs it), an expand row's is not.
fn assign(shared: &Tensor, matrix: &Tensor, role: Role) -> (Vec<i64>, f64) {
    let unit = |m: &Tensor| m / m.square().sum_dim_intlist(1, true, Kind::Double).sqrt().clamp_min(1e-30);
    let cosines = unit(shared).matmul(&unit(matrix).tr());
    let gain = match role {
        Role::Reduce => cosines.abs(),
        Role::Expand => cosines,
    };
    let n = gain.size()[0] as usize;
    let cost: Vec<f64> = Vec::<f64>::try_from(gain.neg().flatten(0, -1)).expect("a double matrix");
    let permutation = min_cost_assignment(&cost, n);
    let total = permutation.iter().enumerate().map(|(i, &j)| -cost[i * n + j]).sum();
    (permutation.into_iter().map(|j| j as i64).collect(), total)
}

/// Per output channel `c`, the scale `r_c` that brings `M diag(r)` towards `W` up to a row
/// permutation and an overall sign: `MᵀM` and `WᵀW` do not depend on the row order. If
/// `M = D W_π diag(1/ρ)` (positive row scales D near 1), `MᵀM ∘ WᵀW ≈ diag(1/ρ) (WᵀW ∘ WᵀW) diag(1/ρ)`,
/// whose leading eigenvector has the signs of `ρ` (Perron–Frobenius: `WᵀW ∘ WᵀW` is non-negative);
/// the magnitudes match the column norms.
fn column_scales(matrix: &Tensor, shared: &Tensor) -> Tensor {
    let (g, h) = (shared.tr().matmul(shared), matrix.tr().matmul(matrix));
    let (_, vectors) = Tensor::linalg_eigh(&(&g * &h), "L");
    let leading = vectors.select(1, -1);
    let magnitude = (g.diagonal(0, 0, 1) / h.diagonal(0, 0, 1).clamp_min(1e-30)).sqrt();
    signs(&leading) * magnitude
}

/// The column scales refined by least squares once the rows are paired: each column of the
/// row-normalised `M diag(r)` fitted to `W`'s (a correction's magnitude clamped to [0.1, 10]; its
/// sign may flip the channel).
fn refine_columns(permuted: &Tensor, mut columns: Tensor, shared: &Tensor, rho: f64) -> Tensor {
    for _ in 0..COLUMN_REFINEMENTS {
        let columned = permuted * columns.unsqueeze(0);
        let rows = columned.square().sum_dim_intlist(1, true, Kind::Double).sqrt().clamp_min(1e-30);
        let normalised = columned / rows * rho;
        let fit = (shared * &normalised).sum_dim_intlist(0, false, Kind::Double)
            / normalised.square().sum_dim_intlist(0, false, Kind::Double).clamp_min(1e-30);
        columns = columns * signs(&fit) * fit.abs().clamp(0.1, 10.0);
    }
    columns
}

/// ±1 by the sign of each element (+1 for 0).
fn signs(values: &Tensor) -> Tensor {
    values.ge(0.0).to_kind(Kind::Double) * 2.0 - 1.0
}

/// Applies each member's move to the stage's weights with the BN changes that keep the function.
fn apply(
    weights: &mut Weights,
    plan: &StagePlan,
    members: &[Member],
    moves: &[Move],
) -> Result<(), ConvertError> {
    let (w, c) = (plan.width, plan.channels);
    for (member, mv) in members.iter().zip(moves) {
        let p = format!("{}.{}", plan.name, member.block);
        let index = Tensor::from_slice(&mv.permutation);
        let conv2 = take(weights, &format!("{p}.conv2.weight"), &[w, w, 3, 3])?;
        match member.role {
            Role::Reduce => {
                let conv1 = moved(&member.matrix, mv).reshape([w, c, 1, 1]);
                put(weights, &format!("{p}.conv1.weight"), &conv1);
                permute_bn(weights, &format!("{p}.bn1"), &index, w)?;
                scale_bn_input(weights, &format!("{p}.bn1"), &mv.row_scale, w)?;
                put(weights, &format!("{p}.conv2.weight"), &conv2.index_select(1, &index));
            }
            Role::Expand => {
                let conv3 = moved(&member.matrix, mv).tr().reshape([c, w, 1, 1]);
                put(weights, &format!("{p}.conv3.weight"), &conv3);
                put(weights, &format!("{p}.conv2.weight"), &conv2.index_select(0, &index));
                permute_bn(weights, &format!("{p}.bn2"), &index, w)?;
                // h → h / e through ReLU: bn2's affine divided by the (positive) column scale.
                for field in ["weight", "bias"] {
                    let name = format!("{p}.bn2.{field}");
                    let value = take(weights, &name, &[w])? / &mv.row_scale;
                    put(weights, &name, &value);
                }
                if let Some(columns) = &mv.column_scale {
                    scale_bn_input(weights, &format!("{p}.bn3"), columns, c)?;
                }
            }
        }
    }
    Ok(())
}

const BN_FIELDS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

fn permute_bn(weights: &mut Weights, bn: &str, index: &Tensor, channels: i64) -> Result<(), ConvertError> {
    for field in BN_FIELDS {
        let name = format!("{bn}.{field}");
        let value = take(weights, &name, &[channels])?.index_select(0, index);
        put(weights, &name, &value);
    }
    Ok(())
}

/// The BN after a conv whose output channel `k` was multiplied by `scale[k]` (non-zero), changed
/// so that its eval-mode output is the same, ε included.
fn scale_bn_input(
    weights: &mut Weights,
    bn: &str,
    scale: &Tensor,
    channels: i64,
) -> Result<(), ConvertError> {
    let [gamma, _, mean, var] = BN_FIELDS.map(|f| take(weights, &format!("{bn}.{f}"), &[channels]));
    let (gamma, mean, var) = (gamma?, mean?, var?);
    let new_var = &var * scale.square();
    let gamma = gamma * (&new_var + BN_EPS).sqrt() / (scale * (var + BN_EPS).sqrt());
    put(weights, &format!("{bn}.weight"), &gamma);
    put(weights, &format!("{bn}.running_mean"), &(mean * scale));
    put(weights, &format!("{bn}.running_var"), &new_var);
    Ok(())
}

/// Drops the matrices `shared_w` replaced and moves block 0's `downsample` to `transition`.
fn rename_to_pe(out: &mut Weights, plan: &StagePlan, notes: &mut Vec<String>) {
    for block in plan.first_pe..plan.blocks {
        for conv in ["conv1", "conv3"] {
            out.remove(&format!("{}.{block}.{conv}.weight", plan.name));
        }
    }
    if plan.projection {
        let from = format!("{}.0.downsample.", plan.name);
        let moving: Vec<String> = out.keys().filter(|n| n.starts_with(&from)).cloned().collect();
        for name in moving {
            let tensor = out.remove(&name).expect("listed above");
            out.insert(name.replacen(&from, &format!("{}.transition.", plan.name), 1), tensor);
        }
        notes.push(format!(
            "{}.0: the PE block reads the stage entrance's output (the baseline's downsample, now transition) at \
             the new resolution, the baseline's block read the stage input: its conv1 has no counterpart and its \
             3×3 conv runs at stride 1 instead of 2",
            plan.name
        ));
    }
}
