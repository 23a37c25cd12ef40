//! `pe summary`: the paper's table columns (parameters, MACs) for registry models, by our
//! own per-layer accounting.

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

use pe_models::registry::MATCHED_TWINS;
use pe_models::{presets, CostSheet, Preset};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// Only this registry model (default: all of them).
    #[arg(long)]
    model: Option<String>,
    /// Square input side for the MAC count (default: 224 for ImageNet models, the model's own
    /// size for fixed-size ones such as the 28×28 presets).
    #[arg(long)]
    img_size: Option<i64>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Also list every layer's parameters and MACs.
    #[arg(long)]
    layers: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    model: String,
    img_size: i64,
    params: i64,
    params_without_head: i64,
    macs: i64,
    paper_params_m: Option<f64>,
    note: String,
    /// The full model definition, as a TOML `[model]` section or `pe forward --config` takes it.
    config: pe_models::ModelConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<CostSheet>,
    /// For a parameter-matched baseline, the PE models it was sized to (issue 15).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    twins: Vec<Twin>,
}

/// A matched baseline's PE twin and the relative parameter difference, so the match is visible
/// wherever counts are read (the claim table reads it from the JSON).
#[derive(Debug, Serialize)]
struct Twin {
    model: String,
    params: i64,
    macs: i64,
    /// (matched − twin) / twin, in percent, both with head.
    params_diff_pct: f64,
}

/// The PE twins of `name` from the registry, counted at the same input size.
fn twins(name: &str, params: i64, img_size: i64) -> Vec<Twin> {
    MATCHED_TWINS
        .iter()
        .filter(|(matched, _)| *matched == name)
        .filter_map(|(_, twin)| {
            let sheet = pe_models::preset(twin).ok()?.costs(img_size);
            let params_diff_pct = 100.0 * (params - sheet.params()) as f64 / sheet.params() as f64;
            Some(Twin {
                model: (*twin).to_owned(),
                params: sheet.params(),
                macs: sheet.macs(),
                params_diff_pct,
            })
        })
        .collect()
}

fn row(preset: &Preset, img_size: Option<i64>, with_layers: bool) -> Row {
    let img_size = img_size.unwrap_or_else(|| preset.config.default_img_size());
    let sheet = preset.config.costs(img_size);
    let params = sheet.params();
    Row {
        model: preset.name.to_owned(),
        img_size,
        params,
        params_without_head: sheet.params_without_head(),
        macs: sheet.macs(),
        paper_params_m: preset.paper_params_m,
        note: preset.note.to_owned(),
        config: preset.config.clone(),
        layers: with_layers.then_some(sheet),
        twins: twins(preset.name, params, img_size),
    }
}

pub fn run(args: SummaryArgs) -> Result<()> {
    let selected: Vec<Preset> = match &args.model {
        Some(name) => {
            pe_models::preset(name).map_err(anyhow::Error::msg)?;
            presets().into_iter().filter(|p| p.name == name).collect()
        }
        None => presets(),
    };
    let rows: Vec<Row> = selected.iter().map(|p| row(p, args.img_size, args.layers)).collect();
    match args.format {
        Format::Json if args.model.is_some() => println!("{}", serde_json::to_string_pretty(&rows[0])?),
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => print_table(&rows),
    }
    Ok(())
}

fn millions(count: i64) -> String {
    format!("{:.2}M", count as f64 / 1e6)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<23} {:>4} {:>12} {:>9} {:>14} {:>9} {:>8} {:>6}  note",
        "model", "img", "params", "(M)", "without head", "(M)", "GMACs", "paper"
    );
    for row in rows {
        let paper = row.paper_params_m.map(|m| format!("{m:.1}M")).unwrap_or_else(|| "-".into());
        println!(
            "{:<23} {:>4} {:>12} {:>9} {:>14} {:>9} {:>8.3} {:>6}  {}",
            row.model,
            row.img_size,
            row.params,
            millions(row.params),
            row.params_without_head,
            millions(row.params_without_head),
            row.macs as f64 / 1e9,
            paper,
            row.note
        );
        if let Some(sheet) = &row.layers {
            for layer in &sheet.layers {
                println!("    {:<48} {:>12} params {:>16} MACs", layer.name, layer.params, layer.macs);
            }
        }
    }
    print_twins(rows);
}

/// Each parameter-matched baseline beside the PE model it was sized to.
fn print_twins(rows: &[Row]) {
    let matched: Vec<&Row> = rows.iter().filter(|r| !r.twins.is_empty()).collect();
    if matched.is_empty() {
        return;
    }
    println!("\nparameter-matched baselines (untied, narrower) beside their PE twins, counts with head:");
    println!(
        "{:<21} {:>12} {:>8}   {:<21} {:>12} {:>8} {:>8}",
        "matched", "params", "GMACs", "PE twin", "params", "GMACs", "diff"
    );
    for row in matched {
        for twin in &row.twins {
            println!(
                "{:<21} {:>12} {:>8.3}   {:<21} {:>12} {:>8.3} {:>+7.2}%",
                row.model,
                row.params,
                row.macs as f64 / 1e9,
                twin.model,
                twin.params,
                twin.macs as f64 / 1e9,
                twin.params_diff_pct
            );
        }
    }
}
