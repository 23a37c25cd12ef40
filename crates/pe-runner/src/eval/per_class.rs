//! Per-class metrics from a confusion matrix (row = label, column = top-1 prediction): support,
//! recall (the class's accuracy), precision and F1, the worst classes and the most-confused pairs.
//! A ratio with nothing to divide by (precision of a class never predicted) is `None`, written as
//! `null` / an empty cell, not as 0.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassRow {
    pub index: usize,
    pub class: String,
    /// Images of this class.
    pub support: u64,
    /// Of them, predicted as this class.
    pub correct: u64,
    /// Images predicted as this class.
    pub predicted: u64,
    pub recall: Option<f64>,
    pub precision: Option<f64>,
    pub f1: Option<f64>,
}

/// A label predicted as another class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    pub label: String,
    pub predicted: String,
    pub images: u64,
    /// Of the label's images.
    pub fraction: f64,
}

fn ratio(hits: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| hits as f64 / of as f64)
}

/// One row per class that has images or was predicted (the others say nothing), by index.
pub fn class_rows(confusion: &[f64], names: &[String]) -> Vec<ClassRow> {
    let n = names.len();
    assert_eq!(confusion.len(), n * n, "a {n}-class confusion matrix");
    let count = |i: usize, j: usize| confusion[i * n + j] as u64;
    (0..n)
        .filter_map(|c| {
            let support: u64 = (0..n).map(|j| count(c, j)).sum();
            let predicted: u64 = (0..n).map(|i| count(i, c)).sum();
            if support == 0 && predicted == 0 {
                return None;
            }
            let correct = count(c, c);
            let (recall, precision) = (ratio(correct, support), ratio(correct, predicted));
            let f1 = match (recall, precision) {
                (Some(r), Some(p)) if r + p > 0.0 => Some(2.0 * r * p / (r + p)),
                (Some(_), Some(_)) => Some(0.0),
                _ => None,
            };
            Some(ClassRow {
                index: c,
                class: names[c].clone(),
                support,
                correct,
                predicted,
                recall,
                precision,
                f1,
            })
        })
        .collect()
}

/// The mean recall over classes with images (balanced accuracy), in percent.
pub fn mean_recall(rows: &[ClassRow]) -> Option<f64> {
    let recalls: Vec<f64> = rows.iter().filter_map(|r| r.recall).collect();
    (!recalls.is_empty()).then(|| 100.0 * recalls.iter().sum::<f64>() / recalls.len() as f64)
}

/// The `k` classes of lowest recall (ties: more images first, then index).
pub fn worst(rows: &[ClassRow], k: usize) -> Vec<&ClassRow> {
    let mut with_images: Vec<&ClassRow> = rows.iter().filter(|r| r.recall.is_some()).collect();
    with_images.sort_by(|a, b| {
        a.recall.partial_cmp(&b.recall).unwrap_or(std::cmp::Ordering::Equal).then(b.support.cmp(&a.support))
    });
    with_images.truncate(k);
    with_images
}

/// The `k` largest off-diagonal counts (ties: by label, then prediction index).
pub fn most_confused(confusion: &[f64], names: &[String], k: usize) -> Vec<Confusion> {
    let n = names.len();
    let mut pairs: Vec<(u64, usize, usize)> = (0..n * n)
        .filter(|&at| at / n != at % n && confusion[at] > 0.0)
        .map(|at| (confusion[at] as u64, at / n, at % n))
        .collect();
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    pairs
        .into_iter()
        .take(k)
        .map(|(images, i, j)| {
            let support: f64 = confusion[i * n..(i + 1) * n].iter().sum();
            Confusion {
                label: names[i].clone(),
                predicted: names[j].clone(),
                images,
                fraction: images as f64 / support,
            }
        })
        .collect()
}

fn cell(value: Option<f64>) -> String {
    value.map_or(String::new(), |v| format!("{:.2}", 100.0 * v))
}

/// The rows as a Markdown table (percentages).
pub fn markdown(rows: &[ClassRow]) -> String {
    let mut out = String::from(
        "| index | class | images | correct | predicted | recall % | precision % | F1 % |\n|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.index,
            r.class.replace('|', "\\|"),
            r.support,
            r.correct,
            r.predicted,
            cell(r.recall),
            cell(r.precision),
            cell(r.f1)
        );
    }
    out
}

/// The worst `k` classes and the `k` most-confused pairs as Markdown (TensorBoard's text tab).
pub fn markdown_summary(confusion: &[f64], names: &[String], k: usize) -> String {
    let rows = class_rows(confusion, names);
    let mut out = match mean_recall(&rows) {
        Some(mean) => format!("Mean per-class recall {mean:.2} %.\n\n"),
        None => String::new(),
    };
    let worst: Vec<ClassRow> = worst(&rows, k).into_iter().cloned().collect();
    out += &format!("Worst {k} classes by recall:\n\n{}", markdown(&worst));
    out + "\nMost confused:\n\n" + &confused_markdown(&most_confused(confusion, names, k))
}

/// Confused pairs as a Markdown table.
pub fn confused_markdown(confused: &[Confusion]) -> String {
    let mut out = String::from("| label | predicted | images | % of label |\n|---|---|---:|---:|\n");
    for c in confused {
        out += &format!("| {} | {} | {} | {:.2} |\n", c.label, c.predicted, c.images, 100.0 * c.fraction);
    }
    out
}

/// A CSV field, quoted when it has to be (RFC 4180).
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The rows as CSV, fractions in [0, 1]; `prefix` fields (which evaluation) lead every row.
pub fn csv_rows(rows: &[ClassRow], prefix: &[String]) -> String {
    let fraction = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    rows.iter()
        .map(|r| {
            let fields = [
                r.index.to_string(),
                csv_field(&r.class),
                r.support.to_string(),
                r.correct.to_string(),
                r.predicted.to_string(),
                fraction(r.recall),
                fraction(r.precision),
                fraction(r.f1),
            ];
            prefix.iter().cloned().chain(fields).collect::<Vec<_>>().join(",") + "\n"
        })
        .collect()
}

/// The header of [`csv_rows`] after the prefix fields.
pub const CSV_HEADER: &str = "index,class,images,correct,predicted,recall,precision,f1";

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn metrics_are_the_hand_computed_ones() {
        // Labels 0: 3 images (2 right, 1 as 1); 1: 1 image (as 0); 2: none, never predicted.
        let confusion = [2., 1., 0., 1., 0., 0., 0., 0., 0.];
        let rows = class_rows(&confusion, &names(3));
        assert_eq!(rows.len(), 2);
        let (a, b) = (&rows[0], &rows[1]);
        assert_eq!((a.support, a.correct, a.predicted), (3, 2, 3));
        assert_eq!((a.recall, a.precision), (Some(2.0 / 3.0), Some(2.0 / 3.0)));
        assert_eq!((b.recall, b.precision, b.f1), (Some(0.0), Some(0.0), Some(0.0)));
        assert_eq!(mean_recall(&rows), Some(100.0 * (2.0 / 3.0) / 2.0));
        assert_eq!(worst(&rows, 1)[0].class, "c1");
        let confused = most_confused(&confusion, &names(3), 5);
        assert_eq!(confused.len(), 2);
        assert_eq!((confused[0].label.as_str(), confused[0].predicted.as_str()), ("c0", "c1"));
        assert_eq!(confused[0].fraction, 1.0 / 3.0);
    }

    #[test]
    fn a_class_never_predicted_has_no_precision() {
        let rows = class_rows(&[0., 1., 0., 1.], &names(2));
        assert_eq!((rows[0].recall, rows[0].precision, rows[0].f1), (Some(0.0), None, None));
        assert!(csv_rows(&rows, &[]).starts_with("0,c0,1,0,0,0.000000,,\n"));
        assert_eq!(csv_field("a, \"b\""), "\"a, \"\"b\"\"\"");
    }
}
