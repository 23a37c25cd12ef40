//! Reports as a terminal table, Markdown, CSV or JSON; several reports side by side.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::matrices::{PairKind, Role};
use crate::report::{PairSummary, Report, RoleSummary};

/// What the numbers mean, printed under every table.
const LEGEND: &str = "effective rank: exp(−Σ pₖ ln pₖ), pₖ = σₖ/Σσ (Roy & Vetterli); ratio = effective rank / min(m, n); \
stable rank: Σσ²/σ₁²; α: WeightWatcher power law of λ = σ², λ_min by smallest KS distance. \
k×k convs are analysed as [out, in·k·k]. Overlap: mean cos² of the principal angles between col(W₁) and row(W₂), \
at each matrix's numerical rank (full) and rounded effective rank (dominant; chance = max(r₁, r₂)/n for random subspaces); \
tied (PE) pairs are 1 by construction (W₂ = W₁ᵀ). Energy outside col(W₁): 1 − ‖U_rᵀh‖²/‖h‖² of the hidden activation h \
that W₂ reads, at r = effective rank / numerical rank of W₁.";

/// A table whose columns are padded (terminal) or piped (Markdown).
struct Grid {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Grid {
    fn new(header: impl IntoIterator<Item = String>) -> Self {
        Self { header: header.into_iter().collect(), rows: Vec::new() }
    }

    fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.rows.push(cells.into_iter().collect());
    }

    fn render(&self, markdown: bool) -> String {
        let columns = self.header.len();
        let width = |c: usize| {
            std::iter::once(&self.header)
                .chain(&self.rows)
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let line = |cells: &[String]| {
            let padded = (0..columns).map(|c| {
                let cell = cells.get(c).map_or("", String::as_str);
                format!("{cell}{}", " ".repeat(widths[c] - cell.chars().count()))
            });
            if markdown {
                format!("| {} |", padded.collect::<Vec<_>>().join(" | "))
            } else {
                padded.collect::<Vec<_>>().join("  ").trim_end().to_owned()
            }
        };
        let mut out = line(&self.header) + "\n";
        let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w.max(3))).collect();
        out += &if markdown {
            format!("|{}|", rule.iter().map(|r| format!("-{r}-")).collect::<Vec<_>>().join("|"))
        } else {
            rule.join("  ")
        };
        out += "\n";
        for row in &self.rows {
            out += &line(row);
            out += "\n";
        }
        out
    }
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn thousands(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Per-run facts, per block type and per tied pair, one column per report.
fn comparison(reports: &[Report]) -> Vec<(&'static str, Grid)> {
    let labels = reports.iter().map(|r| r.label.clone());
    let mut runs = Grid::new(["".into()].into_iter().chain(labels.clone()));
    let cell = |f: &dyn Fn(&Report) -> String| reports.iter().map(f).collect::<Vec<_>>();
    runs.row(
        ["model".into()].into_iter().chain(cell(&|r| r.run.model.clone().unwrap_or_else(|| "–".into()))),
    );
    runs.row(["top-1 (%)".into()].into_iter().chain(cell(&|r| opt(r.run.top1, 2))));
    runs.row(["parameters".into()].into_iter().chain(cell(&|r| r.run.params.map_or("–".into(), thousands))));
    runs.row(
        ["matrices / tied pairs".into()]
            .into_iter()
            .chain(cell(&|r| format!("{} / {}", r.matrices.len(), r.pairs.len()))),
    );
    runs.row(["activation batches".into()].into_iter().chain(cell(&|r| r.batches.to_string())));

    let summaries: Vec<Vec<RoleSummary>> = reports.iter().map(Report::role_summaries).collect();
    let roles: BTreeSet<Role> = summaries.iter().flatten().map(|s| s.role).collect();
    let mut blocks = Grid::new(["block type".into(), "metric".into()].into_iter().chain(labels.clone()));
    for role in roles {
        let find = |i: usize| summaries[i].iter().find(|s| s.role == role);
        let metric = |name: &str, f: &dyn Fn(&RoleSummary) -> String| {
            [role.label().to_owned(), name.to_owned()]
                .into_iter()
                .chain((0..reports.len()).map(|i| find(i).map_or("–".into(), f)))
                .collect::<Vec<_>>()
        };
        blocks.row(metric("matrices / weights", &|s| format!("{} / {}", s.matrices, thousands(s.params))));
        blocks.row(metric("mean effective rank (ratio)", &|s| {
            format!("{:.1} ({:.2})", s.mean_effective_rank, s.mean_rank_ratio)
        }));
        blocks.row(metric("mean stable rank", &|s| format!("{:.1}", s.mean_stable_rank)));
        blocks.row(metric("mean α", &|s| opt(s.mean_alpha, 2)));
    }

    let pair_summaries: Vec<Vec<PairSummary>> = reports.iter().map(Report::pair_summaries).collect();
    let kinds: BTreeSet<PairKind> = pair_summaries.iter().flatten().map(|s| s.kind).collect();
    let mut pairs = Grid::new(["pair".into(), "metric".into()].into_iter().chain(labels));
    for kind in kinds {
        let find = |i: usize| pair_summaries[i].iter().find(|s| s.kind == kind);
        let metric = |name: &str, f: &dyn Fn(&PairSummary) -> String| {
            [kind.label().to_owned(), name.to_owned()]
                .into_iter()
                .chain((0..reports.len()).map(|i| find(i).map_or("–".into(), f)))
                .collect::<Vec<_>>()
        };
        let tied = |s: &PairSummary, value: String| if s.tied { format!("{value} (tied)") } else { value };
        pairs.row(metric("overlap, full rank", &|s| tied(s, format!("{:.3}", s.mean_overlap_full))));
        pairs.row(metric("overlap, effective rank (chance)", &|s| {
            tied(s, format!("{:.3} ({:.3})", s.mean_overlap_dominant, s.mean_chance_dominant))
        }));
        pairs.row(metric("energy outside col(W₁), eff. / full rank", &|s| match (
            s.mean_energy_outside_effective,
            s.mean_energy_outside_full,
        ) {
            (Some(eff), Some(full)) => format!("{eff:.3} / {full:.3}"),
            _ => "–".into(),
        }));
    }
    vec![("runs", runs), ("per block type", blocks), ("tied pairs (means over blocks)", pairs)]
}

/// Every matrix and pair of one report.
fn details(report: &Report) -> Vec<(&'static str, Grid)> {
    let header =
        ["matrix", "shape", "layout", "eff. rank", "ratio", "stable", "num. rank", "‖W‖₂", "‖W‖_F", "α"];
    let mut matrices = Grid::new(header.map(String::from));
    for m in &report.matrices {
        matrices.row([
            m.name.clone(),
            format!("{}×{}", m.rows, m.cols),
            m.layout.label(),
            format!("{:.1}", m.metrics.effective_rank),
            format!("{:.2}", m.rank_ratio()),
            format!("{:.1}", m.metrics.stable_rank),
            m.metrics.numerical_rank.to_string(),
            format!("{:.3}", m.metrics.spectral_norm),
            format!("{:.3}", m.metrics.frobenius_norm),
            opt(m.metrics.power_law.as_ref().map(|f| f.alpha), 2),
        ]);
    }
    let header = [
        "pair",
        "kind",
        "W₁ / W₂",
        "overlap full",
        "overlap eff. (chance)",
        "Grassmann eff.",
        "energy outside eff. / full",
    ];
    let mut pairs = Grid::new(header.map(String::from));
    for p in &report.pairs {
        pairs.row([
            p.name.clone(),
            p.kind.label().into(),
            if p.tied {
                format!("{} (tied: 1 by construction)", p.first)
            } else {
                format!("{} / {}", p.first, p.second)
            },
            format!("{:.3}", p.full.mean_cos2),
            format!("{:.3} ({:.3})", p.dominant.mean_cos2, p.dominant.chance),
            format!("{:.3}", p.dominant.grassmann),
            p.energy_outside
                .as_ref()
                .map_or("–".into(), |e| format!("{:.3} / {:.3}", e.effective_rank, e.full_rank)),
        ]);
    }
    vec![("matrices", matrices), ("tied pairs", pairs)]
}

fn render(sections: Vec<(&'static str, Grid)>, markdown: bool) -> String {
    let mut out = String::new();
    for (title, grid) in sections {
        let _ = if markdown { writeln!(out, "### {title}\n") } else { writeln!(out, "== {title}") };
        out += &grid.render(markdown);
        out += "\n";
    }
    out + LEGEND + "\n"
}

/// The terminal table: the comparison, plus every matrix and pair when there is one report.
pub fn table(reports: &[Report]) -> String {
    let mut sections = comparison(reports);
    if let [report] = reports {
        sections.extend(details(report));
    }
    render(sections, false)
}

/// The comparison as Markdown (for README and bench/results).
pub fn markdown(reports: &[Report]) -> String {
    render(comparison(reports), true)
}

/// Two CSV blocks separated by a blank line: one row per matrix, then one per pair.
pub fn csv(reports: &[Report]) -> String {
    let mut out = String::from(
        "model,matrix,role,layout,rows,cols,effective_rank,rank_ratio,stable_rank,numerical_rank,spectral_norm,frobenius_norm,alpha,lambda_min,ks_distance\n",
    );
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let num = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    for r in reports {
        for m in &r.matrices {
            let fit = m.metrics.power_law.as_ref();
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                quote(&r.label),
                quote(&m.name),
                quote(m.role.label()),
                quote(&m.layout.label()),
                m.rows,
                m.cols,
                m.metrics.effective_rank,
                m.rank_ratio(),
                m.metrics.stable_rank,
                m.metrics.numerical_rank,
                m.metrics.spectral_norm,
                m.metrics.frobenius_norm,
                num(fit.map(|f| f.alpha)),
                num(fit.map(|f| f.lambda_min)),
                num(fit.map(|f| f.ks_distance)),
            );
        }
    }
    out += "\nmodel,pair,kind,tied,first,second,overlap_full,grassmann_full,overlap_dominant,grassmann_dominant,chance_dominant,rank_1,rank_2,ambient,energy_outside_effective,energy_outside_full,vectors\n";
    for r in reports {
        for p in &r.pairs {
            let e = p.energy_outside.as_ref();
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                quote(&r.label),
                quote(&p.name),
                quote(p.kind.label()),
                p.tied,
                quote(&p.first),
                quote(&p.second),
                p.full.mean_cos2,
                p.full.grassmann,
                p.dominant.mean_cos2,
                p.dominant.grassmann,
                p.dominant.chance,
                p.dominant.dims[0],
                p.dominant.dims[1],
                p.dominant.ambient,
                num(e.map(|e| e.effective_rank)),
                num(e.map(|e| e.full_rank)),
                e.map_or(String::new(), |e| e.vectors.to_string()),
            );
        }
    }
    out
}

/// All reports as one JSON array.
pub fn json(reports: &[Report]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(reports)
}
