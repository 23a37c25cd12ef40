//! WeightWatcher's α recovered from samples of known power laws.

use tch::{Kind, Tensor};

use pe_analyze::power_law::{fit, MIN_EIGENVALUES};

/// `n` samples of the density `∝ x^−α` on `[x_min, ∞)`, by inverting the CDF.
fn pareto(n: i64, alpha: f64, x_min: f64, seed: i64) -> Vec<f64> {
    tch::manual_seed(seed);
    let u = Tensor::rand([n], (Kind::Double, tch::Device::Cpu));
    let x = (u.ones_like() - &u).pow_tensor_scalar(-1.0 / (alpha - 1.0)) * x_min;
    Vec::try_from(&x).unwrap()
}

#[test]
fn recovers_alpha_of_a_pure_power_law() {
    for (alpha, seed) in [(2.0, 1), (3.5, 2)] {
        let fit = fit(&pareto(4000, alpha, 1.0, seed)).unwrap();
        // MLE standard error (α − 1)/√n ≈ 0.02–0.04 at n = 4000; λ_min may move into the tail.
        assert!((fit.alpha - alpha).abs() < 0.15, "α = {alpha}: fitted {fit:?}");
        assert!(fit.ks_distance < 0.05, "{fit:?}");
    }
}

#[test]
fn finds_lambda_min_above_a_bulk() {
    // A uniform bulk on [0.05, 1) below a power-law tail with α = 2.5 starting at 1.
    let mut data = pareto(3000, 2.5, 1.0, 5);
    tch::manual_seed(6);
    let bulk = Tensor::rand([3000], (Kind::Double, tch::Device::Cpu)) * 0.95 + 0.05;
    data.extend(Vec::<f64>::try_from(&bulk).unwrap());
    let fit = fit(&data).unwrap();
    assert!((0.9..1.6).contains(&fit.lambda_min), "{fit:?}");
    assert!((fit.alpha - 2.5).abs() < 0.2, "{fit:?}");
}

#[test]
fn too_few_eigenvalues_give_no_fit() {
    assert!(fit(&[1.0; MIN_EIGENVALUES - 1]).is_none());
    assert!(fit(&[0.0; 20]).is_none());
}
