//! Runs the analysis: batched SVDs of every matrix, metrics, pair overlaps, activation energy.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use tch::Tensor;

use pe_models::Model;

use crate::energy::EnergyMeter;
use crate::error::{AnalyzeError, Result};
use crate::matrices::{Matrices, TiePair};
use crate::report::{MatrixReport, PairReport, Report, RunInfo};
use crate::spectrum::{SpectrumMetrics, F32_EPS};
use crate::subspace::{overlap, Overlap};

/// A matrix's SVD: singular values (descending) and, where a pair needs them, singular vectors.
struct Decomposition {
    sv: Vec<f64>,
    /// `U: [rows, k]`.
    left: Option<Tensor>,
    /// `V: [cols, k]`.
    right: Option<Tensor>,
}

/// A model's matrices decomposed once; reports (with or without activations) are read from it.
pub struct Analysis {
    matrices: Matrices,
    decompositions: Vec<Decomposition>,
    metrics: Vec<SpectrumMetrics>,
    seconds: f64,
}

impl Analysis {
    /// Extracts and decomposes every matrix of `model`.
    pub fn new(model: &Model) -> Result<Self> {
        Self::from_matrices(Matrices::of(model))
    }

    pub fn from_matrices(matrices: Matrices) -> Result<Self> {
        let start = Instant::now();
        let decompositions = tch::no_grad(|| decompose(&matrices))?;
        let metrics = matrices
            .matrices
            .iter()
            .zip(&decompositions)
            .map(|(m, d)| {
                SpectrumMetrics::from_singular_values(&d.sv, m.rows() as usize, m.cols() as usize, F32_EPS)
            })
            .collect();
        Ok(Self { matrices, decompositions, metrics, seconds: start.elapsed().as_secs_f64() })
    }

    /// Wall time of the SVDs and metrics: said on the console, never in a report (reports of the
    /// same weights are the same, byte for byte).
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Meters for the hidden activation of every pair that reads one.
    pub fn energy(&self) -> Energy {
        let meters = self
            .matrices
            .pairs
            .iter()
            .filter_map(|pair| {
                let probe = pair.probe.as_ref()?;
                let left = self.decompositions[pair.first].left.as_ref()?;
                let (r_full, r_eff) = self.ranks(pair.first);
                Some((probe.clone(), EnergyMeter::new(probe, left, r_full, r_eff)))
            })
            .collect();
        Energy { meters, batches: 0 }
    }

    /// Numerical rank and rounded effective rank (at least 1, at most the numerical rank).
    fn ranks(&self, index: usize) -> (usize, usize) {
        let metrics = &self.metrics[index];
        let full = metrics.numerical_rank.max(1);
        (full, (metrics.effective_rank.round() as usize).clamp(1, full))
    }

    /// The report, with the energy shares of `energy` when given.
    pub fn report(&self, label: &str, run: RunInfo, energy: Option<&Energy>) -> Result<Report> {
        let matrices = self
            .matrices
            .matrices
            .iter()
            .zip(&self.decompositions)
            .zip(&self.metrics)
            .map(|((m, d), metrics)| MatrixReport {
                name: m.name.clone(),
                role: m.role,
                layout: m.layout,
                rows: m.rows() as usize,
                cols: m.cols() as usize,
                metrics: metrics.clone(),
                singular_values: d.sv.clone(),
            })
            .collect();
        let pairs =
            self.matrices.pairs.iter().map(|pair| self.pair_report(pair, energy)).collect::<Result<_>>()?;
        Ok(Report { label: label.to_owned(), run, matrices, pairs, batches: energy.map_or(0, |e| e.batches) })
    }

    fn pair_report(&self, pair: &TiePair, energy: Option<&Energy>) -> Result<PairReport> {
        let first = &self.decompositions[pair.first];
        const PAIRED: &str = "`decompose` keeps the singular vectors of every pair member";
        let left = first.left.as_ref().expect(PAIRED);
        // A PE layer reads with W₁ᵀ, whose right singular vectors are W₁'s left ones.
        let (right, second_index) = match pair.second {
            Some(second) => (self.decompositions[second].right.as_ref().expect(PAIRED), second),
            None => (left, pair.first),
        };
        let (full_1, eff_1) = self.ranks(pair.first);
        let (full_2, eff_2) = self.ranks(second_index);
        let span = |basis: &Tensor, r: usize| basis.narrow(1, 0, r as i64);
        let at = |r1, r2| -> Result<Overlap> { overlap(&span(left, r1), &span(right, r2)) };
        let first_name = self.matrices.matrices[pair.first].name.clone();
        Ok(PairReport {
            name: pair.name.clone(),
            kind: pair.kind,
            tied: pair.second.is_none(),
            second: match pair.second {
                Some(second) => self.matrices.matrices[second].name.clone(),
                None => format!("{first_name}ᵀ"),
            },
            first: first_name,
            full: at(full_1, full_2)?,
            dominant: at(eff_1, eff_2)?,
            energy_outside: energy
                .and_then(|e| pair.probe.as_ref().and_then(|probe| e.meters.get(probe)))
                .and_then(EnergyMeter::outside),
        })
    }
}

/// Hidden-activation energy meters, fed batch by batch through the model.
pub struct Energy {
    meters: HashMap<String, EnergyMeter>,
    batches: usize,
}

impl Energy {
    /// Runs `model` in eval mode on normalised `images` and measures every probed activation.
    pub fn observe(&mut self, model: &Model, images: &Tensor) -> Result<()> {
        let mut failure = None;
        let _logits = tch::no_grad(|| {
            model.forward_probed(images, &mut |name, hidden| {
                if let Some(meter) = self.meters.get_mut(name) {
                    if let Err(error) = meter.add(hidden) {
                        failure.get_or_insert(error);
                    }
                }
            })
        });
        self.batches += 1;
        failure.map_or(Ok(()), Err)
    }
}

/// SVDs batched by shape: one libtorch call per distinct `(rows, cols)`, vectors only where needed.
fn decompose(matrices: &Matrices) -> Result<Vec<Decomposition>> {
    let mut needs_vectors = vec![false; matrices.matrices.len()];
    for pair in &matrices.pairs {
        needs_vectors[pair.first] = true;
        if let Some(second) = pair.second {
            needs_vectors[second] = true;
        }
    }
    let mut groups: BTreeMap<(i64, i64, bool), Vec<usize>> = BTreeMap::new();
    for (index, m) in matrices.matrices.iter().enumerate() {
        if m.rows() == 0 || m.cols() == 0 {
            return Err(AnalyzeError::Empty { name: m.name.clone(), rows: m.rows(), cols: m.cols() });
        }
        groups.entry((m.rows(), m.cols(), needs_vectors[index])).or_default().push(index);
    }
    let mut out: Vec<Option<Decomposition>> = (0..matrices.matrices.len()).map(|_| None).collect();
    for ((_, _, vectors), indices) in groups {
        let stacked =
            Tensor::f_stack(&indices.iter().map(|&i| &matrices.matrices[i].weight).collect::<Vec<_>>(), 0)?;
        // `svd` rather than `linalg_svd`: tch always passes a `driver`, which CPU tensors reject.
        let (u, s, v) = stacked.f_svd(true, vectors)?;
        for (slot, &index) in indices.iter().enumerate() {
            let slot = slot as i64;
            out[index] = Some(Decomposition {
                sv: Vec::<f64>::try_from(&s.get(slot).to_kind(tch::Kind::Double))?,
                left: vectors.then(|| u.get(slot)),
                right: vectors.then(|| v.get(slot)),
            });
        }
    }
    Ok(out.into_iter().flatten().collect())
}
