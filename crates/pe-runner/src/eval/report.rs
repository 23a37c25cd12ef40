//! How `pe eval` reports: a result line per evaluation as it finishes, then the table of all
//! evaluations (and per class) as text, Markdown, JSON or CSV. With a machine format, stdout holds
//! only that format and the progress lines go to stderr.

use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;
use serde_json::json;

use crate::eval::per_class::{self, ClassRow, Confusion, CSV_HEADER};
use crate::eval::tally::EvalResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Result lines (and with --per-class the worst classes and most-confused pairs); the last line
    /// is the result as JSON.
    Text,
    /// Tables: the results and, with --per-class, each evaluation's classes.
    Markdown,
    /// One JSON document with everything (per class and the confusion matrix with --per-class).
    Json,
    /// The per-class rows with --per-class, else the result rows.
    Csv,
}

/// One evaluation: a checkpoint at one size and crop.
pub struct Evaluated {
    pub source: String,
    pub weights: PathBuf,
    pub img_size: usize,
    pub crop_pct: f64,
    pub result: EvalResult,
    pub classes: Vec<String>,
    /// Empty without --per-class.
    pub confusion: Vec<f64>,
}

impl Evaluated {
    /// `source`, with ` @ 224 px crop 0.875` when sizes or crops were asked for.
    pub fn title(&self, with_size: bool) -> String {
        match with_size {
            true => format!("{} @ {} px crop {}", self.source, self.img_size, self.crop_pct),
            false => self.source.clone(),
        }
    }

    pub fn class_rows(&self) -> Vec<ClassRow> {
        per_class::class_rows(&self.confusion, &self.classes)
    }

    pub fn most_confused(&self, k: usize) -> Vec<Confusion> {
        per_class::most_confused(&self.confusion, &self.classes, k)
    }
}

/// Where the evaluation ran and its result, as JSON.
fn summary_json(evaluated: &Evaluated) -> serde_json::Value {
    let mut value = json!({
        "source": evaluated.source,
        "weights": evaluated.weights.display().to_string(),
        "img_size": evaluated.img_size,
        "crop_pct": evaluated.crop_pct,
    });
    if let (Some(object), serde_json::Value::Object(result)) =
        (value.as_object_mut(), serde_json::to_value(evaluated.result).unwrap_or_default())
    {
        object.extend(result);
    }
    value
}

/// Everything about one evaluation (`--format json`): with --per-class the class rows, the
/// most-confused pairs and the confusion matrix.
pub fn to_json(evaluated: &Evaluated, worst: usize) -> serde_json::Value {
    let mut value = summary_json(evaluated);
    if let (Some(object), false) = (value.as_object_mut(), evaluated.confusion.is_empty()) {
        let rows = evaluated.class_rows();
        object.insert("mean_recall".into(), json!(per_class::mean_recall(&rows)));
        object.insert("per_class".into(), json!(rows));
        object.insert("most_confused".into(), json!(evaluated.most_confused(worst)));
        let n = evaluated.classes.len();
        let matrix: Vec<Vec<u64>> =
            evaluated.confusion.chunks(n).map(|row| row.iter().map(|&c| c as u64).collect()).collect();
        object.insert("classes".into(), json!(evaluated.classes));
        object.insert("confusion".into(), json!(matrix));
    }
    value
}

/// The result line: `SOURCE: top-1 … top-5 … loss … on N images`, ReaL's numbers after it.
fn result_line(evaluated: &Evaluated, with_size: bool) -> String {
    let r = &evaluated.result;
    let mut line = format!(
        "{}: top-1 {:.2}% top-5 {:.2}% loss {:.4} on {}",
        evaluated.title(with_size),
        r.acc1,
        r.acc5,
        r.loss,
        r.counted()
    );
    if let Some(real) = r.real {
        line += &format!("; ReaL top-1 {:.2}% top-5 {:.2}% on {} images", real.acc1, real.acc5, real.counted);
    }
    line
}

fn percent(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v))
}

/// The per-class summary for a person: mean recall, the worst classes, the most-confused pairs.
fn per_class_summary(evaluated: &Evaluated, worst: usize) -> Vec<String> {
    let rows = evaluated.class_rows();
    let mut lines = Vec::new();
    if let Some(mean) = per_class::mean_recall(&rows) {
        let with_images = rows.iter().filter(|r| r.support > 0).count();
        lines.push(format!("  mean per-class recall {mean:.2}% over {with_images} classes"));
    }
    lines.push(format!("  worst {worst} classes by recall:"));
    for r in per_class::worst(&rows, worst) {
        lines.push(format!(
            "    {:<28} {:>6} ({}/{}), precision {}",
            r.class,
            percent(r.recall),
            r.correct,
            r.support,
            percent(r.precision)
        ));
    }
    lines.push("  most confused (label -> predicted):".into());
    for c in evaluated.most_confused(worst) {
        lines.push(format!(
            "    {} -> {}: {} images ({:.1}% of {})",
            c.label,
            c.predicted,
            c.images,
            100.0 * c.fraction,
            c.label
        ));
    }
    lines
}

/// Says an evaluation finished: on stdout in the text format, else on stderr.
pub fn progress(evaluated: &Evaluated, with_size: bool, format: Format, per_class: bool, worst: usize) {
    let mut lines = vec![result_line(evaluated, with_size)];
    if per_class && format == Format::Text {
        lines.extend(per_class_summary(evaluated, worst));
    }
    for line in lines {
        match format {
            Format::Text => println!("{line}"),
            _ => eprintln!("{line}"),
        }
    }
}

fn results_table(done: &[Evaluated]) -> String {
    let real = done.iter().any(|e| e.result.real.is_some());
    let per_class = done.iter().any(|e| !e.confusion.is_empty());
    let mut header = "| source | img size | crop | top-1 % | top-5 % | loss | images |".to_string();
    let mut rule = "|---|---:|---:|---:|---:|---:|---:|".to_string();
    if real {
        header += " ReaL top-1 % | ReaL top-5 % |";
        rule += "---:|---:|";
    }
    if per_class {
        header += " mean recall % |";
        rule += "---:|";
    }
    let mut out = format!("{header}\n{rule}\n");
    for e in done {
        let r = &e.result;
        out += &format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.4} | {} |",
            e.source.replace('|', "\\|"),
            e.img_size,
            e.crop_pct,
            r.acc1,
            r.acc5,
            r.loss,
            r.samples
        );
        if real {
            match r.real {
                Some(real) => out += &format!(" {:.2} | {:.2} |", real.acc1, real.acc5),
                None => out += " | |",
            }
        }
        if per_class {
            let mean = per_class::mean_recall(&e.class_rows());
            out += &format!(" {} |", mean.map_or(String::new(), |m| format!("{m:.2}")));
        }
        out += "\n";
    }
    out
}

/// The report of all evaluations on stdout, in `format`.
pub fn print(
    done: &[Evaluated],
    with_size: bool,
    format: Format,
    per_class: bool,
    worst: usize,
) -> Result<()> {
    match format {
        Format::Text => {
            if done.len() > 1 {
                print!("{}", results_table(done));
            }
            // The last line is machine-readable: the result (several: a list of them).
            let plain = |e: &Evaluated| summary_json(e);
            match done {
                [one] => println!("{}", plain(one)),
                several => println!("{}", serde_json::Value::Array(several.iter().map(plain).collect())),
            }
        }
        Format::Markdown => {
            print!("{}", results_table(done));
            if per_class {
                for e in done {
                    println!("\n### {}\n", e.title(with_size));
                    print!("{}", per_class::markdown(&e.class_rows()));
                    println!("\nMost confused:\n");
                    print!("{}", per_class::confused_markdown(&e.most_confused(worst)));
                }
            }
        }
        Format::Json => {
            let all: Vec<_> = done.iter().map(|e| to_json(e, worst)).collect();
            println!("{}", serde_json::to_string_pretty(&json!({ "evaluations": all }))?);
        }
        Format::Csv if per_class => {
            println!("source,img_size,crop_pct,{CSV_HEADER}");
            for e in done {
                let prefix =
                    [per_class::csv_field(&e.source), e.img_size.to_string(), e.crop_pct.to_string()];
                print!("{}", per_class::csv_rows(&e.class_rows(), &prefix));
            }
        }
        Format::Csv => {
            println!(
                "source,img_size,crop_pct,top1,top5,loss,images,unreadable,real_top1,real_top5,real_images"
            );
            for e in done {
                let r = &e.result;
                let real = r.real.map_or(",,".into(), |x| format!("{},{},{}", x.acc1, x.acc5, x.counted));
                println!(
                    "{},{},{},{},{},{},{},{},{real}",
                    per_class::csv_field(&e.source),
                    e.img_size,
                    e.crop_pct,
                    r.acc1,
                    r.acc5,
                    r.loss,
                    r.samples,
                    r.unreadable
                );
            }
        }
    }
    Ok(())
}
