//! PeAttention against the standard (timm-layout) Attention with tied copies, and both
//! against an explicit softmax(QKᵀ/√d)V written out here.
mod common;

use common::*;
use pe_layers::AttentionConfig;
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

const DIM: i64 = 16;
const HEADS: i64 = 4;

fn config() -> AttentionConfig {
    AttentionConfig { dim: DIM, heads: HEADS, qkv_bias: true, attn_drop: 0.0, proj_drop: 0.0 }
}

/// Multi-head attention written with matmul and softmax, independent of SDPA.
fn explicit_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (b, n, c) = q.size3().unwrap();
    let d = c / HEADS;
    let split = |t: &Tensor| t.reshape([b, n, HEADS, d]).permute([0, 2, 1, 3]);
    let scores = split(q).matmul(&split(k).transpose(-2, -1)) / (d as f64).sqrt();
    let out = scores.softmax(-1, Kind::Double).matmul(&split(v));
    out.permute([0, 2, 1, 3]).reshape([b, n, c])
}

#[test]
fn parameter_counts_halve_the_weights() {
    let standard = store();
    config().init(standard.root()).unwrap();
    let pe = store();
    config().init_pe(pe.root()).unwrap();
    // qkv [3C, C] + 3C, proj [C, C] + C  vs  Wq, Wkv [C, C] + q/k/v/proj biases.
    assert_eq!(trainable_count(&standard), 4 * DIM * DIM + 4 * DIM);
    assert_eq!(trainable_count(&pe), 2 * DIM * DIM + 4 * DIM);
    let no_bias = store();
    AttentionConfig { qkv_bias: false, ..config() }.init_pe(no_bias.root()).unwrap();
    assert_eq!(trainable_count(&no_bias), 2 * DIM * DIM + DIM);
}

#[test]
fn standard_attention_matches_the_explicit_formula() {
    let mut vs = store();
    let attn = config().init(vs.root()).unwrap();
    to_f64(&mut vs);
    let xs = randn(&[2, 7, DIM]);
    let qkv = xs.apply(&attn.qkv).chunk(3, -1);
    let expected = explicit_attention(&qkv[0], &qkv[1], &qkv[2]).apply(&attn.proj);
    assert_close(&attn.forward_t(&xs, false), &expected, 1e-10, "attention");
}

#[test]
fn pe_attention_uses_wq_wkv_wkv_transposed_and_wq_transposed() {
    let mut vs = store();
    let attn = config().init_pe(vs.root()).unwrap();
    to_f64(&mut vs);
    for bias in [&attn.q_bias, &attn.k_bias, &attn.v_bias] {
        copy(bias.as_ref().unwrap(), &randn(&[DIM]));
    }
    copy(&attn.proj_bias, &randn(&[DIM]));
    let xs = randn(&[2, 7, DIM]);
    let q = xs.matmul(&attn.wq.tr()) + attn.q_bias.as_ref().unwrap();
    let k = xs.matmul(&attn.wkv.tr()) + attn.k_bias.as_ref().unwrap();
    let v = xs.matmul(&attn.wkv) + attn.v_bias.as_ref().unwrap();
    let expected = explicit_attention(&q, &k, &v).matmul(&attn.wq) + &attn.proj_bias;
    assert_close(&attn.forward_t(&xs, false), &expected, 1e-10, "eqs. (1)-(2)");
}

#[test]
fn pe_attention_equals_attention_with_tied_copies_and_sums_gradients() {
    let mut pe_vs = store();
    let pe = config().init_pe(pe_vs.root()).unwrap();
    let mut std_vs = store();
    let standard = config().init(std_vs.root()).unwrap();
    to_f64(&mut pe_vs);
    to_f64(&mut std_vs);
    for bias in [&pe.q_bias, &pe.k_bias, &pe.v_bias] {
        copy(bias.as_ref().unwrap(), &randn(&[DIM]));
    }
    copy(&pe.proj_bias, &randn(&[DIM]));
    let biases = [&pe.q_bias, &pe.k_bias, &pe.v_bias].map(|b| b.as_ref().unwrap().shallow_clone());
    copy(&standard.qkv.ws, &Tensor::cat(&[&pe.wq, &pe.wkv, &pe.wkv.tr()], 0));
    copy(standard.qkv.bs.as_ref().unwrap(), &Tensor::cat(&biases, 0));
    copy(&standard.proj.ws, &pe.wq.tr());
    copy(standard.proj.bs.as_ref().unwrap(), &pe.proj_bias);

    let xs = randn(&[2, 9, DIM]);
    let (pe_out, std_out) = (pe.forward_t(&xs, true), standard.forward_t(&xs, true));
    assert_close(&pe_out, &std_out, 1e-10, "output");

    backward_same_random(&pe_out, &std_out);
    let qkv_grad = standard.qkv.ws.grad().chunk(3, 0);
    let qkv_bias_grad = standard.qkv.bs.as_ref().unwrap().grad().chunk(3, 0);
    // W_q is used for Q and (transposed) for the output projection.
    assert_close(&pe.wq.grad(), &(&qkv_grad[0] + standard.proj.ws.grad().tr()), 1e-5, "grad Wq");
    // W_kv is used for K and (transposed) for V.
    assert_close(&pe.wkv.grad(), &(&qkv_grad[1] + qkv_grad[2].tr()), 1e-5, "grad Wkv");
    for (i, bias) in biases.iter().enumerate() {
        assert_close(&bias.grad(), &qkv_bias_grad[i], 1e-5, "grad q/k/v bias");
    }
    assert_close(&pe.proj_bias.grad(), &standard.proj.bs.as_ref().unwrap().grad(), 1e-5, "grad proj bias");
}

#[test]
fn attention_dropout_only_acts_in_training() {
    let config = AttentionConfig { attn_drop: 0.5, proj_drop: 0.5, ..config() };
    let vs = store();
    let attn = config.init_pe(vs.root()).unwrap();
    let xs = Tensor::randn([2, 5, DIM], (Kind::Float, tch::Device::Cpu));
    let eval_a = attn.forward_t(&xs, false);
    let eval_b = attn.forward_t(&xs, false);
    assert_eq!(max_abs_diff(&eval_a, &eval_b), 0.0, "eval is deterministic");
    let train = attn.forward_t(&xs, true);
    assert!(max_abs_diff(&train, &eval_a) > 1e-3, "dropout changes the training output");
}
