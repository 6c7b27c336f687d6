//! Zero-shot classification: class embeddings from prompts, image embeddings from photos, and
//! their cosine similarities turned into ranked predictions.

use crate::adapter::{Adapter, Cache};
use crate::cache::{Lookup, TextCache};
use crate::checkpoint::Checkpoint;
use crate::labels::{LabelSet, Templates};
use crate::model::encoder::l2_normalize;
use crate::model::Scoring;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use std::collections::HashMap;

/// Prompts are encoded this many at a time.
const TEXT_BATCH: usize = 64;

/// One class's result for one photo.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The class's index in the label file's classes.
    pub class: usize,
    /// The class's display name.
    pub label: String,
    /// The display name of the class's group, when it has one.
    pub group: Option<String>,
    /// Cosine similarity between the photo and the class embedding.
    pub score: f32,
    /// The probability from `exp(logit_scale) * score` (plus an adapter's cache term): a softmax
    /// over all classes for CLIP, the class's own sigmoid (with `logit_bias`) for SigLIP.
    pub prob: f32,
}

/// How the prompt embeddings of one call were obtained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptStats {
    /// Distinct prompts read from the cache.
    pub cached: usize,
    /// Distinct prompts run through the text encoder.
    pub encoded: usize,
    /// Cache entries found damaged (recomputed and replaced).
    pub corrupt: usize,
    /// The first error writing the cache, if any (the embeddings are still right).
    pub write_error: Option<String>,
}

/// Embeds prompts: L2-normalised text embeddings `(n, dim)`, one row per prompt. Prompts longer
/// than the context are truncated, and `on_truncate` hears of each. With a `cache`, prompts
/// found there skip the text encoder and the others are stored after encoding.
pub fn embed_prompts(
    ckpt: &Checkpoint,
    prompts: &[String],
    cache: Option<&TextCache>,
    mut on_truncate: impl FnMut(usize),
) -> Result<(Tensor, PromptStats)> {
    let mut stats = PromptStats::default();
    let dim = ckpt.config.projection_dim;
    // Each distinct prompt once (by its first index): its embedding, when cached, and its tokens.
    let mut distinct: HashMap<&str, usize> = HashMap::new();
    let mut first: Vec<usize> = Vec::new();
    let mut rows: Vec<Option<Vec<f32>>> = Vec::new();
    let mut ids: Vec<Vec<u32>> = Vec::new();
    let mut slot = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let tokens = ckpt.tokenizer.encode(p)?;
        if tokens.truncated {
            on_truncate(i);
        }
        let s = *distinct.entry(p).or_insert(rows.len());
        if s == rows.len() {
            let found = match cache.map(|c| c.get(p)) {
                Some(Lookup::Hit(v)) if v.len() == dim => Some(v),
                Some(Lookup::Hit(_) | Lookup::Corrupt) => {
                    stats.corrupt += 1;
                    None
                }
                Some(Lookup::Miss) | None => None,
            };
            rows.push(found);
            ids.push(tokens.ids);
            first.push(i);
        }
        slot.push(s);
    }
    let missing: Vec<usize> = (0..rows.len()).filter(|&s| rows[s].is_none()).collect();
    stats.cached = rows.len() - missing.len();
    stats.encoded = missing.len();
    for chunk in batches_by_length(missing, &ids) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&s| std::mem::take(&mut ids[s])).collect();
        let embedded = l2_normalize(&ckpt.model.text_features(&batch)?)?.to_vec2::<f32>()?;
        for (&s, row) in chunk.iter().zip(embedded) {
            if let Some(cache) = cache {
                if let Err(e) = cache.put(&prompts[first[s]], &row) {
                    stats.write_error.get_or_insert_with(|| {
                        format!(
                            "cannot write the prompt cache {}: {e}",
                            cache.dir().display()
                        )
                    });
                }
            }
            rows[s] = Some(row);
        }
    }
    let flat: Vec<f32> = slot
        .iter()
        .flat_map(|&s| rows[s].as_deref().expect("every prompt embedded"))
        .copied()
        .collect();
    let embeddings = Tensor::from_vec(flat, (prompts.len(), dim), &ckpt.device)
        .context("the text tower's output does not match projection_dim")?;
    Ok((embeddings, stats))
}

/// `prompts` (indices into `ids`) in text-encoder batches of at most [`TEXT_BATCH`], shortest
/// first: a batch is padded to its longest prompt, so batches of similar lengths encode fewer
/// tokens. (In file order the 1,293 prompts of `labels/korean.txt` with the Korean templates
/// were padded to 41,426 tokens; by length, 23,547, against 22,747 of their own: a first run
/// of that list went from 8.9-9.2 s to 5.6 s on a random ViT-B/32.)
fn batches_by_length(mut prompts: Vec<usize>, ids: &[Vec<u32>]) -> Vec<Vec<usize>> {
    prompts.sort_by_key(|&s| ids[s].len());
    prompts.chunks(TEXT_BATCH).map(<[usize]>::to_vec).collect()
}

/// One group's result for one photo.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupScore {
    /// The group's display name.
    pub group: String,
    /// The sum of its classes' probabilities.
    pub prob: f32,
}

/// All classes ranked for one photo, and its groups when the label file has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Every class, best first.
    pub predictions: Vec<Prediction>,
    /// Every group, most probable first; empty without groups.
    pub groups: Vec<GroupScore>,
    /// The answer under an [`OpenSet`] rule: the best class, or [`UNKNOWN`].
    pub decision: Option<String>,
}

/// The answer for a dish that is not in the list: what an [`OpenSet`] rule answers, and the
/// label (and folder name) that marks such photos in a data set.
pub const UNKNOWN: &str = "unknown";

/// When to answer "unknown": the best class is not convincing enough.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpenSet {
    /// Lowest top-1 probability that still names a class.
    pub threshold: Option<f32>,
    /// Lowest gap between the top-1 and top-2 probabilities that still names a class.
    pub min_margin: Option<f32>,
}

impl OpenSet {
    /// The rule of a top-1 probability `threshold` and a top-2 `min_margin`, each a probability
    /// in [0, 1]; the error names the value out of range.
    ///
    /// ```
    /// use foodclip::classify::OpenSet;
    /// assert!(OpenSet::new(Some(0.4), None).is_ok());
    /// assert!(OpenSet::new(None, Some(1.5)).unwrap_err().starts_with("min margin"));
    /// ```
    pub fn new(threshold: Option<f32>, min_margin: Option<f32>) -> Result<Self, String> {
        for (name, v) in [("threshold", threshold), ("min margin", min_margin)] {
            if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return Err(format!("{name} is a probability: give a value from 0 to 1"));
            }
        }
        Ok(Self {
            threshold,
            min_margin,
        })
    }

    /// Whether any rule is set.
    pub fn is_active(&self) -> bool {
        self.threshold.is_some() || self.min_margin.is_some()
    }

    /// Whether `predictions` (best first) name a class rather than "unknown".
    ///
    /// ```
    /// use foodclip::classify::OpenSet;
    /// let rule = OpenSet { threshold: Some(0.5), min_margin: Some(0.2) };
    /// assert!(rule.accepts(&[0.6, 0.3]));
    /// assert!(!rule.accepts(&[0.45, 0.1]));  // not probable enough
    /// assert!(!rule.accepts(&[0.55, 0.4]));  // too close to the runner-up
    /// ```
    pub fn accepts(&self, probs: &[f32]) -> bool {
        let top = probs.first().copied().unwrap_or(0.0);
        let second = probs.get(1).copied().unwrap_or(0.0);
        self.threshold.is_none_or(|t| top >= t) && self.min_margin.is_none_or(|m| top - second >= m)
    }

    /// Sets `ranking.decision` (before the predictions are cut to the top k).
    pub fn decide(&self, ranking: &mut Ranking) {
        if !self.is_active() {
            return;
        }
        let probs: Vec<f32> = ranking.predictions.iter().take(2).map(|p| p.prob).collect();
        ranking.decision = Some(if self.accepts(&probs) {
            ranking.predictions[0].label.clone()
        } else {
            UNKNOWN.to_string()
        });
    }
}

/// What a record shows of a ranking: the open-set answer, the best `top_k` classes (0 for
/// all), and group probabilities or not.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shown {
    /// When to answer "unknown".
    pub open_set: OpenSet,
    /// Predictions kept; 0 keeps all.
    pub top_k: usize,
    /// Keep the group probabilities.
    pub group_scores: bool,
}

impl Shown {
    /// Decides, then cuts `ranking` to what is shown.
    pub fn apply(&self, ranking: &mut Ranking) {
        self.open_set.decide(ranking);
        if self.top_k > 0 {
            ranking.predictions.truncate(self.top_k);
        }
        if !self.group_scores {
            ranking.groups.clear();
        }
    }
}

/// Class embeddings ready to score photos against.
pub struct Classifier {
    labels: Vec<String>,
    /// Each class's index into `groups`.
    class_groups: Vec<Option<usize>>,
    /// Group display names.
    groups: Vec<String>,
    /// `(classes, dim)`, each row unit length.
    embeddings: Tensor,
    /// How similarities become probabilities.
    scoring: Scoring,
    stats: PromptStats,
    /// An adapter's cache term, added to the logits (`prob`); `score` stays zero-shot.
    cache: Option<Cache>,
}

impl Classifier {
    /// Embeds every class of `labels`: each class is the mean of the normalised embeddings of all
    /// its (name x template) prompts, normalised again. Prompt embeddings come from `cache` when
    /// there and are stored in it otherwise. Warnings (truncated prompts) go to `warn`.
    pub fn new(
        ckpt: &Checkpoint,
        labels: &LabelSet,
        templates: &Templates,
        cache: Option<&TextCache>,
        mut warn: impl FnMut(String),
    ) -> Result<Self> {
        let mut prompts = Vec::new();
        let mut owner = Vec::new();
        for (c, class) in labels.classes.iter().enumerate() {
            for name in &class.names {
                for p in templates.prompts(name) {
                    prompts.push(p);
                    owner.push(c);
                }
            }
        }
        let context = ckpt.tokenizer.max_len();
        let (text, stats) = embed_prompts(ckpt, &prompts, cache, |i| {
            let class = &labels.classes[owner[i]];
            warn(format!(
                "{}:{}: prompt {:?} is longer than the model's {context}-token context; truncated",
                labels.path.display(),
                class.line,
                prompts[i]
            ))
        })?;
        let text = text.to_vec2::<f32>()?;
        let dim = text.first().map_or(0, Vec::len);
        let mut sums = vec![vec![0f32; dim]; labels.classes.len()];
        let mut counts = vec![0usize; labels.classes.len()];
        for (row, &c) in text.iter().zip(&owner) {
            sums[c].iter_mut().zip(row).for_each(|(s, v)| *s += v);
            counts[c] += 1;
        }
        let flat: Vec<f32> = sums
            .into_iter()
            .zip(counts)
            .flat_map(|(s, n)| s.into_iter().map(move |v| v / n as f32))
            .collect();
        let means = Tensor::from_vec(flat, (labels.classes.len(), dim), &ckpt.device)?;
        Ok(Self::of(
            labels,
            l2_normalize(&means)?,
            ckpt.model.scoring(),
            stats,
            None,
        ))
    }

    /// A classifier of `labels`' classes with these class `embeddings`.
    fn of(
        labels: &LabelSet,
        embeddings: Tensor,
        scoring: Scoring,
        stats: PromptStats,
        cache: Option<Cache>,
    ) -> Self {
        let display = |names: &[String]| names[0].clone();
        Self {
            labels: labels.classes.iter().map(|c| display(&c.names)).collect(),
            class_groups: labels.classes.iter().map(|c| c.group).collect(),
            groups: labels.groups.iter().map(|g| display(&g.names)).collect(),
            embeddings,
            scoring,
            stats,
            cache,
        }
    }

    /// Scores with an adapter: its classes, their zero-shot embeddings as it stores them, and
    /// its cache (see [`crate::adapter`]), scored as the model scores (`ckpt.model.scoring()`).
    pub fn from_adapter(adapter: &Adapter, scoring: Scoring, device: &Device) -> Result<Self> {
        let labels = &adapter.labels;
        let (classes, dim) = (labels.classes.len(), adapter.support.dim);
        let embeddings = Tensor::from_vec(adapter.class_embeddings(), (classes, dim), device)?;
        let stats = PromptStats::default();
        Ok(Self::of(
            labels,
            embeddings,
            scoring,
            stats,
            adapter.cache()?,
        ))
    }

    /// The class embeddings, `(classes, dim)`.
    pub fn embeddings(&self) -> &Tensor {
        &self.embeddings
    }

    /// How the prompt embeddings were obtained (cache hits and misses).
    pub fn prompt_stats(&self) -> &PromptStats {
        &self.stats
    }

    /// Ranks all classes for each row of `images` (normalised image embeddings).
    pub fn predict(&self, images: &Tensor) -> Result<Vec<Ranking>> {
        let scores = images.matmul(&self.embeddings.t()?)?.to_vec2::<f32>()?;
        let extra = match &self.cache {
            Some(cache) => cache.logits(images)?.to_vec2::<f32>()?,
            None => Vec::new(),
        };
        Ok(scores
            .iter()
            .enumerate()
            .map(|(i, row)| self.rank(row, extra.get(i).map(Vec::as_slice)))
            .collect())
    }

    /// The ranking of one photo's `scores`, with an adapter's `extra` logits.
    fn rank(&self, scores: &[f32], extra: Option<&[f32]>) -> Ranking {
        let logits: Vec<f64> = scores
            .iter()
            .enumerate()
            .map(|(c, &s)| {
                self.scoring.temperature() as f64 * s as f64 + extra.map_or(0.0, |e| e[c] as f64)
            })
            .collect();
        let probs: Vec<f64> = match self.scoring {
            Scoring::Softmax { .. } => {
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                exps.iter().map(|e| e / total).collect()
            }
            Scoring::Sigmoid { bias, .. } => logits
                .iter()
                .map(|l| 1.0 / (1.0 + (-(l + bias as f64)).exp()))
                .collect(),
        };
        let mut predictions: Vec<Prediction> = self
            .labels
            .iter()
            .zip(scores)
            .zip(&probs)
            .enumerate()
            .map(|(class, ((label, &score), p))| Prediction {
                class,
                label: label.clone(),
                group: self.class_groups[class].map(|g| self.groups[g].clone()),
                score,
                prob: *p as f32,
            })
            .collect();
        // Best first by logit: by score for zero-shot, by the adapted logits with an adapter.
        predictions.sort_by(|a, b| logits[b.class].total_cmp(&logits[a.class]));
        // A group's probability: its classes' sum under a softmax (they share one total); under
        // a sigmoid, where each class stands alone, its likeliest class.
        let mut group_probs = vec![0f64; self.groups.len()];
        for (g, p) in self.class_groups.iter().zip(&probs) {
            if let Some(g) = g {
                group_probs[*g] = match self.scoring {
                    Scoring::Softmax { .. } => group_probs[*g] + p,
                    Scoring::Sigmoid { .. } => group_probs[*g].max(*p),
                };
            }
        }
        let mut groups: Vec<GroupScore> = self
            .groups
            .iter()
            .zip(group_probs)
            .map(|(g, p)| GroupScore {
                group: g.to_string(),
                prob: p as f32,
            })
            .collect();
        groups.sort_by(|a, b| b.prob.total_cmp(&a.prob));
        Ranking {
            predictions,
            groups,
            decision: None,
        }
    }
}

/// L2-normalised image embeddings `(n, dim)` for prepared pictures.
pub fn embed_pictures(ckpt: &Checkpoint, pictures: &[RgbImage]) -> Result<Tensor> {
    let size = ckpt.model.image_size();
    let mut data = Vec::with_capacity(pictures.len() * 3 * size * size);
    for p in pictures {
        data.extend(ckpt.preprocess.to_chw(p));
    }
    let pixels = Tensor::from_vec(data, (pictures.len(), 3, size, size), &ckpt.device)
        .context("prepared pictures do not match the model's input size")?;
    l2_normalize(&ckpt.model.image_features(&pixels)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_batches_go_shortest_first_and_keep_every_prompt() {
        let ids: Vec<Vec<u32>> = (0..150).map(|i| vec![0; (i * 37) % 70 + 1]).collect();
        let batches = batches_by_length((0..150).rev().collect(), &ids);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [TEXT_BATCH, TEXT_BATCH, 150 - 2 * TEXT_BATCH]);
        let order = batches.concat();
        assert!(order.windows(2).all(|w| ids[w[0]].len() <= ids[w[1]].len()));
        let mut every = order.clone();
        every.sort_unstable();
        assert_eq!(every, (0..150).collect::<Vec<_>>());
    }
}
