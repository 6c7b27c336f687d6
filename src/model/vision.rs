//! CLIP's vision tower: patch embedding, class token, position embeddings, pre-norm, encoder,
//! and the class token's state after the post-norm; or, for dense maps, every patch's state
//! from NACLIP's reduced last layer.

use super::config::VisionConfig;
use super::encoder::{layer_norm, Encoder, EncoderShape};
use super::ops::{patchify, Dense, MatmulKind};
use anyhow::{bail, Result};
use candle_core::{Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

/// The patch convolution's kernel (`embeddings.patch_embedding.weight`) flattened to
/// `(hidden, channels * patch * patch)`: a stride-`patch` convolution is exactly a matmul over
/// non-overlapping patches.
pub(crate) fn patch_weight(emb: &VarBuilder, c: &VisionConfig) -> Result<Tensor> {
    let (h, p) = (c.hidden_size, c.patch_size);
    Ok(emb
        .get((h, c.num_channels, p, p), "patch_embedding.weight")?
        .reshape((h, c.num_channels * p * p))?)
}

/// The vision transformer (`vision_model`).
pub struct VisionTransformer {
    /// The patch convolution's kernel flattened to `(hidden, channels * patch * patch)`: a
    /// stride-`patch` convolution is exactly a matmul over non-overlapping patches.
    patch_embedding: Dense,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    image_size: usize,
    patch_size: usize,
}

impl VisionTransformer {
    /// Loads the tower from `vb` (pointing at `vision_model`).
    pub fn load(vb: VarBuilder, c: &VisionConfig, matmul: MatmulKind) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let (h, p) = (c.hidden_size, c.patch_size);
        let grid = c.image_size / p;
        let patch_weight = patch_weight(&emb, c)?;
        let shape = EncoderShape::of_vision(c, matmul);
        Ok(Self {
            patch_embedding: Dense::new(patch_weight, None, matmul.at_edge())?,
            class_embedding: emb.get(h, "class_embedding")?,
            position_embedding: emb.get((grid * grid + 1, h), "position_embedding.weight")?,
            pre_layrnorm: layer_norm(h, c.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            encoder: Encoder::load(vb.pp("encoder"), &shape)?,
            post_layernorm: layer_norm(h, c.layer_norm_eps, vb.pp("post_layernorm"))?,
            image_size: c.image_size,
            patch_size: p,
        })
    }

    /// Pooled states `(batch, hidden)` for `pixels` of shape `(batch, 3, size, size)`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = self.embed(pixels)?;
        // The class token, first of each image's tokens.
        let class = vec![0; x.dim(0)?];
        let x = self.encoder.forward_pooled(&x, None, &class)?;
        Ok(self.post_layernorm.forward(&x)?)
    }

    /// Per-patch states `(batch, grid * grid, hidden)` after the post-norm, from NACLIP's dense
    /// pass (see [`Encoder::forward_dense`]) with a Gaussian neighbourhood of `std` patches.
    pub fn forward_dense(&self, pixels: &Tensor, std: f64) -> Result<Tensor> {
        let grid = self.image_size / self.patch_size;
        let near = neighbourhood(grid, grid, std, pixels.device())?;
        let x = self.encoder.forward_dense(&self.embed(pixels)?, &near)?;
        Ok(self
            .post_layernorm
            .forward(&x.narrow(1, 1, grid * grid)?.contiguous()?)?)
    }

    /// Patch embeddings with the class token and positions, pre-normed: the encoder's input.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, _, hgt, wid) = pixels.dims4()?;
        if hgt != self.image_size || wid != self.image_size {
            bail!(
                "the model takes {0}x{0} images, got {wid}x{hgt}",
                self.image_size
            );
        }
        let p = self.patch_size;
        let x = self.patch_embedding.forward(&patchify(pixels, p)?)?;
        let hidden = x.dim(2)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, hidden))?
            .broadcast_as((b, 1, hidden))?;
        let x = Tensor::cat(&[&cls.to_dtype(x.dtype())?, &x], 1)?
            .broadcast_add(&self.position_embedding)?;
        Ok(self.pre_layrnorm.forward(&x)?)
    }
}

/// NACLIP's neighbourhood term `(1, 1, 1 + h*w, 1 + h*w)`: between patches `p` and `q` of an
/// `h` x `w` grid, `exp(-|p - q|^2 / (2 std^2))`; nothing for the class token.
pub fn neighbourhood(h: usize, w: usize, std: f64, device: &Device) -> Result<Tensor> {
    let n = h * w + 1;
    let mut m = vec![0f32; n * n];
    for p in 0..h * w {
        for q in 0..h * w {
            let dy = (p / w) as f64 - (q / w) as f64;
            let dx = (p % w) as f64 - (q % w) as f64;
            m[(p + 1) * n + q + 1] = (-(dy * dy + dx * dx) / (2.0 * std * std)).exp() as f32;
        }
    }
    Ok(Tensor::from_vec(m, (1, 1, n, n), device)?)
}
