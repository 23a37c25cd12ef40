//! PeMlp against the standard two-matrix Mlp with tied copies.
mod common;

use common::*;
use pe_layers::{Activation, MlpConfig};
use tch::nn::ModuleT;

fn config() -> MlpConfig {
    MlpConfig { dim: 12, hidden: 48, activation: Activation::Gelu, drop: 0.0 }
}

#[test]
fn pe_mlp_has_half_the_weight_parameters_and_the_same_biases() {
    let (dim, hidden) = (12, 48);
    let standard = store();
    config().init(standard.root());
    let pe = store();
    config().init_pe(pe.root());
    // Mlp: fc1 [48,12]+48, fc2 [12,48]+12 ; PeMlp: W [48,12] + 48 + 12.
    assert_eq!(trainable_count(&standard), 2 * dim * hidden + hidden + dim);
    assert_eq!(trainable_count(&pe), dim * hidden + hidden + dim);
    assert_eq!(pe.variables().len(), 3, "weight, fc1_bias, fc2_bias: {:?}", pe.variables().keys());
}

#[test]
fn pe_mlp_equals_mlp_whose_fc1_is_w_and_fc2_is_w_transposed() {
    for activation in [Activation::Gelu, Activation::GeluTanh, Activation::Relu, Activation::Silu] {
        let config = MlpConfig { activation, ..config() };
        let mut pe_vs = store();
        let pe = config.init_pe(pe_vs.root());
        let mut std_vs = store();
        let standard = config.init(std_vs.root());
        to_f64(&mut pe_vs);
        to_f64(&mut std_vs);
        // Non-zero biases so that their placement is checked too.
        copy(&pe.fc1_bias, &randn(&[48]));
        copy(&pe.fc2_bias, &randn(&[12]));
        copy(&standard.fc1.ws, &pe.weight);
        copy(&standard.fc2.ws, &pe.weight.tr());
        copy(standard.fc1.bs.as_ref().unwrap(), &pe.fc1_bias);
        copy(standard.fc2.bs.as_ref().unwrap(), &pe.fc2_bias);

        let xs = randn(&[3, 5, 12]);
        let (pe_out, std_out) = (pe.forward_t(&xs, true), standard.forward_t(&xs, true));
        assert_close(&pe_out, &std_out, 1e-10, &format!("{activation:?} output"));

        backward_same_random(&pe_out, &std_out);
        // One W used twice: its gradient is the sum of the gradients of both uses.
        let summed = standard.fc1.ws.grad() + standard.fc2.ws.grad().tr();
        assert_close(&pe.weight.grad(), &summed, 1e-5, "grad W");
        assert_close(&pe.fc1_bias.grad(), &standard.fc1.bs.as_ref().unwrap().grad(), 1e-5, "grad b1");
        assert_close(&pe.fc2_bias.grad(), &standard.fc2.bs.as_ref().unwrap().grad(), 1e-5, "grad b2");
    }
}

#[test]
fn pe_mlp_output_depends_on_the_transpose_not_a_second_matrix() {
    // If fc2 used W instead of Wᵀ, a non-square W could not even be applied; check a square one
    // too, where a wrong orientation would still run.
    let config = MlpConfig { dim: 8, hidden: 8, ..config() };
    let mut pe_vs = store();
    let pe = config.init_pe(pe_vs.root());
    to_f64(&mut pe_vs);
    let xs = randn(&[4, 8]);
    let expected = (xs.matmul(&pe.weight.tr()) + &pe.fc1_bias).gelu("none").matmul(&pe.weight) + &pe.fc2_bias;
    assert_close(&pe.forward_t(&xs, false), &expected, 1e-12, "explicit Wᵀ F(Wx+b1)+b2");
}
