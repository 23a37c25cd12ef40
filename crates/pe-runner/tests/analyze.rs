//! `pe analyze` on weight files: two registry models side by side as JSON, and a clear error
//! when a weights file has neither a run nor `--model`.

use std::process::Command;

use tch::nn;

fn save_model(name: &str, path: &std::path::Path) {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let _model = pe_models::preset(name).unwrap().init(vs.root()).unwrap();
    pe_models::weights::save(&vs, path).unwrap();
}

#[test]
fn compares_a_baseline_and_its_pe_variant() {
    let dir = tempfile::tempdir().unwrap();
    let (baseline, pe) =
        (dir.path().join("vit_mini.safetensors"), dir.path().join("vit_pe_mini.safetensors"));
    save_model("vit_mini", &baseline);
    save_model("vit_pe_mini", &pe);
    let out = Command::new(env!("CARGO_BIN_EXE_pe"))
        .args(["analyze", "--model", "vit_mini", "--model", "vit_pe_mini", "--format", "json"])
        .args([&baseline, &pe])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels: Vec<&str> =
        reports.as_array().unwrap().iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["vit_mini", "vit_pe_mini"]);
    let overlaps = |report: &serde_json::Value| -> Vec<f64> {
        report["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["dominant"]["mean_cos2"].as_f64().unwrap())
            .collect()
    };
    assert!(overlaps(&reports[0]).iter().all(|&o| o < 0.9), "{:?}", overlaps(&reports[0]));
    assert!(overlaps(&reports[1]).iter().all(|&o| (o - 1.0).abs() < 1e-4), "{:?}", overlaps(&reports[1]));
    assert_eq!(reports[1]["run"]["params"], 236_938);
}

#[test]
fn weights_without_a_run_need_a_model_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    save_model("vit_pe_mini", &file);
    let out = Command::new(env!("CARGO_BIN_EXE_pe")).arg("analyze").arg(&file).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --model NAME"));
}

#[test]
fn a_report_of_the_same_weights_is_the_same_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("vit_pe_mini.safetensors");
    save_model("vit_pe_mini", &weights);
    let report = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_pe"))
            .args(["analyze", "--model", "vit_pe_mini", "--format", format])
            .arg(&weights)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    for format in ["markdown", "json"] {
        // Timings go to stderr, not into the report.
        assert_eq!(report(format), report(format), "--format {format} differs between two runs");
    }
}
