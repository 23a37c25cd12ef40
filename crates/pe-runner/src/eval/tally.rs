//! What an evaluation counts: loss, top-1/top-5 hits, ReaL hits and (when asked for) the
//! confusion matrix. Each process counts its shard; the counts of all ranks add up (every image is
//! in exactly one shard), so N processes report exactly what one would.

use serde::Serialize;

/// Counts over the images one or more processes evaluated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub samples: f64,
    pub unreadable: f64,
    /// ReaL: images with a non-empty label list, and their top-1 / top-5 hits.
    pub real_counted: f64,
    pub real_top1: f64,
    pub real_top5: f64,
    /// `num_classes²` counts, row = label, column = top-1 prediction; empty when not kept.
    pub confusion: Vec<f64>,
}

/// ReaL accuracies.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RealResult {
    pub acc1: f64,
    pub acc5: f64,
    /// Images with at least one ReaL label (the others are left out).
    pub counted: usize,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub acc1: f64,
    pub acc5: f64,
    pub samples: usize,
    /// Images of the split that could not be read and are not in `samples`.
    pub unreadable: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real: Option<RealResult>,
}

impl EvalResult {
    /// `60 images` or `60 images (1 unreadable)`, as the result lines print it.
    pub fn counted(&self) -> String {
        match self.unreadable {
            0 => format!("{} images", self.samples),
            n => format!("{} images ({n} unreadable)", self.samples),
        }
    }
}

const SCALARS: usize = 8;

impl Tally {
    /// A tally that keeps a `num_classes`-square confusion matrix (or none with 0).
    pub fn new(confusion_classes: usize) -> Self {
        Tally { confusion: vec![0.0; confusion_classes * confusion_classes], ..Default::default() }
    }

    /// The classes of the confusion matrix (0 when none is kept).
    pub fn confusion_classes(&self) -> usize {
        (self.confusion.len() as f64).sqrt().round() as usize
    }

    /// As a flat vector, for an all-reduce.
    pub fn to_vec(&self) -> Vec<f64> {
        let scalars = [
            self.loss,
            self.top1,
            self.top5,
            self.samples,
            self.unreadable,
            self.real_counted,
            self.real_top1,
            self.real_top5,
        ];
        scalars.into_iter().chain(self.confusion.iter().copied()).collect()
    }

    /// The inverse of [`Tally::to_vec`].
    pub fn from_vec(values: &[f64]) -> Self {
        let s = &values[..SCALARS];
        Tally {
            loss: s[0],
            top1: s[1],
            top5: s[2],
            samples: s[3],
            unreadable: s[4],
            real_counted: s[5],
            real_top1: s[6],
            real_top5: s[7],
            confusion: values[SCALARS..].to_vec(),
        }
    }

    /// Counts one image: its label, its predictions best first, its ReaL labels when the set has
    /// them.
    pub fn add(&mut self, label: i64, top: &[i64], real: Option<&[i64]>) {
        self.samples += 1.0;
        self.top1 += f64::from(top[0] == label);
        self.top5 += f64::from(top.iter().take(5).any(|&c| c == label));
        if let Some(real) = real.filter(|r| !r.is_empty()) {
            self.real_counted += 1.0;
            self.real_top1 += f64::from(real.contains(&top[0]));
            self.real_top5 += f64::from(top.iter().take(5).any(|c| real.contains(c)));
        }
        let n = self.confusion_classes();
        if n > 0 {
            self.confusion[label as usize * n + top[0] as usize] += 1.0;
        }
    }

    /// Means and percentages; an empty split is an error. `real` says whether ReaL labels were
    /// given (a set whose lists are all empty reports 0 counted, not nothing).
    pub fn result(&self, real: bool) -> anyhow::Result<EvalResult> {
        anyhow::ensure!(
            self.samples > 0.0,
            "the evaluation split has no readable image ({} unreadable)",
            self.unreadable
        );
        let n = self.samples;
        let percent = |hits: f64, of: f64| if of > 0.0 { 100.0 * hits / of } else { 0.0 };
        Ok(EvalResult {
            loss: self.loss / n,
            acc1: percent(self.top1, n),
            acc5: percent(self.top5, n),
            samples: n as usize,
            unreadable: self.unreadable as usize,
            real: real.then(|| RealResult {
                acc1: percent(self.real_top1, self.real_counted),
                acc5: percent(self.real_top5, self.real_counted),
                counted: self.real_counted as usize,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_rule_counts_a_top1_in_the_list_and_leaves_out_empty_lists() {
        let mut tally = Tally::new(3);
        // Label 0, predicted 1 then 2: wrong for the label, right for ReaL [1].
        tally.add(0, &[1, 2, 0], Some(&[1]));
        // Right for the label, ReaL lists other classes: ReaL top-1 wrong, top-5 right (2 is 2nd).
        tally.add(2, &[2, 1, 0], Some(&[1, 0]));
        // An empty list: counted for accuracy, not for ReaL.
        tally.add(1, &[1, 0, 2], Some(&[]));
        let result = tally.result(true).unwrap();
        assert_eq!(result.acc1, 100.0 * 2.0 / 3.0);
        let real = result.real.unwrap();
        assert_eq!((real.counted, real.acc1, real.acc5), (2, 50.0, 100.0));
        // Row = label, column = top-1.
        assert_eq!(tally.confusion, [0., 1., 0., 0., 1., 0., 0., 0., 1.]);
    }

    #[test]
    fn tallies_of_two_ranks_add_up_to_one() {
        let mut a = Tally::new(2);
        a.add(0, &[0, 1], None);
        let mut b = Tally::new(2);
        b.add(1, &[0, 1], None);
        let summed: Vec<f64> = a.to_vec().iter().zip(b.to_vec()).map(|(x, y)| x + y).collect();
        let mut both = Tally::new(2);
        both.add(0, &[0, 1], None);
        both.add(1, &[0, 1], None);
        assert_eq!(Tally::from_vec(&summed), both);
        assert_eq!(both.result(false).unwrap().real, None);
    }
}
