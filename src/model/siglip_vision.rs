//! SigLIP's vision tower: patch embedding (a convolution with a bias) plus position
//! embeddings, the encoder, a post-norm over every patch, and the attention-pooling head.
//!
//! Where it differs from CLIP's ([`super::vision`]): no class token and no pre-norm; the
//! embedding is not one token's state but a learned query (`probe`) attending over all patches,
//! followed by `x + mlp(layernorm(x))`; and there is no separate projection, the head's output
//! is the embedding.

use super::config::VisionConfig;
use super::encoder::{layer_norm, Encoder, EncoderShape, Mlp};
use super::ops::{patchify, Dense, MatmulKind};
use anyhow::{bail, Result};
use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

/// The vision transformer (`vision_model`) with its head.
pub struct SiglipVisionTransformer {
    /// The patch convolution as a matmul over non-overlapping patches, with its bias.
    patch_embedding: Dense,
    position_embedding: Tensor,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    head: PoolingHead,
    image_size: usize,
    patch_size: usize,
}

impl SiglipVisionTransformer {
    /// Loads the tower from `vb` (pointing at `vision_model`).
    pub fn load(vb: VarBuilder, c: &VisionConfig, matmul: MatmulKind) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let (h, p) = (c.hidden_size, c.patch_size);
        let grid = c.image_size / p;
        let patch_weight = super::vision::patch_weight(&emb, c)?;
        let shape = EncoderShape::of_vision(c, matmul);
        Ok(Self {
            patch_embedding: Dense::new(
                patch_weight,
                Some(emb.get(h, "patch_embedding.bias")?),
                matmul.at_edge(),
            )?,
            position_embedding: emb.get((grid * grid, h), "position_embedding.weight")?,
            encoder: Encoder::load(vb.pp("encoder"), &shape)?,
            post_layernorm: layer_norm(h, c.layer_norm_eps, vb.pp("post_layernorm"))?,
            head: PoolingHead::load(vb.pp("head"), &shape)?,
            image_size: c.image_size,
            patch_size: p,
        })
    }

    /// Image embeddings `(batch, hidden)` for `pixels` of shape `(batch, 3, size, size)`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, _, hgt, wid) = pixels.dims4()?;
        if hgt != self.image_size || wid != self.image_size {
            bail!(
                "the model takes {0}x{0} images, got {wid}x{hgt}",
                self.image_size
            );
        }
        let x = self
            .patch_embedding
            .forward(&patchify(pixels, self.patch_size)?)?
            .broadcast_add(&self.position_embedding)?;
        let x = self.encoder.forward(&x, None)?;
        self.head.forward(&self.post_layernorm.forward(&x)?)
    }
}

/// Multi-head attention pooling (`head`): the learned `probe` is the one query (torch's
/// `nn.MultiheadAttention`, with q, k and v packed in `in_proj_weight`), then
/// `x + mlp(layernorm(x))`.
struct PoolingHead {
    /// The probe's projected query, `(1, heads, 1, head_dim)`, already scaled by
    /// `head_dim^-1/2`: it depends on no input, so it is computed once.
    query: Tensor,
    /// Key and value projections in one matmul.
    kv: Dense,
    out: Dense,
    layernorm: LayerNorm,
    mlp: Mlp,
    heads: usize,
}

impl PoolingHead {
    fn load(vb: VarBuilder, shape: &EncoderShape) -> Result<Self> {
        let (h, heads) = (shape.hidden, shape.heads);
        let attn = vb.pp("attention");
        let w = attn.get((3 * h, h), "in_proj_weight")?;
        let b = attn.get(3 * h, "in_proj_bias")?;
        let probe = vb.get((1, 1, h), "probe")?.reshape((1, h))?;
        let d = h / heads;
        let query = (probe
            .matmul(&w.narrow(0, 0, h)?.t()?)?
            .broadcast_add(&b.narrow(0, 0, h)?)?
            * (d as f64).powf(-0.5))?
        .reshape((1, heads, 1, d))?;
        Ok(Self {
            query,
            kv: Dense::new(
                w.narrow(0, h, 2 * h)?.contiguous()?,
                Some(b.narrow(0, h, 2 * h)?.contiguous()?),
                shape.matmul,
            )?,
            out: Dense::load(h, h, true, attn.pp("out_proj"), shape.matmul)?,
            layernorm: layer_norm(h, shape.eps, vb.pp("layernorm"))?,
            mlp: Mlp::load(vb.pp("mlp"), shape)?,
            heads,
        })
    }

    /// Pooled embeddings `(batch, hidden)` of `x` `(batch, seq, hidden)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let d = h / self.heads;
        let kv = self.kv.forward(x)?;
        let split = |at: usize| -> Result<Tensor> {
            Ok(kv
                .narrow(2, at, h)?
                .reshape((b, t, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (k, v) = (split(0)?, split(h)?);
        let query = self.query.to_dtype(x.dtype())?;
        let weights =
            candle_nn::ops::softmax_last_dim(&query.broadcast_matmul(&k.t()?.contiguous()?)?)?;
        let pooled = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, 1, h))?;
        let pooled = self.out.forward(&pooled)?;
        Ok(self
            .mlp
            .forward(&self.layernorm, &pooled)?
            .reshape((b, h))?)
    }
}
