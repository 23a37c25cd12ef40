//! Times the weight analysis of freshly initialised resnet50 and deit_small on this machine:
//! `cargo run --release -p pe-analyze --example timing [THREADS]`.

use std::time::Instant;

use tch::nn;

use pe_analyze::matrices::Matrices;
use pe_analyze::{power_law, Analysis, RunInfo};

fn main() -> pe_analyze::Result<()> {
    if let Some(threads) = std::env::args().nth(1).and_then(|t| t.parse().ok()) {
        tch::set_num_threads(threads);
    }
    println!("libtorch intra-op threads: {}", tch::get_num_threads());
    for name in ["resnet50", "deit_small"] {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = pe_models::preset(name)
            .and_then(|config| config.init(vs.root()))
            .map_err(|e| tch::TchError::Kind(e.to_string()))?;
        let start = Instant::now();
        let matrices = Matrices::of(&model);
        let extracted = start.elapsed().as_secs_f64();
        let analysis = Analysis::from_matrices(matrices)?;
        let report = analysis.report(name, RunInfo::default(), None)?;
        let total = start.elapsed().as_secs_f64();
        // The power-law fits alone, redone on the same spectra.
        let fits = Instant::now();
        for m in &report.matrices {
            power_law::fit(&m.singular_values.iter().map(|s| s * s).collect::<Vec<_>>());
        }
        println!(
            "{name}: {} matrices, {} pairs: {total:.2} s in all (extract {extracted:.2} s, power-law fits {:.2} s)",
            report.matrices.len(),
            report.pairs.len(),
            fits.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
