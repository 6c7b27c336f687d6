//! Learning a kitchen's dishes from a few labelled photos, with no GPU: Tip-Adapter (arXiv
//! 2207.09519) and its trained variant Tip-Adapter-F.
//!
//! The cache: keys `K` are the support photos' L2-normalised image embeddings, values `V` their
//! classes (one-hot). For an image embedding `f` and the zero-shot class embeddings `W`:
//!
//! ```text
//! logits = logit_scale * f Wᵀ + alpha * exp(-beta * (1 - f Kᵀ)) V
//! ```
//!
//! `alpha` and `beta` (and whether the keys are fine-tuned, Tip-Adapter-F) are chosen by
//! cross-validation on the support set alone ([`cross_validate`]): leave-one-out when it is
//! small, stratified k-fold otherwise, over ranges wide enough that the photos alone decide
//! when the class names carry nothing. The nearest class mean (each class's mean support
//! embedding in place of `W`) is a candidate beside the cache, chosen by the same
//! cross-validation; it wins ties, being the simpler. When no choice beats zero-shot, `alpha`
//! is 0.
//!
//! An [`Adapter`] is stored as safetensors, bound to the checkpoint's fingerprint.

use crate::embeddings::{le_values, metadata};
use crate::fsutil::write_atomically;
use crate::labels::{LabelClass, LabelGroup, LabelSet};
use crate::preprocess::{Decoded, Fidelity, PreprocessConfig, Rect};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use image::RgbImage;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const FORMAT: &str = "foodclip-adapter/1";

/// The `alpha` values cross-validation tries (0 is zero-shot): from a nudge to the photos
/// deciding alone, against `logit_scale` 100.
pub const ALPHAS: [f32; 10] = [0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0];
/// The `beta` values cross-validation tries: how sharply affinity falls with distance.
pub const BETAS: [f32; 8] = [0.5, 1.0, 2.0, 3.5, 5.5, 8.0, 12.0, 20.0];
/// Up to this many support photos, cross-validation leaves one out; above, it is 5-fold.
pub const LEAVE_ONE_OUT_UP_TO: usize = 64;

/// How an adapter scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The zero-shot classes alone (adaptation did not beat them in cross-validation).
    ZeroShot,
    /// The training-free cache.
    TipAdapter,
    /// The cache with fine-tuned keys.
    TipAdapterF,
    /// Each class's mean support embedding in place of its text embedding (nearest class mean,
    /// the simplest few-shot classifier).
    Prototype,
    /// Class vectors trained on the support photos (a linear probe with normalised weights),
    /// started at the class means.
    LinearProbe,
}

/// Support photos: their normalised embeddings and classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Support {
    /// Row-major `n x dim`.
    pub features: Vec<f32>,
    /// Each row's class.
    pub classes: Vec<usize>,
    /// Embedding width.
    pub dim: usize,
}

impl Support {
    /// Rows.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

/// What cross-validation found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Support photos.
    pub photos: usize,
    /// Folds (`photos` for leave-one-out).
    pub folds: usize,
    /// Cross-validated top-1 of zero-shot.
    pub zero_shot_top1: f64,
    /// Cross-validated top-1 of the best training-free cache.
    pub cache_top1: f64,
    /// Cross-validated top-1 with fine-tuned keys, when tried (`--fit`).
    pub fitted_top1: Option<f64>,
    /// Cross-validated top-1 of the class means (absent in adapters made before it was tried).
    #[serde(default)]
    pub prototype_top1: Option<f64>,
    /// Cross-validated top-1 of the linear probe (absent in adapters made before it was tried).
    #[serde(default)]
    pub probe_top1: Option<f64>,
    /// The method chosen.
    pub method: Method,
    /// The chosen `alpha` (0 for zero-shot).
    pub alpha: f32,
    /// The chosen `beta`.
    pub beta: f32,
}

/// Each photo's fold: its own (leave-one-out) for small sets, else 5 folds stratified by class.
pub fn folds(classes: &[usize]) -> Vec<usize> {
    if classes.len() <= LEAVE_ONE_OUT_UP_TO {
        return (0..classes.len()).collect();
    }
    let mut seen: HashMap<usize, usize> = HashMap::new();
    classes
        .iter()
        .map(|c| {
            let k = seen.entry(*c).or_default();
            *k += 1;
            (*k - 1) % 5
        })
        .collect()
}

/// Row-major `a (n x d) · b (m x d)ᵀ`.
fn dots(a: &[f32], b: &[f32], d: usize) -> Result<Vec<Vec<f32>>> {
    let (n, m) = (a.len() / d.max(1), b.len() / d.max(1));
    let ta = Tensor::from_slice(a, (n, d), &Device::Cpu)?;
    let tb = Tensor::from_slice(b, (m, d), &Device::Cpu)?;
    Ok(ta.matmul(&tb.t()?)?.to_vec2::<f32>()?)
}

/// The index of the largest value.
fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, x) in xs.enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0
}

/// How [`cross_validate`] decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Choice {
    /// Search [`ALPHAS`] x [`BETAS`]; with `fit`, also try fine-tuned keys.
    Search {
        /// Try Tip-Adapter-F.
        fit: bool,
    },
    /// Use these values (only their cross-validated top-1 is measured).
    Fixed {
        /// The weight of the cache.
        alpha: f32,
        /// The sharpness of its affinity.
        beta: f32,
    },
}

/// What [`cross_validate`] chose.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The choice and how well each candidate did.
    pub report: Report,
    /// The cache keys (fine-tuned on the whole support set when that won).
    pub keys: Vec<f32>,
    /// The probe's class vectors, when it won.
    pub probe: Option<Vec<f32>>,
}

/// Chooses `alpha`, `beta` and (with `fit`) fine-tuned keys by cross-validation on `support`,
/// against the zero-shot class embeddings `text` (`classes x dim`) at `temperature`
/// (`exp(logit_scale)`).
pub fn cross_validate(
    support: &Support,
    text: &[f32],
    temperature: f32,
    choice: Choice,
) -> Result<Chosen> {
    let d = support.dim;
    let classes = text.len() / d;
    let n = support.len();
    if n < 2 {
        bail!("cross-validation needs at least 2 labelled photos, found {n}");
    }
    let fold = folds(&support.classes);
    let zs = dots(&support.features, text, d)?;
    let sim = dots(&support.features, &support.features, d)?;
    let top1 = |alpha: f32, cache: &[Vec<f64>]| -> f64 {
        let right = (0..n)
            .filter(|&i| {
                let logits = (0..classes)
                    .map(|c| temperature as f64 * zs[i][c] as f64 + alpha as f64 * cache[i][c]);
                argmax(logits) == support.classes[i]
            })
            .count();
        right as f64 / n as f64
    };
    let zero_shot = top1(0.0, &vec![vec![0.0; classes]; n]);
    let (fit, grid): (bool, Vec<(f32, f32)>) = match choice {
        Choice::Search { fit } => (
            fit,
            betas(&sim)
                .into_iter()
                .flat_map(|b| ALPHAS[1..].iter().map(move |&a| (a, b)))
                .collect(),
        ),
        Choice::Fixed { alpha, beta } => (false, vec![(alpha, beta)]),
    };
    let fixed = matches!(choice, Choice::Fixed { .. });
    let mut best = (
        if fixed { f64::NEG_INFINITY } else { zero_shot },
        0.0f32,
        grid[0].1,
    );
    let mut cache = (f32::NAN, Vec::new());
    for (alpha, beta) in grid {
        if cache.0 != beta {
            cache = (
                beta,
                cached_affinity(&sim, &support.classes, &fold, classes, beta),
            );
        }
        let t = top1(alpha, &cache.1);
        if t > best.0 {
            best = (t, alpha, beta);
        }
    }
    let (cache_top1, mut alpha, beta) = best;
    let mut report = Report {
        photos: n,
        folds: fold.iter().max().map_or(0, |m| m + 1),
        zero_shot_top1: zero_shot,
        cache_top1,
        fitted_top1: None,
        prototype_top1: None,
        probe_top1: None,
        method: if alpha > 0.0 {
            Method::TipAdapter
        } else {
            Method::ZeroShot
        },
        alpha,
        beta,
    };
    let mut keys = support.features.clone();
    let mut probe = None;
    if !fixed {
        // The class means, and the probe started at them, each photo scored against what the
        // other folds' photos made. Each wins only by doing better than everything simpler.
        let prototype = classes_top1(support, &fold, classes, |rows| {
            Ok(class_means(support, rows, text))
        })?;
        let probed = classes_top1(support, &fold, classes, |rows| {
            train_probe(support, rows, text, temperature)
        })?;
        report.prototype_top1 = Some(prototype);
        report.probe_top1 = Some(probed);
        if prototype > zero_shot && prototype >= cache_top1 {
            report.method = Method::Prototype;
            report.alpha = 0.0;
            alpha = 0.0;
        }
        if probed > zero_shot && probed > cache_top1 && probed > prototype {
            let all: Vec<usize> = (0..n).collect();
            probe = Some(train_probe(support, &all, text, temperature)?);
            report.method = Method::LinearProbe;
            report.alpha = 0.0;
            alpha = 0.0;
        }
    }
    if fit {
        let alpha_fit = if alpha > 0.0 { alpha } else { 10.0 };
        let fitted = fitted_top1(support, text, temperature, &fold, alpha_fit, beta)?;
        report.fitted_top1 = Some(fitted);
        let best = cache_top1
            .max(zero_shot)
            .max(report.prototype_top1.unwrap_or(0.0))
            .max(report.probe_top1.unwrap_or(0.0));
        if fitted > best {
            alpha = alpha_fit;
            keys = fine_tune(support, text, temperature, alpha, beta, None)?;
            report.method = Method::TipAdapterF;
            report.alpha = alpha;
            probe = None;
        }
    }
    Ok(Chosen {
        report,
        keys,
        probe,
    })
}

/// The `beta` values to try: [`BETAS`], and as many again relative to the support set's own
/// distances (`k / median(1 - cos)` over pairs of photos, for `k` from 0.5 to 64): how far
/// apart photos lie depends on the model, and a random-weight tower packs them into a corner
/// where a fixed grid is too flat to tell neighbours apart.
fn betas(sim: &[Vec<f32>]) -> Vec<f32> {
    let mut gaps: Vec<f32> = sim
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row[i + 1..].iter().map(|s| 1.0 - s))
        .filter(|g| *g > 0.0)
        .collect();
    let mut out = BETAS.to_vec();
    if gaps.is_empty() {
        return out;
    }
    let mid = gaps.len() / 2;
    let (_, median, _) = gaps.select_nth_unstable_by(mid, f32::total_cmp);
    let median = *median;
    out.extend(
        [0.5f32, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
            .iter()
            .map(|k| k / median)
            .filter(|b| b.is_finite() && !BETAS.contains(b)),
    );
    out
}

/// Cross-validated top-1 of a classifier made of class vectors: for each fold, `fit` makes the
/// vectors (`classes x dim`) from the other folds' photos, and each of the fold's photos is
/// scored against them. A class with no photo among the others cannot be chosen.
fn classes_top1(
    support: &Support,
    fold: &[usize],
    classes: usize,
    fit: impl Fn(&[usize]) -> Result<Vec<f32>>,
) -> Result<f64> {
    let d = support.dim;
    let folds = fold.iter().max().map_or(0, |m| m + 1);
    let mut right = 0;
    for k in 0..folds {
        let train: Vec<usize> = (0..support.len()).filter(|&i| fold[i] != k).collect();
        let mut present = vec![false; classes];
        train
            .iter()
            .for_each(|&i| present[support.classes[i]] = true);
        let vectors = fit(&train)?;
        for i in (0..support.len()).filter(|&i| fold[i] == k) {
            let f = &support.features[i * d..][..d];
            let scores = (0..classes).map(|c| {
                if !present[c] {
                    return f64::NEG_INFINITY;
                }
                let w = &vectors[c * d..][..d];
                w.iter().zip(f).map(|(a, b)| (a * b) as f64).sum()
            });
            if argmax(scores) == support.classes[i] {
                right += 1;
            }
        }
    }
    Ok(right as f64 / support.len() as f64)
}

/// Each class's normalised mean embedding over the support photos `rows`; a class with none
/// keeps its `text` embedding. `classes x dim`, row-major.
fn class_means(support: &Support, rows: &[usize], text: &[f32]) -> Vec<f32> {
    let d = support.dim;
    let mut sums = vec![vec![0f64; d]; text.len() / d];
    for &i in rows {
        let sum = &mut sums[support.classes[i]];
        for (s, v) in sum.iter_mut().zip(&support.features[i * d..][..d]) {
            *s += *v as f64;
        }
    }
    let mut out = text.to_vec();
    for (c, sum) in sums.iter().enumerate() {
        let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            for (o, v) in out[c * d..][..d].iter_mut().zip(sum) {
                *o = (v / norm) as f32;
            }
        }
    }
    out
}

/// Full-batch AdamW steps the linear probe takes.
const PROBE_STEPS: usize = 60;
/// The probe's pull back to where it started (squared distance, per class).
const PROBE_PULL: f64 = 0.1;

/// The linear probe on the support photos `rows`: one vector per class, scored as the zero-shot
/// classes are (`temperature * cos`), started at the class means ([`class_means`]) and trained
/// by AdamW (lr 0.01) on cross-entropy, with a pull back to the start that keeps few photos
/// from dragging the vectors far. Returns the normalised vectors, `classes x dim`.
fn train_probe(
    support: &Support,
    rows: &[usize],
    text: &[f32],
    temperature: f32,
) -> Result<Vec<f32>> {
    let d = support.dim;
    let classes = text.len() / d;
    let dev = Device::Cpu;
    let start = Tensor::from_vec(class_means(support, rows, text), (classes, d), &dev)?;
    let feats: Vec<f32> = rows
        .iter()
        .flat_map(|&i| support.features[i * d..][..d].to_vec())
        .collect();
    let f = Tensor::from_vec(feats, (rows.len(), d), &dev)?;
    let labels: Vec<u32> = rows.iter().map(|&i| support.classes[i] as u32).collect();
    let y = Tensor::from_vec(labels, rows.len(), &dev)?;
    let w = Var::from_tensor(&start)?;
    let unit =
        |w: &Tensor| -> Result<Tensor> { Ok(w.broadcast_div(&w.sqr()?.sum_keepdim(1)?.sqrt()?)?) };
    let mut opt = AdamW::new(
        vec![w.clone()],
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for _ in 0..PROBE_STEPS {
        let v = unit(w.as_tensor())?;
        let logits = (f.matmul(&v.t()?)? * temperature as f64)?;
        let pull = ((&v - &start)?.sqr()?.sum_all()? * (PROBE_PULL / classes as f64))?;
        let loss = (candle_nn::loss::cross_entropy(&logits, &y)? + pull)?;
        opt.backward_step(&loss)?;
    }
    Ok(unit(w.as_tensor())?.flatten_all()?.to_vec1::<f32>()?)
}

/// For each photo and class, the cache's affinity from the photos of the other folds:
/// `sum_j exp(-beta (1 - f_i · f_j)) [class_j = c]`, scaled by the class's photos over those
/// counted.
fn cached_affinity(
    sim: &[Vec<f32>],
    labels: &[usize],
    fold: &[usize],
    classes: usize,
    beta: f32,
) -> Vec<Vec<f64>> {
    let mut count = vec![0usize; classes];
    labels.iter().for_each(|&c| count[c] += 1);
    sim.iter()
        .enumerate()
        .map(|(i, row)| {
            let mut out = vec![0f64; classes];
            let mut kept = vec![0usize; classes];
            for (j, &s) in row.iter().enumerate() {
                if fold[j] != fold[i] {
                    out[labels[j]] += (-(beta as f64) * (1.0 - s as f64)).exp();
                    kept[labels[j]] += 1;
                }
            }
            // Each class's sum scaled to its full count: a fold holds some of a class's photos
            // out (with leave-one-out, always one of the photo's own class), and the cache the
            // adapter keeps has them all; unscaled, every vote leans against the right class.
            for c in 0..classes {
                if kept[c] > 0 {
                    out[c] *= count[c] as f64 / kept[c] as f64;
                }
            }
            out
        })
        .collect()
}

/// Cross-validated top-1 of Tip-Adapter-F: keys fine-tuned on each fold's training photos.
fn fitted_top1(
    support: &Support,
    text: &[f32],
    temperature: f32,
    fold: &[usize],
    alpha: f32,
    beta: f32,
) -> Result<f64> {
    let folds = fold.iter().max().map_or(0, |m| m + 1);
    let mut right = 0;
    for k in 0..folds {
        let train: Vec<usize> = (0..support.len()).filter(|&i| fold[i] != k).collect();
        let test: Vec<usize> = (0..support.len()).filter(|&i| fold[i] == k).collect();
        let keys = fine_tune(support, text, temperature, alpha, beta, Some(&train))?;
        let cache = Cache::new(
            &keys,
            &train
                .iter()
                .map(|&i| support.classes[i])
                .collect::<Vec<_>>(),
            support.dim,
            text.len() / support.dim,
            alpha,
            beta,
        )?;
        let feats: Vec<f32> = test
            .iter()
            .flat_map(|&i| support.features[i * support.dim..][..support.dim].to_vec())
            .collect();
        let f = Tensor::from_vec(feats, (test.len(), support.dim), &Device::Cpu)?;
        let logits = logits(&f, text, support.dim, temperature, Some(&cache))?;
        for (row, &i) in logits.iter().zip(&test) {
            if argmax(row.iter().map(|&v| v as f64)) == support.classes[i] {
                right += 1;
            }
        }
    }
    Ok(right as f64 / support.len() as f64)
}

/// Tip-Adapter-F: the cache keys of the photos `rows` (all when `None`) as a trainable layer,
/// AdamW (lr 0.001, 20 epochs, full batch) on cross-entropy over those photos. Returns the
/// keys, row-major.
fn fine_tune(
    support: &Support,
    text: &[f32],
    temperature: f32,
    alpha: f32,
    beta: f32,
    rows: Option<&[usize]>,
) -> Result<Vec<f32>> {
    let d = support.dim;
    let classes = text.len() / d;
    let all: Vec<usize> = (0..support.len()).collect();
    let rows = rows.unwrap_or(&all);
    let dev = Device::Cpu;
    let feats: Vec<f32> = rows
        .iter()
        .flat_map(|&i| support.features[i * d..][..d].to_vec())
        .collect();
    let labels: Vec<u32> = rows.iter().map(|&i| support.classes[i] as u32).collect();
    let f = Tensor::from_vec(feats, (rows.len(), d), &dev)?;
    let y = Tensor::from_vec(labels.clone(), rows.len(), &dev)?;
    let values = one_hot(&labels, classes)?;
    let w = Tensor::from_slice(text, (classes, d), &dev)?;
    let zero_shot = (f.matmul(&w.t()?)? * temperature as f64)?;
    let keys = Var::from_tensor(&f)?;
    let mut opt = AdamW::new(
        vec![keys.clone()],
        ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for _ in 0..20 {
        let affinity = ((f.matmul(&keys.as_tensor().t()?)? - 1.0)? * beta as f64)?.exp()?;
        let logits = (&zero_shot + (affinity.matmul(&values)? * alpha as f64)?)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        opt.backward_step(&loss)?;
    }
    Ok(keys.as_tensor().flatten_all()?.to_vec1::<f32>()?)
}

/// `(n, classes)` one-hot rows.
fn one_hot(labels: &[u32], classes: usize) -> Result<Tensor> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &c) in labels.iter().enumerate() {
        v[i * classes + c as usize] = 1.0;
    }
    Ok(Tensor::from_vec(v, (labels.len(), classes), &Device::Cpu)?)
}

/// The cache term ready to add to zero-shot logits.
#[derive(Debug, Clone)]
pub struct Cache {
    keys: Tensor,
    values: Tensor,
    alpha: f32,
    beta: f32,
}

impl Cache {
    /// A cache of `keys` (`n x dim`, row-major) with their `classes`.
    pub fn new(
        keys: &[f32],
        classes_of: &[usize],
        dim: usize,
        classes: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<Self> {
        let labels: Vec<u32> = classes_of.iter().map(|&c| c as u32).collect();
        Ok(Self {
            keys: Tensor::from_slice(keys, (classes_of.len(), dim), &Device::Cpu)?,
            values: one_hot(&labels, classes)?,
            alpha,
            beta,
        })
    }

    /// `alpha * exp(-beta (1 - f Kᵀ)) V` for image embeddings `f` `(b, dim)`: `(b, classes)`.
    pub fn logits(&self, f: &Tensor) -> Result<Tensor> {
        let f = f.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let affinity = ((f.matmul(&self.keys.t()?)? - 1.0)? * self.beta as f64)?.exp()?;
        Ok((affinity.matmul(&self.values)? * self.alpha as f64)?)
    }
}

/// `temperature * f Wᵀ` plus the cache term, as rows.
fn logits(
    f: &Tensor,
    text: &[f32],
    dim: usize,
    temperature: f32,
    cache: Option<&Cache>,
) -> Result<Vec<Vec<f32>>> {
    let w = Tensor::from_slice(text, (text.len() / dim, dim), &Device::Cpu)?;
    let mut l = (f.matmul(&w.t()?)? * temperature as f64)?;
    if let Some(c) = cache {
        l = (l + c.logits(f)?)?;
    }
    Ok(l.to_vec2::<f32>()?)
}

/// A class as an adapter stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredClass {
    names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<usize>,
}

/// An adapter: the classes, their zero-shot embeddings, the cache and the choices that made it.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Fingerprint of the checkpoint whose embeddings it holds.
    pub checkpoint: String,
    /// The classes (names, synonyms, groups).
    pub labels: LabelSet,
    /// `W`, `classes x dim`, row-major.
    pub text: Vec<f32>,
    /// The support photos' embeddings (kept to choose again with `--update`).
    pub support: Support,
    /// The cache keys `K`, `n x dim` (the support embeddings, or fine-tuned).
    pub keys: Vec<f32>,
    /// The linear probe's class vectors, `classes x dim` ([`Method::LinearProbe`] only).
    pub probe: Option<Vec<f32>>,
    /// What cross-validation chose, and how well each candidate did.
    pub report: Report,
}

impl Adapter {
    /// The class embeddings photos are scored against: the text embeddings, for
    /// [`Method::Prototype`] each class's normalised mean support embedding (a class without
    /// photos keeps its text embedding), for [`Method::LinearProbe`] the probe's vectors.
    /// `classes x dim`, row-major.
    pub fn class_embeddings(&self) -> Vec<f32> {
        match (self.report.method, &self.probe) {
            (Method::Prototype, _) => {
                let all: Vec<usize> = (0..self.support.len()).collect();
                class_means(&self.support, &all, &self.text)
            }
            (Method::LinearProbe, Some(probe)) => probe.clone(),
            _ => self.text.clone(),
        }
    }

    /// The cache term to add to the zero-shot logits (`None` for a zero-shot adapter).
    pub fn cache(&self) -> Result<Option<Cache>> {
        if matches!(
            self.report.method,
            Method::ZeroShot | Method::Prototype | Method::LinearProbe
        ) || self.report.alpha == 0.0
        {
            return Ok(None);
        }
        Cache::new(
            &self.keys,
            &self.support.classes,
            self.support.dim,
            self.labels.classes.len(),
            self.report.alpha,
            self.report.beta,
        )
        .map(Some)
    }

    /// Writes the adapter (safetensors: `text`, `features`, `keys`, `classes`, `probe` when
    /// there is one; metadata:
    /// `format`, `checkpoint`, `labels`, `report`), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let d = self.support.dim;
        let (text, features, keys) = (
            bytes(&self.text),
            bytes(&self.support.features),
            bytes(&self.keys),
        );
        let classes: Vec<u8> = self
            .support
            .classes
            .iter()
            .flat_map(|&c| (c as u32).to_le_bytes())
            .collect();
        let n = self.support.len();
        let probe = self.probe.as_deref().map(bytes);
        let view = |dtype, shape: Vec<usize>, data| {
            TensorView::new(dtype, shape, data)
                .map_err(|e| anyhow!("cannot store the adapter: {e}"))
        };
        let mut tensors = vec![
            (
                "text",
                view(Dtype::F32, vec![self.text.len() / d, d], &text)?,
            ),
            ("features", view(Dtype::F32, vec![n, d], &features)?),
            ("keys", view(Dtype::F32, vec![n, d], &keys)?),
            ("classes", view(Dtype::U32, vec![n], &classes)?),
        ];
        if let Some(probe) = &probe {
            tensors.push((
                "probe",
                view(Dtype::F32, vec![probe.len() / 4 / d, d], probe)?,
            ));
        }
        let labels = serde_json::json!({
            "classes": self.labels.classes.iter().map(|c| StoredClass { names: c.names.clone(), group: c.group }).collect::<Vec<_>>(),
            "groups": self.labels.groups.iter().map(|g| g.names.clone()).collect::<Vec<_>>(),
        });
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("checkpoint".to_string(), self.checkpoint.clone()),
            ("labels".to_string(), labels.to_string()),
            ("report".to_string(), serde_json::to_string(&self.report)?),
        ]);
        let file = safetensors::tensor::serialize(tensors, Some(metadata))
            .map_err(|e| anyhow!("cannot store the adapter: {e}"))?;
        write_atomically(path, &file).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads an adapter written by [`Adapter::save`]; anything else is a one-line error.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&bytes, path).with_context(|| {
            format!(
                "{} is not a foodclip adapter (make one with foodclip adapt)",
                path.display()
            )
        })
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let meta = metadata(bytes, FORMAT)?;
        let field = |k: &str| {
            meta.get(k)
                .ok_or_else(|| anyhow!("no {k:?} in its metadata"))
        };
        #[derive(Deserialize)]
        struct Labels {
            classes: Vec<StoredClass>,
            groups: Vec<Vec<String>>,
        }
        let labels: Labels = serde_json::from_str(field("labels")?).context("unreadable labels")?;
        let report: Report = serde_json::from_str(field("report")?).context("unreadable report")?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{e}"))?;
        let f32s = |name: &str| -> Result<(Vec<f32>, Vec<usize>)> {
            let t = tensors.tensor(name).map_err(|e| anyhow!("{name}: {e}"))?;
            if t.dtype() != Dtype::F32 || t.shape().len() != 2 {
                bail!("{name} is not an f32 matrix");
            }
            Ok((le_values(t.data(), f32::from_le_bytes), t.shape().to_vec()))
        };
        let (text, ts) = f32s("text")?;
        let (features, fs) = f32s("features")?;
        let (keys, ks) = f32s("keys")?;
        let probe = match tensors.tensor("probe") {
            Ok(_) => Some(f32s("probe")?),
            Err(_) => None,
        };
        let c = tensors
            .tensor("classes")
            .map_err(|e| anyhow!("classes: {e}"))?;
        if c.dtype() != Dtype::U32 {
            bail!("classes are not u32");
        }
        let classes: Vec<usize> = le_values(c.data(), u32::from_le_bytes)
            .into_iter()
            .map(|c| c as usize)
            .collect();
        let n_classes = labels.classes.len();
        let dim = ts[1];
        if ts[0] != n_classes
            || fs != ks
            || fs[0] != classes.len()
            || (fs[1] != dim && !classes.is_empty())
            || classes.iter().any(|&c| c >= n_classes)
            || labels
                .classes
                .iter()
                .any(|c| c.names.is_empty() || c.group.is_some_and(|g| g >= labels.groups.len()))
            || labels.groups.iter().any(Vec::is_empty)
            || !(report.alpha.is_finite() && report.beta.is_finite())
            || probe.as_ref().is_some_and(|(_, shape)| shape != &ts)
            || (report.method == Method::LinearProbe) != probe.is_some()
        {
            bail!("its tensors and classes do not fit together");
        }
        Ok(Self {
            checkpoint: field("checkpoint")?.clone(),
            labels: LabelSet {
                path: path.to_path_buf(),
                classes: labels
                    .classes
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| LabelClass {
                        names: c.names,
                        line: i + 1,
                        group: c.group,
                    })
                    .collect(),
                groups: labels
                    .groups
                    .into_iter()
                    .map(|names| LabelGroup { names, line: 0 })
                    .collect(),
            },
            text,
            support: Support {
                features,
                classes,
                dim,
            },
            keys,
            probe: probe.map(|(v, _)| v),
            report,
        })
    }
}

/// `n` augmented views of `area` of a decoded photo, as the model sees them: each a random
/// resized crop (scale 0.5 to 1 of the area, aspect 3/4 to 4/3) flipped left-right half the
/// time, drawn from `seed` so that a run is reproducible.
pub fn views(
    pre: &PreprocessConfig,
    photo: &Decoded,
    area: Rect,
    n: usize,
    seed: u64,
    fidelity: Fidelity,
) -> Result<Vec<RgbImage>> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // SplitMix64.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (w, h) = area.size();
    (0..n)
        .map(|_| {
            let scale = 0.5 + 0.5 * next();
            let ratio = ((0.75f64).ln() + next() * ((4.0f64 / 3.0).ln() - (0.75f64).ln())).exp();
            let cw = ((w as f64 * h as f64 * scale * ratio).sqrt().round() as u32).clamp(1, w);
            let ch = ((w as f64 * h as f64 * scale / ratio).sqrt().round() as u32).clamp(1, h);
            let x = area.x1 + ((w - cw) as f64 * next()) as u32;
            let y = area.y1 + ((h - ch) as f64 * next()) as u32;
            let crop = Rect {
                x1: x,
                y1: y,
                x2: x + cw,
                y2: y + ch,
            };
            let mut img = pre.prepare_area(photo, crop, fidelity)?;
            if next() < 0.5 {
                image::imageops::flip_horizontal_in_place(&mut img);
            }
            Ok(img)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two well-separated clusters whose text embeddings say nothing (all equal).
    fn clusters(per_class: usize) -> (Support, Vec<f32>) {
        let d = 4;
        let mut features = Vec::new();
        let mut classes = Vec::new();
        for c in 0..2 {
            for i in 0..per_class {
                let e = 0.05 * (i as f32 - per_class as f32 / 2.0) / per_class as f32;
                let mut v = if c == 0 {
                    vec![1.0, e, 0.3, 0.0]
                } else {
                    vec![e, 1.0, 0.3, 0.0]
                };
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= n);
                features.extend(v);
                classes.push(c);
            }
        }
        let text = vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        (
            Support {
                features,
                classes,
                dim: d,
            },
            text,
        )
    }

    #[test]
    fn the_photos_decide_when_the_names_carry_nothing() {
        let (support, text) = clusters(5);
        let Chosen { report, keys, .. } =
            cross_validate(&support, &text, 100.0, Choice::Search { fit: false }).unwrap();
        assert_eq!(report.folds, 10, "leave-one-out");
        assert!(report.zero_shot_top1 <= 0.5 + 1e-9);
        assert_eq!(report.cache_top1, 1.0);
        // The class means do as well as the cache, and are the simpler: they win the tie.
        assert_eq!(report.prototype_top1, Some(1.0));
        assert_eq!(report.method, Method::Prototype);
        assert_eq!(report.alpha, 0.0);
        assert_eq!(keys, support.features);
    }

    /// A held-out photo: its embedding and class.
    type Held = (Vec<f32>, usize);

    /// A few-shot set whose class names say nothing (random text embeddings): `classes`
    /// classes, each a centre plus noise, 4 support and 8 held-out photos per class. With
    /// `concentrated`, every embedding lies near one common direction, as a random-weight
    /// tower's do, and the classes differ by little.
    fn few_shot(concentrated: bool, seed: u64) -> (Support, Vec<Held>, Vec<f32>) {
        let (d, classes) = (32, 6);
        let mut state = seed;
        let mut normal = move || {
            // Box-Muller on a 64-bit LCG.
            let mut uniform = || {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        };
        let unit = |v: Vec<f32>| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        let common = unit((0..d).map(|_| normal()).collect());
        let centres: Vec<Vec<f32>> = (0..classes)
            .map(|_| unit((0..d).map(|_| normal()).collect()))
            .collect();
        let (offset, noise) = if concentrated {
            (0.12, 0.035)
        } else {
            (1.0, 0.3)
        };
        let mut photo = |c: usize| {
            unit(
                (0..d)
                    .map(|k| {
                        let base = if concentrated { common[k] } else { 0.0 };
                        base + offset * centres[c][k] + noise * normal()
                    })
                    .collect(),
            )
        };
        let mut support = Support {
            features: Vec::new(),
            classes: Vec::new(),
            dim: d,
        };
        let mut held = Vec::new();
        for c in 0..classes {
            for _ in 0..4 {
                support.features.extend(photo(c));
                support.classes.push(c);
            }
            for _ in 0..8 {
                held.push((photo(c), c));
            }
        }
        let text: Vec<f32> = (0..classes)
            .flat_map(|_| unit((0..d).map(|_| normal()).collect()))
            .collect();
        (support, held, text)
    }

    /// Top-1 on `held` of scoring against `classes` (row-major) plus `cache`.
    fn held_out_top1(held: &[Held], classes: &[f32], cache: Option<&Cache>) -> f64 {
        let d = held[0].0.len();
        let right = held
            .iter()
            .filter(|(f, c)| {
                let t = Tensor::from_slice(f, (1, d), &Device::Cpu).unwrap();
                let row = logits(&t, classes, d, 100.0, cache).unwrap().remove(0);
                argmax(row.iter().map(|&v| v as f64)) == *c
            })
            .count();
        right as f64 / held.len() as f64
    }

    #[test]
    fn the_chosen_adapter_keeps_up_with_the_nearest_class_mean() {
        for concentrated in [true, false] {
            for seed in [1, 2, 3] {
                let (support, held, text) = few_shot(concentrated, seed);
                let chosen =
                    cross_validate(&support, &text, 100.0, Choice::Search { fit: false }).unwrap();
                let report = chosen.report.clone();
                let classes = text.len() / support.dim;
                let adapter = Adapter {
                    checkpoint: "blake3:x".into(),
                    labels: LabelSet {
                        path: "a.safetensors".into(),
                        classes: (0..classes)
                            .map(|c| LabelClass {
                                names: vec![format!("dish {c}")],
                                line: c + 1,
                                group: None,
                            })
                            .collect(),
                        groups: Vec::new(),
                    },
                    text: text.clone(),
                    support: support.clone(),
                    keys: chosen.keys,
                    probe: chosen.probe,
                    report: chosen.report,
                };
                let chosen = held_out_top1(
                    &held,
                    &adapter.class_embeddings(),
                    adapter.cache().unwrap().as_ref(),
                );
                // The reference: each held-out photo's nearest class mean.
                let mut means = vec![0f32; text.len()];
                for (i, &c) in support.classes.iter().enumerate() {
                    for k in 0..support.dim {
                        means[c * support.dim + k] += support.features[i * support.dim + k];
                    }
                }
                let ncm = held_out_top1(&held, &means, None);
                let zero_shot = held_out_top1(&held, &text, None);
                let what = format!("concentrated {concentrated}, seed {seed}: {report:?}");
                assert!(ncm > 0.6, "{what}: NCM only {ncm}");
                assert!(chosen >= 0.95 * ncm, "{what}: {chosen} against NCM {ncm}");
                assert!(
                    chosen >= zero_shot,
                    "{what}: {chosen} below zero-shot {zero_shot}"
                );
            }
        }
    }

    /// Two classes a little apart along x, each photo also moved far along the shared nuisance
    /// direction (1, 1, 0): the class means' direction (x) picks up the nuisance, a trained
    /// vector can turn away from it (x - y).
    fn skewed(per_class: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut state = seed;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) as f32 - 0.5
        };
        let mut features = Vec::new();
        let mut classes = Vec::new();
        for i in 0..2 * per_class {
            let c = i % 2;
            let side = if c == 0 { -0.04 } else { 0.04 };
            let u = 0.4 * uniform();
            let v = [
                side + u + 0.004 * uniform(),
                u + 0.004 * uniform(),
                1.0 + 0.004 * uniform(),
            ];
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            features.extend(v.iter().map(|x| x / n));
            classes.push(c);
        }
        (features, classes)
    }

    #[test]
    fn the_probe_learns_what_the_class_means_miss() {
        let (features, classes) = skewed(12, 7);
        let support = Support {
            features,
            classes,
            dim: 3,
        };
        // Names that say nothing.
        let text = vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let chosen = cross_validate(&support, &text, 100.0, Choice::Search { fit: false }).unwrap();
        let r = &chosen.report;
        assert_eq!(r.method, Method::LinearProbe, "{r:?}");
        let probe = chosen.probe.clone().expect("the probe's vectors");
        let (held, held_classes) = skewed(100, 8);
        let held: Vec<Held> = held
            .chunks(3)
            .map(|f| f.to_vec())
            .zip(held_classes)
            .collect();
        let all: Vec<usize> = (0..support.len()).collect();
        let means = held_out_top1(&held, &class_means(&support, &all, &text), None);
        let probed = held_out_top1(&held, &probe, None);
        assert!(
            probed >= 0.9 && probed > means + 0.15,
            "probe {probed}, class means {means}, {r:?}"
        );
    }

    #[test]
    fn zero_shot_is_kept_when_the_photos_do_not_help() {
        // Text embeddings that separate the classes perfectly, photos that do not.
        let d = 2;
        let features = vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let support = Support {
            features,
            classes: vec![0, 1, 0, 1],
            dim: d,
        };
        let text = vec![1.0, 0.0, 0.0, 1.0];
        let report = cross_validate(&support, &text, 100.0, Choice::Search { fit: true })
            .unwrap()
            .report;
        let fixed = Choice::Fixed {
            alpha: 5.0,
            beta: 1.0,
        };
        let report_fixed = cross_validate(&support, &text, 100.0, fixed)
            .unwrap()
            .report;
        assert_eq!((report_fixed.alpha, report_fixed.beta), (5.0, 1.0));
        assert_eq!(report_fixed.method, Method::TipAdapter);
        assert_eq!(report.zero_shot_top1, 0.5);
        assert_eq!(report.method, Method::ZeroShot);
        assert_eq!(report.alpha, 0.0);
    }

    #[test]
    fn folds_are_leave_one_out_when_small_and_stratified_otherwise() {
        assert_eq!(folds(&[0, 0, 1]), vec![0, 1, 2]);
        let classes: Vec<usize> = (0..100).map(|i| i % 4).collect();
        let f = folds(&classes);
        assert_eq!(f.iter().max(), Some(&4));
        for k in 0..5 {
            let in_fold: Vec<usize> = (0..100)
                .filter(|&i| f[i] == k)
                .map(|i| classes[i])
                .collect();
            assert_eq!(in_fold.len(), 20);
            assert!((0..4).all(|c| in_fold.iter().filter(|&&x| x == c).count() == 5));
        }
    }

    #[test]
    fn fine_tuning_runs_and_saving_round_trips() {
        let (support, text) = clusters(3);
        let Chosen {
            report,
            keys,
            probe,
        } = cross_validate(&support, &text, 100.0, Choice::Search { fit: true }).unwrap();
        assert!(report.fitted_top1.is_some());
        let adapter = Adapter {
            checkpoint: "blake3:x".into(),
            labels: LabelSet {
                path: "a.safetensors".into(),
                classes: vec![
                    LabelClass {
                        names: vec!["밥".into(), "rice".into()],
                        line: 1,
                        group: None,
                    },
                    LabelClass {
                        names: vec!["국".into()],
                        line: 2,
                        group: None,
                    },
                ],
                groups: Vec::new(),
            },
            text,
            support,
            keys,
            probe,
            report,
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.safetensors");
        adapter.save(&file).unwrap();
        let back = Adapter::load(&file).unwrap();
        assert_eq!(back.support, adapter.support);
        assert_eq!(back.report, adapter.report);
        assert_eq!(
            back.labels.classes[0].names,
            adapter.labels.classes[0].names
        );
        std::fs::write(&file, b"not an adapter").unwrap();
        let e = format!("{:#}", Adapter::load(&file).unwrap_err());
        assert!(
            e.contains("is not a foodclip adapter") && !e.contains('\n'),
            "{e}"
        );
    }
}
