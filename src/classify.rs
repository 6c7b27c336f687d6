//! Zero-shot classification: class embeddings from prompts, image embeddings from photos, and
//! their cosine similarities turned into ranked predictions.

use crate::checkpoint::Checkpoint;
use crate::labels::{LabelSet, Templates};
use crate::model::encoder::l2_normalize;
use anyhow::{Context, Result};
use candle_core::Tensor;
use image::RgbImage;

/// Prompts are encoded this many at a time.
const TEXT_BATCH: usize = 64;

/// One class's result for one photo.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The class's display name.
    pub label: String,
    /// Cosine similarity between the photo and the class embedding.
    pub score: f32,
    /// Softmax over all classes of `exp(logit_scale) * score`.
    pub prob: f32,
}

/// Embeds prompts: L2-normalised text embeddings `(n, dim)`, one row per prompt. Prompts longer
/// than the context are truncated, and `on_truncate` hears of each.
pub fn embed_prompts(
    ckpt: &Checkpoint,
    prompts: &[String],
    mut on_truncate: impl FnMut(usize),
) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(prompts.len().div_ceil(TEXT_BATCH));
    for (b, chunk) in prompts.chunks(TEXT_BATCH).enumerate() {
        let mut ids = Vec::with_capacity(chunk.len());
        for (i, p) in chunk.iter().enumerate() {
            let tokens = ckpt.tokenizer.encode(p)?;
            if tokens.truncated {
                on_truncate(b * TEXT_BATCH + i);
            }
            ids.push(tokens.ids);
        }
        rows.push(l2_normalize(&ckpt.model.text_features(&ids)?)?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// Class embeddings ready to score photos against.
pub struct Classifier {
    labels: Vec<String>,
    /// `(classes, dim)`, each row unit length.
    embeddings: Tensor,
    /// `exp(logit_scale)`.
    temperature: f32,
}

impl Classifier {
    /// Embeds every class of `labels`: each class is the mean of the normalised embeddings of all
    /// its (name x template) prompts, normalised again. Warnings (truncated prompts) go to `warn`.
    pub fn new(
        ckpt: &Checkpoint,
        labels: &LabelSet,
        templates: &Templates,
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
        let text = embed_prompts(ckpt, &prompts, |i| {
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
        Ok(Self {
            labels: labels
                .classes
                .iter()
                .map(|c| c.display().to_string())
                .collect(),
            embeddings: l2_normalize(&means)?,
            temperature: ckpt.model.logit_scale().exp(),
        })
    }

    /// The class embeddings, `(classes, dim)`.
    pub fn embeddings(&self) -> &Tensor {
        &self.embeddings
    }

    /// Ranks all classes for each row of `images` (normalised image embeddings), best first.
    pub fn predict(&self, images: &Tensor) -> Result<Vec<Vec<Prediction>>> {
        let scores = images.matmul(&self.embeddings.t()?)?.to_vec2::<f32>()?;
        Ok(scores.into_iter().map(|row| self.rank(&row)).collect())
    }

    fn rank(&self, scores: &[f32]) -> Vec<Prediction> {
        let logits: Vec<f64> = scores
            .iter()
            .map(|&s| self.temperature as f64 * s as f64)
            .collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        let mut out: Vec<Prediction> = self
            .labels
            .iter()
            .zip(scores)
            .zip(&exps)
            .map(|((label, &score), e)| Prediction {
                label: label.clone(),
                score,
                prob: (e / total) as f32,
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out
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
