//! Experiment files: inheritance, overrides, model presets, and errors naming file, line and key.

use std::path::{Path, PathBuf};
use std::process::Command;

use pe_models::ModelConfig;
use pe_runner::config::load::to_toml;
use pe_runner::config::{load_experiment, Amp, ConfigError, OptimizerKind};

fn experiments_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const MINIMAL: &str = "[model]\nname = \"resnet_mini\"\n\n[data]\nimg_size = 32\n\n[train]\nepochs = 10\n";

fn error_of(dir: &Path, text: &str, overrides: &[&str]) -> ConfigError {
    let path = write(dir, "exp.toml", text);
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    load_experiment(&path, &overrides).unwrap_err()
}

#[test]
fn every_shipped_recipe_loads_and_validates() {
    let mut count = 0;
    for entry in std::fs::read_dir(experiments_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let experiment =
                load_experiment(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(experiment.config.name, path.file_stem().unwrap().to_string_lossy());
            count += 1;
        }
    }
    assert!(count >= 9, "the paper's ImageNet recipes are all there");
}

#[test]
fn vit_pe_600e_is_its_300_epoch_sibling_plus_one_line() {
    let short = load_experiment(&experiments_dir().join("vit_pe_300e.toml"), &[]).unwrap().config;
    let long = load_experiment(&experiments_dir().join("vit_pe_600e.toml"), &[]).unwrap().config;
    assert_eq!(long.train.epochs, 600);
    assert_eq!(short.train.epochs, 300);
    assert_eq!(long.model, short.model);
    assert_eq!(long.data, short.data);
    assert_eq!(long.optimizer.name, OptimizerKind::Adamw);
    assert_eq!(long.data.mixup_alpha, 0.8);
    let ModelConfig::Vit(vit) = &long.model else { panic!("vit") };
    assert!(vit.pe_attention && vit.pe_mlp && vit.drop_path_rate == 0.1);
}

#[test]
fn bases_merge_deeply_and_children_win() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "base.toml",
        "[optimizer]\nname = \"sgd\"\nlr = 0.1\nmomentum = 0.8\n\n[train]\nepochs = 9\n",
    );
    let child =
        write(dir.path(), "child.toml", &format!("base = \"base.toml\"\n{MINIMAL}\n[optimizer]\nlr = 0.2\n"));
    let config = load_experiment(&child, &[]).unwrap().config;
    assert_eq!(config.optimizer.name, OptimizerKind::Sgd, "kept from the base");
    assert_eq!(config.optimizer.momentum, 0.8, "kept from the base");
    assert_eq!(config.optimizer.lr, 0.2, "the child wins");
    assert_eq!(config.train.epochs, 10, "the child wins");
}

#[test]
fn overrides_parse_toml_values_and_bare_strings() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "exp.toml", MINIMAL);
    let sets =
        ["train.epochs=7", "data.root=/data/somewhere", "model.pe_stages=[2, 3]", "train.amp=\"bf16\""];
    let config = load_experiment(&path, &sets.map(String::from)).unwrap().config;
    assert_eq!(config.train.epochs, 7);
    assert_eq!(config.data.root, Path::new("/data/somewhere"));
    assert_eq!(config.train.amp, Amp::Bf16);
    let ModelConfig::Resnet(resnet) = config.model else { panic!("resnet") };
    assert_eq!(resnet.pe_stages, vec![2, 3]);
}

#[test]
fn model_presets_take_overrides_on_top() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "exp.toml",
        &MINIMAL.replace("\"resnet_mini\"", "\"resnet_mini\"\nnum_classes = 3"),
    );
    let experiment = load_experiment(&path, &[]).unwrap();
    assert_eq!(experiment.model_preset.as_deref(), Some("resnet_mini"));
    assert_eq!(experiment.config.model.num_classes(), 3);
}

#[test]
fn unknown_keys_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let error = error_of(dir.path(), &format!("{MINIMAL}\n[optimizer]\nlr = 1e-3\nlrr = 1e-3\n"), &[]);
    assert!(error.location.ends_with("exp.toml:12"), "{error}");
    assert_eq!(error.key.as_deref(), Some("optimizer.lrr"));
    assert!(
        error.message.contains("unknown field `lrr`") && error.message.contains("weight_decay"),
        "{error}"
    );
}

#[test]
fn wrong_types_name_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let error = error_of(dir.path(), &MINIMAL.replace("epochs = 10", "epochs = \"ten\""), &[]);
    assert_eq!(error.key.as_deref(), Some("train.epochs"), "{error}");
    assert!(error.location.ends_with("exp.toml:8"), "{error}");
    assert!(error.message.contains("invalid type"), "{error}");
}

#[test]
fn impossible_values_are_rejected_with_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let error = error_of(dir.path(), &MINIMAL.replace("epochs = 10", "epochs = 10\nbatch_size = 0"), &[]);
    assert_eq!(error.key.as_deref(), Some("train.batch_size"));
    assert!(error.location.ends_with("exp.toml:9") && error.message.contains("at least 1"), "{error}");
    let error = error_of(dir.path(), MINIMAL, &["schedule.warmup_epochs=12"]);
    assert_eq!(error.location, "--set schedule.warmup_epochs=12");
    assert!(error.message.contains("train.epochs = 10"), "{error}");
}

#[test]
fn unknown_models_list_the_registry_at_the_name_line() {
    let dir = tempfile::tempdir().unwrap();
    let error = error_of(dir.path(), &MINIMAL.replace("resnet_mini", "resnet_maxi"), &[]);
    assert!(error.location.ends_with("exp.toml:2"), "{error}");
    assert!(error.message.contains("vit_pe_small"), "{error}");
}

#[test]
fn invalid_toml_points_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let error = error_of(dir.path(), &format!("{MINIMAL}\n[train\n"), &[]);
    assert!(error.location.ends_with("exp.toml:10") && error.message.contains("invalid TOML"), "{error}");
}

#[test]
fn the_resolved_config_reloads_to_the_same_experiment() {
    let original = load_experiment(&experiments_dir().join("resnet50_pe_stage34.toml"), &[]).unwrap().config;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "resnet50_pe_stage34.toml", &to_toml(&original));
    assert_eq!(load_experiment(&path, &[]).unwrap().config, original);
}

#[test]
fn the_binary_exits_2_and_starts_nothing_on_a_bad_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let path = write(
        dir.path(),
        "bad.toml",
        &format!("{MINIMAL}\n[logging]\nruns_dir = {:?}\nevery_step = 1\n", runs),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pe")).arg("train").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:12") && stderr.contains("logging.every_step"), "{stderr}");
    assert!(!runs.exists(), "nothing is started");
}

#[test]
fn infinite_and_nan_numbers_are_rejected_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (set, key) in [
        ("optimizer.lr=inf", "optimizer.lr"),
        ("optimizer.lr=nan", "optimizer.lr"),
        ("optimizer.weight_decay=inf", "optimizer.weight_decay"),
        ("optimizer.clip_grad=inf", "optimizer.clip_grad"),
        ("schedule.min_lr=inf", "schedule.min_lr"),
        ("schedule.warmup_lr=nan", "schedule.warmup_lr"),
        ("data.color_jitter=inf", "data"),
    ] {
        let error = error_of(dir.path(), MINIMAL, &[set]);
        assert_eq!(error.key.as_deref(), Some(key), "{set}: {error}");
        assert_eq!(error.location, format!("--set {set}"), "{set}: {error}");
    }
}

#[test]
fn batches_larger_than_the_machine_are_refused_before_anything_allocates_them() {
    let dir = tempfile::tempdir().unwrap();
    // 8 images of 3 × 100000² bytes: 240 GB a batch.
    let error = error_of(dir.path(), MINIMAL, &["data.img_size=100000"]);
    assert_eq!(error.key.as_deref(), Some("data.img_size"), "{error}");
    assert!(error.message.contains("data.img_size = 100000") && error.message.contains("GiB"), "{error}");
    let error = error_of(dir.path(), MINIMAL, &["train.batch_size=1000000000"]);
    assert_eq!(error.key.as_deref(), Some("train.batch_size"), "{error}");
    assert!(error.message.contains("batches of 1000000000 images"), "{error}");
    // The shipped ImageNet recipes fit comfortably (256 × 3 × 224² per batch).
    assert!(load_experiment(&experiments_dir().join("resnet50.toml"), &[]).is_ok());
}

#[test]
fn a_bad_device_or_backend_is_a_config_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    for (line, key, expected) in [
        ("device = \"gpu\"", "train.device", "\"cuda:N\", got \"gpu\""),
        ("dist_backend = \"mpi\"", "train.dist_backend", "`gloo`"),
    ] {
        let error =
            error_of(dir.path(), &MINIMAL.replace("epochs = 10", &format!("epochs = 10\n{line}")), &[]);
        assert_eq!(error.key.as_deref(), Some(key), "{error}");
        assert!(error.location.ends_with("exp.toml:9") && error.message.contains(expected), "{error}");
        assert!(!error.message.contains('\n'), "one line: {error}");
    }
}

#[test]
fn paths_in_a_recipe_are_the_recipe_files_and_set_paths_the_working_directorys() {
    let repo = std::fs::canonicalize(experiments_dir().join("..")).unwrap();
    // The shipped recipes set both in experiments/base/, two folders below the repository.
    let config = load_experiment(&experiments_dir().join("fmnist_resnet_mini_pe.toml"), &[]).unwrap().config;
    assert_eq!(config.data.root, repo.join("data/fashion-mnist"));
    assert_eq!(config.logging.runs_dir, repo.join("runs"));
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("exps");
    std::fs::create_dir_all(&nested).unwrap();
    let path = write(&nested, "exp.toml", &format!("{MINIMAL}\n[logging]\nruns_dir = \"../out\"\n"));
    let config = load_experiment(&path, &["data.root=rel/data".into()]).unwrap().config;
    let here = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(std::fs::canonicalize(config.logging.runs_dir.parent().unwrap()).unwrap(), here);
    assert!(config.logging.runs_dir.ends_with("out"));
    assert_eq!(config.data.root, std::path::PathBuf::from("rel/data"), "--set: the working directory's");
}
