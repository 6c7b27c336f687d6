//! CLIP's text tower: token and position embeddings, a causal encoder, a final layer norm, and
//! the pooled state read at the end-of-text token.

use super::config::TextConfig;
use super::encoder::{layer_norm, Encoder, EncoderShape};
use super::ops::MatmulKind;
use anyhow::{bail, Result};
use candle_core::{Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

/// Where the text embedding is read, following transformers' `CLIPTextTransformer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// At the first occurrence of this EOS id (position 0 if there is none, as transformers does).
    FirstEos(u32),
    /// At the highest token id: the legacy rule transformers keeps for configs with
    /// `eos_token_id == 2`, written before EOS ids were read from the config.
    HighestId,
}

impl Pooling {
    /// The rule transformers applies for a config's `eos_token_id`.
    pub fn for_eos(eos_token_id: u32) -> Self {
        if eos_token_id == 2 {
            Pooling::HighestId
        } else {
            Pooling::FirstEos(eos_token_id)
        }
    }

    /// The position to read in one unpadded sequence of ids.
    pub fn position(&self, ids: &[u32]) -> usize {
        match *self {
            Pooling::FirstEos(eos) => ids.iter().position(|&t| t == eos).unwrap_or(0),
            // First index of the maximum, as torch.argmax returns.
            Pooling::HighestId => {
                ids.iter()
                    .enumerate()
                    .fold(
                        (0, 0u32),
                        |best, (i, &t)| if i == 0 || t > best.1 { (i, t) } else { best },
                    )
                    .0
            }
        }
    }
}

/// The text transformer (`text_model`).
pub struct TextTransformer {
    token_embedding: Embedding,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    pooling: Pooling,
    context: usize,
    pad_id: u32,
}

impl TextTransformer {
    /// Loads the tower from `vb` (pointing at `text_model`).
    pub fn load(vb: VarBuilder, c: &TextConfig, matmul: MatmulKind) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let token_embedding = Embedding::new(
            emb.get((c.vocab_size, c.hidden_size), "token_embedding.weight")?,
            c.hidden_size,
        );
        let position_embedding = emb.get(
            (c.max_position_embeddings, c.hidden_size),
            "position_embedding.weight",
        )?;
        let shape = EncoderShape::of_text(c, matmul);
        Ok(Self {
            token_embedding,
            position_embedding,
            encoder: Encoder::load(vb.pp("encoder"), &shape)?,
            final_layer_norm: layer_norm(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            pooling: Pooling::for_eos(c.eos_token_id),
            context: c.max_position_embeddings,
            pad_id: c.pad_token_id,
        })
    }

    /// Pooled states `(batch, hidden)` for token sequences of any lengths (each at most the
    /// context). Sequences are padded together and the padding is masked out.
    pub fn forward(&self, sequences: &[Vec<u32>]) -> Result<Tensor> {
        let device = self.position_embedding.device().clone();
        let b = sequences.len();
        let t = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || t == 0 {
            bail!("no tokens to encode");
        }
        if t > self.context {
            bail!(
                "a prompt of {t} tokens exceeds the model's context of {}",
                self.context
            );
        }
        let mut ids = Vec::with_capacity(b * t);
        let mut positions = Vec::with_capacity(b);
        for seq in sequences {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(self.pad_id, t - seq.len()));
            positions.push(self.pooling.position(seq));
        }
        let ids = Tensor::from_vec(ids, (b, t), &device)?;
        let x = self
            .token_embedding
            .forward(&ids)?
            .broadcast_add(&self.position_embedding.narrow(0, 0, t)?)?;
        let mask = attention_mask(sequences, t, &device)?.to_dtype(x.dtype())?;
        let x = self.encoder.forward_pooled(&x, Some(&mask), &positions)?;
        Ok(self.final_layer_norm.forward(&x)?)
    }
}

/// Causal mask plus key padding, `(batch, 1, t, t)`, with `-inf` where attention is not allowed.
fn attention_mask(sequences: &[Vec<u32>], t: usize, device: &Device) -> Result<Tensor> {
    let mut mask = vec![0f32; sequences.len() * t * t];
    for (b, seq) in sequences.iter().enumerate() {
        for q in 0..t {
            for k in 0..t {
                if k > q || k >= seq.len() {
                    mask[(b * t + q) * t + k] = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Tensor::from_vec(mask, (sequences.len(), 1, t, t), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_rules_follow_transformers() {
        // First EOS, not the highest id: here a pad id (49408) sits above EOS (49407).
        let p = Pooling::for_eos(49407);
        assert_eq!(p.position(&[49406, 320, 49407, 49408, 49408]), 2);
        assert_eq!(p.position(&[49406, 320]), 0);
        // Legacy configs with eos_token_id == 2 pool at the highest id, first occurrence.
        let p = Pooling::for_eos(2);
        assert_eq!(p, Pooling::HighestId);
        assert_eq!(p.position(&[0, 7, 900, 12, 900, 2]), 2);
    }
}
