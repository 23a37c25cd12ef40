//! WeightWatcher's α recovered from samples of known power laws.

use pe_analyze::power_law::{fit, MIN_EIGENVALUES};

/// `n` uniform draws from `[0, 1)` by SplitMix64: the test's own generator, since the tests of a
/// binary run in parallel and would interleave their draws from libtorch's global one.
fn uniform(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as f64 / 2f64.powi(64)
        })
        .collect()
}

/// `n` samples of the density `∝ x^−α` on `[x_min, ∞)`, by inverting the CDF.
fn pareto(n: usize, alpha: f64, x_min: f64, seed: u64) -> Vec<f64> {
    uniform(n, seed).into_iter().map(|u| (1.0 - u).powf(-1.0 / (alpha - 1.0)) * x_min).collect()
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
    data.extend(uniform(3000, 6).into_iter().map(|u| u * 0.95 + 0.05));
    let fit = fit(&data).unwrap();
    // Above the bulk, but anywhere in the pure tail: KS distance barely changes along it (over 40
    // seeds λ_min ranged 0.98–2.6, α 2.45–2.59), so only "not in the bulk, a real tail" is asserted.
    assert!(fit.lambda_min >= 0.9 && fit.tail >= 500, "{fit:?}");
    assert!((fit.alpha - 2.5).abs() < 0.2, "{fit:?}");
}

#[test]
fn too_few_eigenvalues_give_no_fit() {
    assert!(fit(&[1.0; MIN_EIGENVALUES - 1]).is_none());
    assert!(fit(&[0.0; 20]).is_none());
}
