//! The CLIP model on candle-nn, one file per piece: [`config`], [`encoder`], [`text`], [`vision`],
//! [`weights`], and the prompt [`tokenizer`].
//!
//! Written here rather than taken from candle-transformers, whose CLIP (0.11) differs from the
//! reference: it pools text at the highest token id (wrong when a pad id sits above EOS), knows no
//! activation but quick_gelu, hard-codes `layer_norm_eps = 1e-5`, reads no `config.json`, and
//! draws a random `class_embedding` when the weight is missing.
//! `tests/candle_transformers_differs.rs` shows the difference on a fixture.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod config;
pub mod encoder;
pub mod math;
pub mod ops;
pub mod text;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
pub use text::Pooling;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use ops::{Dense, MatmulKind};
use std::sync::OnceLock;

/// Number format of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit floats, as the reference.
    #[default]
    F32,
    /// bfloat16: on CPUs with AMX, bf16 products with f32 sums and f32 activations (as PyTorch's
    /// autocast); elsewhere bf16 weights and activations. Embeddings come back as f32.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl Precision {
    /// How the model runs in this precision on `device`: the dtype of its tensors and how its
    /// dense layers multiply. bf16 on a CPU with AMX keeps f32 tensors and multiplies in bf16 on
    /// AMX tiles (as PyTorch's bf16 autocast does); elsewhere the tensors themselves are bf16.
    pub fn plan(self, device: &candle_core::Device) -> (DType, MatmulKind) {
        #[cfg(target_arch = "x86_64")]
        if self == Precision::Bf16 && device.is_cpu() && amx::available() {
            return (DType::F32, MatmulKind::AmxBf16);
        }
        let _ = device;
        (self.dtype(), MatmulKind::Native)
    }

    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" | "fp32" => Precision::F32,
            "bf16" => Precision::Bf16,
            "f16" | "fp16" => Precision::F16,
            other => bail!("unknown precision {other:?} (f32, bf16, f16)"),
        })
    }
}

/// A CLIP model: both towers, their projections into the shared space, and the logit scale.
///
/// Each tower is built from the weights the first time it is used (or by
/// [`ClipModel::build_image_tower`]), so a run whose prompt embeddings are all cached never reads
/// the text weights, and re-scoring stored image embeddings reads neither tower.
pub struct ClipModel {
    weights: VarBuilder<'static>,
    config: ClipConfig,
    text: OnceLock<Projected<text::TextTransformer>>,
    vision: OnceLock<Projected<vision::VisionTransformer>>,
    logit_scale: f32,
    dtype: DType,
    matmul: MatmulKind,
}

/// A tower and its projection into the shared space.
struct Projected<T> {
    encoder: T,
    projection: Dense,
}

impl ClipModel {
    /// Opens the model in `vb` (a `CLIPModel` state dict) with its config; only the logit scale is
    /// read here. `matmul` says how the dense layers multiply.
    pub fn load(vb: VarBuilder<'static>, config: &ClipConfig, matmul: MatmulKind) -> Result<Self> {
        let dtype = vb.dtype();
        let logit_scale = vb
            .get((), "logit_scale")?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        Ok(Self {
            weights: vb,
            config: config.clone(),
            text: OnceLock::new(),
            vision: OnceLock::new(),
            logit_scale,
            dtype,
            matmul,
        })
    }

    /// The bias-free projection `name` from a tower's width into the shared space.
    fn projection(&self, hidden: usize, name: &str) -> Result<Dense> {
        let proj = self.config.projection_dim;
        Dense::load(hidden, proj, false, self.weights.pp(name), self.matmul)
    }

    /// The text tower, built from the weights on first use.
    fn text_tower(&self) -> Result<&Projected<text::TextTransformer>> {
        if let Some(tower) = self.text.get() {
            return Ok(tower);
        }
        let t = &self.config.text_config;
        let tower = Projected {
            encoder: text::TextTransformer::load(self.weights.pp("text_model"), t, self.matmul)?,
            projection: self.projection(t.hidden_size, "text_projection")?,
        };
        Ok(self.text.get_or_init(|| tower))
    }

    /// The image tower, built from the weights on first use.
    fn image_tower(&self) -> Result<&Projected<vision::VisionTransformer>> {
        if let Some(tower) = self.vision.get() {
            return Ok(tower);
        }
        let v = &self.config.vision_config;
        let tower = Projected {
            encoder: vision::VisionTransformer::load(
                self.weights.pp("vision_model"),
                v,
                self.matmul,
            )?,
            projection: self.projection(v.hidden_size, "visual_projection")?,
        };
        Ok(self.vision.get_or_init(|| tower))
    }

    /// Builds the image tower now, so that weights that do not match the config fail here
    /// rather than at the first photo.
    pub fn build_image_tower(&self) -> Result<()> {
        self.image_tower().map(|_| ())
    }

    /// The learned temperature, as stored (`exp` of it multiplies cosine similarities).
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// Side of the square image the vision tower takes.
    pub fn image_size(&self) -> usize {
        self.config.vision_config.image_size
    }

    /// Projected, unnormalised image embeddings `(batch, projection_dim)` for normalised pixels
    /// `(batch, 3, size, size)`.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let tower = self
            .image_tower()
            .context("the image tower does not match config.json")?;
        let pooled = tower.encoder.forward(&pixels.to_dtype(self.dtype)?)?;
        Ok(tower.projection.forward(&pooled)?.to_dtype(DType::F32)?)
    }

    /// Projected, unnormalised text embeddings `(batch, projection_dim)` for token sequences.
    /// The first call reads the text tower's weights.
    pub fn text_features(&self, sequences: &[Vec<u32>]) -> Result<Tensor> {
        let tower = self
            .text_tower()
            .context("the text tower does not match config.json")?;
        let pooled = tower.encoder.forward(sequences)?;
        Ok(tower.projection.forward(&pooled)?.to_dtype(DType::F32)?)
    }

    /// Whether the text tower has been read (false until a prompt is embedded).
    pub fn text_loaded(&self) -> bool {
        self.text.get().is_some()
    }
}
