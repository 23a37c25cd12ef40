//! The confusion-matrix figure: an SVG for `pe eval` and a raster for TensorBoard. It is a
//! top-confusions view, because a full 1,000×1,000 heatmap is unreadable and sorted or clustered
//! full views still draw a million cells. A reader wants to know which classes get mixed up with
//! which, so the figure keeps the classes of the most-confused pairs (all of them when there are
//! few), puts confused pairs next to each other, and normalises each row by its class's full row
//! sum.

/// The classes a figure shows and their cells.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionView {
    /// Indices into the full class list, in display order (the same for rows and columns).
    pub classes: Vec<usize>,
    /// k×k row-major: the fraction of all of the true class's images (not only the shown
    /// columns) predicted as the column class; 0 in rows with no images.
    pub cells: Vec<f64>,
    /// k×k row-major raw image counts, for the tooltips.
    pub counts: Vec<f64>,
    /// How many classes the full matrix has.
    pub total_classes: usize,
}

/// Picks at most `max_classes` of the `n` classes of the row-major `counts` (row = true class,
/// column = top-1 prediction) and orders them (see the module doc). With `n <= max_classes`
/// every class is kept in index order, so figures from different epochs and runs line up cell by cell.
/// Panics if `counts` is not n×n (the matrix is ours, not a user's).
pub fn top_confusions(counts: &[f64], n: usize, max_classes: usize) -> ConfusionView {
    assert_eq!(counts.len(), n * n, "the confusion matrix must be {n}×{n}");
    let row_sums: Vec<f64> = (0..n).map(|i| counts[i * n..(i + 1) * n].iter().sum()).collect();
    let frac = |i: usize, j: usize| if row_sums[i] > 0.0 { counts[i * n + j] / row_sums[i] } else { 0.0 };
    let classes = if n <= max_classes {
        (0..n).collect()
    } else {
        seriate(select(counts, n, max_classes, &row_sums), |a, b| frac(a, b) + frac(b, a))
    };
    let pairs = || classes.iter().flat_map(|&i| classes.iter().map(move |&j| (i, j)));
    ConfusionView {
        cells: pairs().map(|(i, j)| frac(i, j)).collect(),
        counts: pairs().map(|(i, j)| counts[i * n + j]).collect(),
        classes: classes.clone(),
        total_classes: n,
    }
}

/// The classes of the off-diagonal pairs with the most images; if few confusions exist, then the
/// classes of lowest recall among those with images.
fn select(counts: &[f64], n: usize, max: usize, row_sums: &[f64]) -> Vec<usize> {
    let mut pairs: Vec<(f64, usize, usize)> =
        (0..n * n).map(|ij| (counts[ij], ij / n, ij % n)).filter(|&(c, i, j)| i != j && c > 0.0).collect();
    pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut chosen = vec![false; n];
    let mut selected = Vec::with_capacity(max);
    'pairs: for &(_, i, j) in &pairs {
        for class in [i, j] {
            if selected.len() == max {
                break 'pairs;
            }
            if !chosen[class] {
                chosen[class] = true;
                selected.push(class);
            }
        }
    }
    let mut rest: Vec<(f64, usize)> = (0..n)
        .filter(|&i| !chosen[i] && row_sums[i] > 0.0)
        .map(|i| (counts[i * n + i] / row_sums[i], i))
        .collect();
    rest.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let room = max - selected.len();
    selected.extend(rest.into_iter().take(room).map(|(_, i)| i));
    selected
}

/// Greedy seriation by the symmetric row-normalised confusion `sym` (the fractions the figure
/// shows, so a large class does not outweigh a small one): start with the first class of the most
/// confused pair, then append the unplaced class most confused with the last placed one; failing
/// that, the one most confused with all placed ones; failing that, the smallest index. O(k²).
fn seriate(mut classes: Vec<usize>, sym: impl Fn(usize, usize) -> f64) -> Vec<usize> {
    classes.sort_unstable(); // local index order is class index order, for the ties
    let k = classes.len();
    let s: Vec<f64> = (0..k * k).map(|ab| sym(classes[ab / k], classes[ab % k])).collect();
    let first = (0..k * k).filter(|ab| ab / k < ab % k);
    let mut next = argmax_positive(first, |ab| s[ab]).map(|ab| ab / k).or((k > 0).then_some(0));
    let mut placed = vec![false; k];
    let mut with_placed = vec![0.0; k];
    let mut order = Vec::with_capacity(k);
    while let Some(a) = next {
        placed[a] = true;
        order.push(classes[a]);
        with_placed.iter_mut().zip(&s[a * k..(a + 1) * k]).for_each(|(t, v)| *t += v);
        let free = || (0..k).filter(|&u| !placed[u]);
        next = argmax_positive(free(), |u| s[a * k + u])
            .or_else(|| argmax_positive(free(), |u| with_placed[u]))
            .or_else(|| free().next());
    }
    order
}

/// The first item with the largest positive key; None when no key is positive.
fn argmax_positive(items: impl Iterator<Item = usize>, key: impl Fn(usize) -> f64) -> Option<usize> {
    let better =
        |best: Option<(f64, usize)>, (v, u)| if v > best.map_or(0.0, |b| b.0) { Some((v, u)) } else { best };
    items.map(|u| (key(u), u)).fold(None, better).map(|b| b.1)
}

const BLUE: [u8; 3] = [8, 48, 107];
const RED: [u8; 3] = [178, 24, 43];
const GRID: [u8; 3] = [221, 221, 221];

/// The top of the off-diagonal scale: the largest off-diagonal fraction, so that small
/// confusions stay visible beside diagonals of ~90 %.
fn off_diagonal_max(view: &ConfusionView) -> f64 {
    let k = view.classes.len();
    (0..k * k).filter(|rc| rc / k != rc % k).map(|rc| view.cells[rc]).fold(0.0, f64::max)
}

/// The colour scale the SVG and the raster share: white to dark blue by fraction on the
/// diagonal, white to red relative to `off_max` off it.
fn cell_colour(view: &ConfusionView, r: usize, c: usize, off_max: f64) -> [u8; 3] {
    let f = view.cells[r * view.classes.len() + c];
    let (t, end) = if r == c { (f, BLUE) } else { (if off_max > 0.0 { f / off_max } else { 0.0 }, RED) };
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    end.map(|e| (255.0 + (f64::from(e) - 255.0) * t).round() as u8)
}

const CELL: f64 = 18.0;
const LABEL_CHARS: usize = 28;
/// Roughly the width of one character of 11 px sans-serif, to size the label margins.
const CHAR_W: f64 = 6.2;

fn name(names: &[String], class: usize) -> String {
    names.get(class).cloned().unwrap_or_else(|| class.to_string())
}

fn truncate(s: &str) -> String {
    let cut = s.chars().count() > LABEL_CHARS;
    s.chars().take(LABEL_CHARS - usize::from(cut)).chain(cut.then_some('…')).collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A standalone SVG 1.1 document of the view: row-normalised percentages in every cell of at
/// least 1 %, and a tooltip with the image count on every cell. Every `<rect>` is a cell.
pub fn svg(view: &ConfusionView, names: &[String], title: &str) -> String {
    let k = view.classes.len();
    let off_max = off_diagonal_max(view);
    let labels: Vec<String> = view.classes.iter().map(|&i| truncate(&name(names, i))).collect();
    let label_w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64 * CHAR_W + 6.0;
    let subtitle = if k == view.total_classes {
        format!("all {k} classes; row-normalised, in %")
    } else {
        format!(
            "{k} of {} classes: those in the most-confused pairs; row-normalised, in %",
            view.total_classes
        )
    };
    let grid = k as f64 * CELL;
    // Left: the "true class" caption, then row labels. Top: title, subtitle, "predicted class",
    // then column labels rotated by -60° (sin 60° ≈ 0.87 of their length upwards, half to the right).
    let (x0, y0) = (24.0 + label_w, 66.0 + 0.87 * label_w);
    let text_w = (title.chars().count() as f64 * 8.0).max(subtitle.chars().count() as f64 * CHAR_W);
    let width = (x0 + grid + 0.5 * label_w + 12.0).max(text_w + 20.0).ceil();
    let height = (y0 + grid + 12.0).ceil();
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <path d=\"M0 0H{width}V{height}H0Z\" fill=\"#fff\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>\n\
         <text x=\"10\" y=\"37\" fill=\"#555\">{}</text>\n\
         <text x=\"{:.1}\" y=\"55\" text-anchor=\"middle\">predicted class</text>\n\
         <text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">true class</text>\n",
        escape(title),
        escape(&subtitle),
        x0 + grid / 2.0,
        y0 + grid / 2.0,
    );
    for (r, label) in labels.iter().map(|l| escape(l)).enumerate() {
        let (x, y) = (x0 - 4.0, y0 + r as f64 * CELL + CELL / 2.0 + 4.0);
        out.push_str(&format!("<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"end\">{label}</text>\n"));
        let (x, y) = (x0 + r as f64 * CELL + CELL / 2.0 + 3.0, y0 - 4.0);
        out.push_str(&format!("<text transform=\"translate({x:.1} {y:.1}) rotate(-60)\">{label}</text>\n"));
    }
    for (r, &t) in view.classes.iter().enumerate() {
        for (c, &p) in view.classes.iter().enumerate() {
            let (f, n) = (view.cells[r * k + c], view.counts[r * k + c]);
            let [red, green, blue] = cell_colour(view, r, c, off_max);
            let (x, y) = (x0 + c as f64 * CELL, y0 + r as f64 * CELL);
            out.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{CELL}\" height=\"{CELL}\" \
                 fill=\"#{red:02x}{green:02x}{blue:02x}\" stroke=\"#ddd\" stroke-width=\"0.5\">\
                 <title>{} → {}: {n} image{} ({:.1} %)</title></rect>\n",
                escape(&name(names, t)),
                escape(&name(names, p)),
                if n == 1.0 { "" } else { "s" },
                f * 100.0,
            ));
            if f * 100.0 >= 1.0 - 1e-9 {
                let luma = 0.299 * f64::from(red) + 0.587 * f64::from(green) + 0.114 * f64::from(blue);
                out.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"8\" text-anchor=\"middle\" \
                     fill=\"{}\">{:.0}</text>\n",
                    x + CELL / 2.0,
                    y + CELL / 2.0 + 3.0,
                    if luma < 128.0 { "#fff" } else { "#000" },
                    f * 100.0,
                ));
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The heatmap without text as uint8 CHW planes `[3, h, w]` for TensorBoard, `cell` pixels a
/// cell, with a 1 px light-grey line between cells when `cell >= 4`. Returns (pixels, h, w).
pub fn raster(view: &ConfusionView, cell: usize) -> (Vec<u8>, usize, usize) {
    let side = view.classes.len() * cell;
    let off_max = off_diagonal_max(view);
    let plane = side * side;
    let mut chw = vec![0u8; 3 * plane];
    for y in 0..side {
        for x in 0..side {
            let line = cell >= 4 && ((y % cell == 0 && y > 0) || (x % cell == 0 && x > 0));
            let rgb = if line { GRID } else { cell_colour(view, y / cell, x / cell, off_max) };
            for (ch, v) in rgb.into_iter().enumerate() {
                chw[ch * plane + y * side + x] = v;
            }
        }
    }
    (chw, side, side)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Every row has 10 images. Off-diagonal pairs by count: (3,1)=4, (0,4)=3, (2,4)=3 (tie: i=0
    /// first), (1,0)=1, (4,2)=1. Selection: (3,1) adds 3 and 1; (0,4) has room for 0 only -> {3,1,0}.
    /// Symmetric fractions: s(1,3)=0.4, s(0,1)=0.1, s(0,3)=0. Start with 1 (pair 1-3), then 3; 3 has
    /// no confusion with 0, but 0 has 0.1 with the placed classes -> order [1, 3, 0].
    #[rustfmt::skip]
    const FIVE: [f64; 25] = [
        7.0, 0.0, 0.0, 0.0, 3.0,
        1.0, 9.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 7.0, 0.0, 3.0,
        0.0, 4.0, 0.0, 6.0, 0.0,
        0.0, 0.0, 1.0, 0.0, 9.0,
    ];

    #[test]
    fn picks_and_orders_the_most_confused_classes() {
        let view = top_confusions(&FIVE, 5, 3);
        assert_eq!(view.classes, vec![1, 3, 0]);
        assert_eq!(view.total_classes, 5);
        // Rows over their full sums of 10: class 0's 3 images predicted as class 4 are not shown.
        assert_eq!(view.cells, vec![0.9, 0.0, 0.1, 0.4, 0.6, 0.0, 0.0, 0.0, 0.7]);
        assert_eq!(view.counts, vec![9.0, 0.0, 1.0, 4.0, 6.0, 0.0, 0.0, 0.0, 7.0]);
    }

    #[test]
    fn small_sets_keep_every_class_in_index_order() {
        let view = top_confusions(&FIVE, 5, 5);
        assert_eq!(view.classes, vec![0, 1, 2, 3, 4]);
        assert_eq!(view.cells[4], 0.3);
        assert_eq!(view.cells.len(), 25);
    }

    #[test]
    fn few_confusions_fill_with_classes_that_have_images() {
        // No confusions: every class with images has recall 1, so ties go to the smaller index;
        // class 1 has no images and is never picked.
        let mut diagonal = [0.0; 25];
        for (i, v) in [4.0, 0.0, 2.0, 5.0, 1.0].into_iter().enumerate() {
            diagonal[i * 5 + i] = v;
        }
        assert_eq!(top_confusions(&diagonal, 5, 3).classes, vec![0, 2, 3]);
        // Pairs (3,4)=4 and (2,3)=2 give {3,4,2}; the fill adds 0 (recall 1 like class 1; smaller index).
        // Order: 3 (pair 3-4), 4; 4 has no confusion with 0 or 2, but 2 has 0.2 with the placed 3.
        #[rustfmt::skip]
        let few = [
            10.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 10.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 8.0, 2.0, 0.0,
            0.0, 0.0, 0.0, 6.0, 4.0,
            0.0, 0.0, 0.0, 0.0, 10.0,
        ];
        assert_eq!(top_confusions(&few, 5, 4).classes, vec![3, 4, 2, 0]);
    }

    #[test]
    fn svg_has_a_cell_per_rect_with_tooltips_and_escapes_names() {
        let view = top_confusions(&FIVE, 5, 3);
        let doc = svg(&view, &names(&["a<b & \"c\"", "b", "c", "d", "e"]), "val <top-1>");
        assert!(doc.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<rect").count(), 9);
        assert!(doc.contains("<title>d → b: 4 images (40.0 %)</title>"));
        assert!(doc.contains("<title>b → a&lt;b &amp; &quot;c&quot;: 1 image (10.0 %)</title>"));
        assert!(doc.contains("val &lt;top-1&gt;"));
        assert!(!doc.contains("a<b"));
        assert!(doc.contains("3 of 5 classes: those in the most-confused pairs"));
        assert_eq!(doc.matches("<text").count(), doc.matches("</text>").count());
        assert_eq!(
            (truncate(&"x".repeat(29)), truncate(&"y".repeat(28))),
            ("x".repeat(27) + "…", "y".repeat(28))
        );
    }

    #[test]
    fn svg_writes_percentages_from_one_percent() {
        // Row 0: 1 of 100 images is 1.0 %; row 1: 1 of 200 is 0.5 %.
        let view = top_confusions(&[99.0, 1.0, 1.0, 199.0], 2, 2);
        let doc = svg(&view, &names(&["x", "y"]), "t");
        assert!(doc.contains("all 2 classes"));
        assert_eq!(doc.matches("font-size=\"8\"").count(), 3);
        assert!(doc.contains(">1</text>"));
        assert!(doc.contains(">99</text>"));
    }

    #[test]
    fn raster_colours_cells() {
        // Cells [1.0, 0.0; 0.2, 0.8]; 5 px cells -> 10×10 pixels.
        let view = top_confusions(&[10.0, 0.0, 2.0, 8.0], 2, 2);
        let (chw, h, w) = raster(&view, 5);
        assert_eq!((chw.len(), h, w), (300, 10, 10));
        let px = |y: usize, x: usize| [chw[y * 10 + x], chw[100 + y * 10 + x], chw[200 + y * 10 + x]];
        assert_eq!(px(2, 7), [255, 255, 255]);
        assert_eq!(px(2, 2), BLUE);
        let sum = |p: [u8; 3]| p.iter().map(|&v| u32::from(v)).sum::<u32>();
        assert!((0..10).all(|y| (0..10).all(|x| sum(px(y, x)) >= sum(BLUE))));
        let off = px(7, 2);
        assert!(off[0] > off[2], "{off:?}");
        assert_eq!(px(2, 5), GRID);
        assert_eq!(px(0, 0), BLUE);
        assert_eq!(raster(&view, 2).0.len(), 3 * 16);
    }
}
