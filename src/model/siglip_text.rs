//! SigLIP's text tower: token and position embeddings, a bidirectional encoder, a final layer
//! norm, and a linear head on the last position.
//!
//! Where it differs from CLIP's ([`super::text`]): no causal mask; every prompt is padded to the
//! whole context (64 tokens), as SigLIP was trained and as transformers' zero-shot pipeline does
//! (`padding="max_length"`, with the attention mask hiding the padding); the embedding is read at
//! the last position, which for SigLIP is padding for all but the longest prompts, so a shorter
//! padding gives other embeddings (SigLIP 2's tokenizer pads on the left, so there it is the
//! last token); and a head with a bias replaces CLIP's bias-free projection.

use super::config::TextConfig;
use super::encoder::{layer_norm, Encoder, EncoderShape};
use super::ops::{Dense, MatmulKind};
use anyhow::{bail, Result};
use candle_core::{Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

/// The text transformer (`text_model`) with its head.
pub struct SiglipTextTransformer {
    token_embedding: Embedding,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    head: Dense,
    context: usize,
    pad_id: u32,
    pad_left: bool,
}

impl SiglipTextTransformer {
    /// Loads the tower from `vb` (pointing at `text_model`); `projection` is the head's width.
    pub fn load(
        vb: VarBuilder,
        c: &TextConfig,
        projection: usize,
        matmul: MatmulKind,
    ) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let shape = EncoderShape::of_text(c, matmul);
        Ok(Self {
            token_embedding: Embedding::new(
                emb.get((c.vocab_size, c.hidden_size), "token_embedding.weight")?,
                c.hidden_size,
            ),
            position_embedding: emb.get(
                (c.max_position_embeddings, c.hidden_size),
                "position_embedding.weight",
            )?,
            encoder: Encoder::load(vb.pp("encoder"), &shape)?,
            final_layer_norm: layer_norm(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            head: Dense::load(
                c.hidden_size,
                projection,
                true,
                vb.pp("head"),
                matmul.at_edge(),
            )?,
            context: c.max_position_embeddings,
            pad_id: c.pad_token_id,
            pad_left: c.pad_left,
        })
    }

    /// Text embeddings `(batch, projection)` for token sequences (each at most the context),
    /// each padded to the whole context (on the tokenizer's side) with the padding masked out.
    pub fn forward(&self, sequences: &[Vec<u32>]) -> Result<Tensor> {
        let device = self.position_embedding.device().clone();
        let (b, t) = (sequences.len(), self.context);
        if b == 0 || sequences.iter().any(Vec::is_empty) {
            bail!("no tokens to encode");
        }
        if let Some(long) = sequences.iter().find(|s| s.len() > t) {
            bail!(
                "a prompt of {} tokens exceeds the model's context of {t}",
                long.len()
            );
        }
        let mut ids = Vec::with_capacity(b * t);
        for seq in sequences {
            let pads = std::iter::repeat_n(self.pad_id, t - seq.len());
            if self.pad_left {
                ids.extend(pads);
                ids.extend_from_slice(seq);
            } else {
                ids.extend_from_slice(seq);
                ids.extend(pads);
            }
        }
        let ids = Tensor::from_vec(ids, (b, t), &device)?;
        let x = self
            .token_embedding
            .forward(&ids)?
            .broadcast_add(&self.position_embedding)?;
        let mask = padding_mask(sequences, t, self.pad_left, &device)?.to_dtype(x.dtype())?;
        // The last token of each sequence.
        let last = vec![t - 1; b];
        let x = self.encoder.forward_pooled(&x, Some(&mask), &last)?;
        self.head.forward(&self.final_layer_norm.forward(&x)?)
    }
}

/// Key padding, `(batch, 1, t, t)`: `-inf` where a key is padding (after the tokens, or before
/// them with `left`), for every query.
fn padding_mask(sequences: &[Vec<u32>], t: usize, left: bool, device: &Device) -> Result<Tensor> {
    let mut mask = vec![0f32; sequences.len() * t * t];
    for (b, seq) in sequences.iter().enumerate() {
        let pads = t - seq.len();
        let start = if left { 0 } else { seq.len() };
        for q in 0..t {
            mask[(b * t + q) * t + start..][..pads].fill(f32::NEG_INFINITY);
        }
    }
    Ok(Tensor::from_vec(mask, (sequences.len(), 1, t, t), device)?)
}
