//! Reading experiment files: `base = "other.toml"` inheritance with deep merge, `--set key=value`
//! overrides, model presets, and errors that name the file, line and key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::ExperimentConfig;

/// A recipe resolved into its typed config, with where it came from.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub config: ExperimentConfig,
    /// The recipe file the user named.
    pub source: PathBuf,
    /// The registry preset the model section started from, if any.
    pub model_preset: Option<String>,
}

/// Why a recipe was rejected: where (file:line or the `--set` argument), which key, and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub location: String,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: `{key}`: {}", self.location, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// One file of the inheritance chain.
struct Source {
    path: PathBuf,
    text: String,
    table: Table,
}

fn read_source(path: &Path) -> Result<Source, ConfigError> {
    let location = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        location: location.clone(),
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    let table: Table = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|span| line_of(&text, span.start));
        let location = line.map_or(location.clone(), |l| format!("{location}:{l}"));
        ConfigError { location, key: None, message: format!("invalid TOML: {}", e.message()) }
    })?;
    Ok(Source { path: path.to_owned(), text, table })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The file and its `base` ancestors, most derived first.
fn read_chain(path: &Path) -> Result<Vec<Source>, ConfigError> {
    let mut chain: Vec<Source> = Vec::new();
    let mut next = Some(path.to_owned());
    while let Some(path) = next.take() {
        if chain.iter().any(|s| s.path == path) {
            return Err(ConfigError {
                location: chain[0].path.display().to_string(),
                key: Some("base".into()),
                message: format!("inheritance cycle through {}", path.display()),
            });
        }
        let mut source = read_source(&path)?;
        if let Some(base) = source.table.remove("base") {
            let Value::String(base) = base else {
                return Err(located(&[source], "base", "expected a file name string".into()));
            };
            next = Some(path.parent().unwrap_or(Path::new(".")).join(base));
        }
        chain.push(source);
    }
    Ok(chain)
}

/// Deep merge: tables merge key by key; anything else in `top` replaces `base`.
pub fn merge(base: &mut Table, top: Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(base_table)), Value::Table(top_table)) => merge(base_table, top_table),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Applies `key.path=value`; the value is TOML (`1e-3`, `[3, 4]`, `"x"`), else a bare string.
fn apply_override(table: &mut Table, assignment: &str) -> Result<String, ConfigError> {
    let error = |message: String| ConfigError { location: format!("--set {assignment}"), key: None, message };
    let (key, raw) = assignment.split_once('=').ok_or_else(|| error("expected KEY=VALUE".into()))?;
    let key = key.trim();
    let value = toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(error(format!("invalid key {key:?}")));
    }
    let mut cursor = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cursor.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| error(format!("{part:?} is not a table")))?;
    }
    cursor.insert(parts[parts.len() - 1].to_owned(), value);
    Ok(key.to_owned())
}

/// Replaces `[model] name = "preset"` by the preset's full definition with the other model keys on top.
fn resolve_model(table: &mut Table) -> Result<Option<String>, String> {
    let Some(Value::Table(model)) = table.get_mut("model") else {
        return Err("missing: set `name` (a registry model) or `arch` and its fields".into());
    };
    let Some(name) = model.remove("name") else { return Ok(None) };
    let Value::String(name) = name else { return Err("`name` must be a string".into()) };
    let preset = pe_models::preset(&name).map_err(|e| e.to_string())?;
    let Value::Table(mut full) = Value::try_from(&preset).map_err(|e| e.to_string())? else {
        unreachable!("a model config serialises to a table")
    };
    merge(&mut full, std::mem::take(model));
    *model = full;
    Ok(Some(name))
}

/// Loads `path` with its bases and `overrides`, resolves the model preset, and validates.
pub fn load_experiment(path: &Path, overrides: &[String]) -> Result<Experiment, ConfigError> {
    let chain = read_chain(path)?;
    let mut merged = Table::new();
    for source in chain.iter().rev() {
        merge(&mut merged, source.table.clone());
    }
    let mut overridden = Vec::new();
    for assignment in overrides {
        overridden.push((apply_override(&mut merged, assignment)?, assignment.clone()));
    }
    let locate = |key: &str, message: String| {
        if let Some((_, assignment)) = overridden
            .iter()
            .rev()
            .find(|(k, _)| key == k || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}.")))
        {
            return ConfigError { location: format!("--set {assignment}"), key: Some(key.into()), message };
        }
        located(&chain, key, message)
    };
    let model_preset = resolve_model(&mut merged).map_err(|m| locate("model.name", m))?;
    lift_model_init(&mut merged).map_err(|m| locate(MODEL_INIT, m))?;
    let mut config: ExperimentConfig =
        typed(Value::Table(merged)).map_err(|(key, m)| locate(&recipe_key(&key), m))?;
    if config.name.is_empty() {
        config.name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    }
    let set_by_file = |key: &str| {
        let overridden = overridden.iter().any(|(k, _)| k == key);
        chain.iter().find(|source| find_key_line(&source.text, key).is_some()).filter(|_| !overridden)
    };
    if let Some(source) = set_by_file("data.root") {
        config.data.root = relative_to(&source.path, &config.data.root);
    }
    if let (Some(source), Some(init)) = (set_by_file("model.init"), &config.model_init.init) {
        config.model_init.init = Some(relative_to(&source.path, init));
    }
    if let (Some(source), Some(distill)) = (set_by_file("distill.teacher"), &mut config.distill) {
        distill.teacher = relative_to(&source.path, &distill.teacher);
    }
    if let Some(source) = set_by_file("logging.runs_dir") {
        config.logging.runs_dir = relative_to(&source.path, &config.logging.runs_dir);
    }
    config.validate().map_err(|invalid| locate(invalid.key, invalid.message))?;
    Ok(Experiment { config, source: path.to_owned(), model_preset })
}

/// A path a recipe file gives, resolved against that file's folder (as `base =` is), so a
/// recipe means the same data and runs folder from whatever folder `pe` is started in. Absolute
/// paths and URLs (a WebDataset `data.root` may be `s3://bucket/prefix`) stay; `--set` paths and
/// defaults are the working directory's.
fn relative_to(file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() || path.to_string_lossy().contains("://") {
        return path.to_owned();
    }
    let folder = file.parent().unwrap_or(Path::new("."));
    let joined = std::path::absolute(folder.join(path)).unwrap_or_else(|_| folder.join(path));
    // `a/b/../c` -> `a/c`: the recorded recipe then reads as the path it names.
    let mut clean = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::ParentDir if clean.file_name().is_some() => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            other => clean.push(other),
        }
    }
    clean
}

/// Deserialises with the failing key path; unknown fields report the field itself.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut key = e.path().to_string();
        // toml appends the key path ("\nin `train.device`"); the error names the key already.
        let message = e.inner().to_string();
        let message = message.split("\nin `").next().unwrap_or_default().trim_end().to_owned();
        if let Some(field) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
            if key == "." {
                key = field.to_owned();
            } else if !key.ends_with(&format!(".{field}")) && key != field {
                key = format!("{key}.{field}");
            }
        }
        (key, message)
    })
}

/// The most derived file that sets `key` (or its nearest table), with the line.
fn located(chain: &[Source], key: &str, message: String) -> ConfigError {
    let mut probe = key.to_owned();
    loop {
        for source in chain {
            if let Some(line) = find_key_line(&source.text, &probe) {
                let location = format!("{}:{line}", source.path.display());
                return ConfigError { location, key: Some(key.into()), message };
            }
        }
        match probe.rsplit_once('.') {
            Some((parent, _)) => probe = parent.to_owned(),
            None => break,
        }
    }
    let location = chain.first().map(|s| s.path.display().to_string()).unwrap_or_default();
    ConfigError { location, key: Some(key.into()), message }
}

/// The 1-based line where dotted `key` is assigned or its table header stands.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = header.trim_matches(|c| c == '[' || c == ' ').to_owned();
            if table == key {
                return Some(index + 1);
            }
            continue;
        }
        let Some((name, _)) = line.split_once('=') else { continue };
        let name = name.trim().trim_matches('"');
        let full = if table.is_empty() { name.to_owned() } else { format!("{table}.{name}") };
        if full == key {
            return Some(index + 1);
        }
    }
    None
}

/// The typed config's table for the `[model] init*` keys (see [`ExperimentConfig::model_init`]).
const MODEL_INIT: &str = "model_init";
const MODEL_INIT_KEYS: [&str; 4] = ["init", "init_exclude", "init_ema", "head_init_scale"];

/// Moves the `init*` keys of `[model]` into their own table, where the typed config expects them.
fn lift_model_init(table: &mut Table) -> Result<(), String> {
    if table.contains_key(MODEL_INIT) {
        return Err(format!("unknown section; write its keys in [model] ({})", MODEL_INIT_KEYS.join(", ")));
    }
    let Some(Value::Table(model)) = table.get_mut("model") else { return Ok(()) };
    let init: Table =
        MODEL_INIT_KEYS.iter().filter_map(|k| Some((k.to_string(), model.remove(*k)?))).collect();
    if !init.is_empty() {
        table.insert(MODEL_INIT.into(), Value::Table(init));
    }
    Ok(())
}

/// The inverse of [`lift_model_init`], for what is written out.
fn lower_model_init(table: &mut Table) {
    let Some(Value::Table(init)) = table.remove(MODEL_INIT) else { return };
    if let Some(Value::Table(model)) = table.get_mut("model") {
        model.extend(init);
    }
}

/// A typed config's key as a recipe spells it (`model_init.init` -> `model.init`).
pub fn recipe_key(key: &str) -> String {
    match key.strip_prefix(MODEL_INIT).and_then(|rest| rest.strip_prefix('.')) {
        Some(rest) => format!("model.{rest}"),
        None if key == MODEL_INIT => "model.init".into(),
        None => key.to_owned(),
    }
}

/// Serialises a resolved config as TOML (what `runs/<name>/config.toml` holds), the model's
/// `init*` keys in `[model]` as a recipe writes them.
pub fn to_toml(config: &ExperimentConfig) -> String {
    let Value::Table(mut table) = Value::try_from(config).expect("an experiment config serialises to TOML")
    else {
        unreachable!("an experiment config serialises to a table")
    };
    lower_model_init(&mut table);
    toml::to_string(&table).expect("an experiment config always serialises to TOML")
}

/// Reads what [`to_toml`] wrote (no bases, overrides or presets: a resolved config).
pub fn from_toml(text: &str) -> Result<ExperimentConfig, String> {
    let mut table: Table = toml::from_str(text).map_err(|e| e.to_string())?;
    lift_model_init(&mut table)?;
    typed(Value::Table(table)).map_err(|(key, message)| format!("{}: {message}", recipe_key(&key)))
}

/// A run's resolved config (what [`to_toml`] wrote) with `overrides` on top, validated: how a
/// command reads the recipe a checkpoint was trained with, e.g. with `--set data.root=` when the
/// data has moved since.
pub fn resolved_with_overrides(text: &str, overrides: &[String]) -> Result<ExperimentConfig, ConfigError> {
    let error = |key: Option<String>, message: String| ConfigError {
        location: "the run's resolved recipe".into(),
        key,
        message,
    };
    let mut table: Table = toml::from_str(text).map_err(|e| error(None, e.to_string()))?;
    for assignment in overrides {
        apply_override(&mut table, assignment)?;
    }
    lift_model_init(&mut table).map_err(|m| error(Some(MODEL_INIT.into()), m))?;
    let config: ExperimentConfig =
        typed(Value::Table(table)).map_err(|(key, m)| error(Some(recipe_key(&key)), m))?;
    config.validate().map_err(|invalid| error(Some(invalid.key.into()), invalid.message))?;
    Ok(config)
}
