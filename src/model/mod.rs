//! The CLIP and SigLIP models on candle-nn, one file per piece: [`config`], [`encoder`],
//! [`text`], [`vision`], [`siglip_text`], [`siglip_vision`], [`weights`], and the prompt
//! [`tokenizer`].
//!
//! Written here rather than taken from candle-transformers, whose CLIP (0.11) differs from the
//! reference: it pools text at the highest token id (wrong when a pad id sits above EOS), knows no
//! activation but quick_gelu, hard-codes `layer_norm_eps = 1e-5`, reads no `config.json`, and
//! draws a random `class_embedding` when the weight is missing.
//! `tests/candle_transformers_differs.rs` shows the difference on a fixture.

#[cfg(target_arch = "x86_64")]
pub mod amx;
#[cfg(target_arch = "x86_64")]
pub mod bf16;
pub mod config;
pub mod encoder;
#[cfg(target_arch = "x86_64")]
pub mod epilogue;
#[cfg(target_arch = "x86_64")]
pub mod int8;
pub mod math;
pub mod ops;
pub mod probe;
pub mod siglip_text;
pub mod siglip_vision;
pub mod text;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use config::{Activation, ClipConfig, Family, TextConfig, VisionConfig};
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
    /// bfloat16: on CPUs with AMX or AVX-512 BF16, bf16 products with f32 sums and f32
    /// activations (as PyTorch's autocast); on other CPUs f32 (see [`Precision::plan`]); on GPUs
    /// bf16 weights and activations. Embeddings come back as f32.
    Bf16,
    /// IEEE half precision.
    F16,
    /// int8 products on the CPU (AVX-512 VNNI, else AVX2): weights quantised per output
    /// channel at load, activations per row as each product runs, int32 sums, everything else
    /// f32 (see [`int8`]). A speed choice: embeddings drift from f32's (the README measures
    /// it). Elsewhere f32 (see [`Precision::plan`]).
    Int8,
    /// Whichever engine this CPU runs the model fastest with (f32, or bf16 on AMX or AVX-512
    /// BF16), measured once per machine and model shape ([`probe`]).
    Auto,
}

/// How a model runs: chosen by [`Precision::plan`] for a precision and a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The precision it actually runs in (`auto` resolved, bf16 without bf16 arithmetic is f32).
    pub precision: Precision,
    /// The dtype of its tensors.
    pub dtype: DType,
    /// How its dense layers multiply.
    pub matmul: MatmulKind,
    /// What the user should hear about it (bf16 asked for, f32 run).
    pub note: Option<String>,
}

impl Precision {
    /// How the model runs in this precision on `device`: see [`Plan`].
    ///
    /// bf16 on a CPU keeps f32 tensors and multiplies in bf16 with the best engine the CPU has,
    /// AMX tiles, else AVX-512 BF16 (as PyTorch's bf16 autocast does; `FOODCLIP_BF16` forces
    /// one). A CPU with neither has no bf16 arithmetic: bf16 storage would only add conversions,
    /// so it runs f32, with a note. On a GPU the tensors themselves are bf16. `auto` on a CPU is
    /// the engine [`probe::choose`] measures fastest for a model with this `vision` tower (its
    /// choice remembered under `cache`), or the one `FOODCLIP_BF16` forces; on a GPU, f32. A
    /// forced engine this CPU lacks is an error.
    pub fn plan(
        self,
        device: &candle_core::Device,
        vision: &config::VisionConfig,
        cache: Option<&std::path::Path>,
    ) -> Result<Plan> {
        let native = |precision: Precision| Plan {
            precision,
            dtype: precision.dtype(),
            matmul: MatmulKind::Native,
            note: None,
        };
        if !device.is_cpu() {
            return Ok(match self {
                Precision::Auto => native(Precision::F32),
                Precision::Int8 => Plan {
                    note: Some(
                        "--precision int8 runs on the CPU only; on this device the model runs \
                         in f32"
                            .to_string(),
                    ),
                    ..native(Precision::F32)
                },
                _ => native(self),
            });
        }
        if self == Precision::Int8 {
            #[cfg(target_arch = "x86_64")]
            if let Some(engine) = int8::engine().map_err(anyhow::Error::msg)? {
                return Ok(Plan {
                    precision: Precision::Int8,
                    dtype: DType::F32,
                    matmul: MatmulKind::Int8(engine),
                    note: None,
                });
            }
            return Ok(Plan {
                note: Some(
                    "--precision int8: this CPU has no int8 dot products (AMX, VNNI or AVX2), \
                     so the model runs in f32"
                        .to_string(),
                ),
                ..native(Precision::F32)
            });
        }
        if !matches!(self, Precision::Bf16 | Precision::Auto) {
            return Ok(native(self));
        }
        if self == Precision::Auto && std::env::var_os(bf16::FORCE_VAR).is_none() {
            let chosen = probe::choose(vision, &probe::candidates(), cache)?;
            return Ok(Plan {
                precision: match chosen.matmul {
                    MatmulKind::Native => Precision::F32,
                    #[cfg(target_arch = "x86_64")]
                    MatmulKind::PackedBf16(_) => Precision::Bf16,
                    #[cfg(target_arch = "x86_64")]
                    MatmulKind::Int8(_) => Precision::Int8,
                },
                dtype: DType::F32,
                matmul: chosen.matmul,
                note: None,
            });
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(engine) = bf16::engine().map_err(anyhow::Error::msg)? {
            return Ok(Plan {
                precision: Precision::Bf16,
                dtype: DType::F32,
                matmul: MatmulKind::PackedBf16(engine),
                note: None,
            });
        }
        Ok(Plan {
            note: (self == Precision::Bf16).then(|| {
                "--precision bf16: this CPU has no bf16 arithmetic (AMX or AVX-512 BF16), so \
                 the model runs in f32, which is faster here than bf16 storage"
                    .to_string()
            }),
            ..native(Precision::F32)
        })
    }

    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
            Precision::Auto | Precision::Int8 => DType::F32,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
            Precision::Auto => "auto",
            Precision::Int8 => "int8",
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
            "auto" => Precision::Auto,
            "int8" => Precision::Int8,
            other => bail!("unknown precision {other:?} (f32, bf16, f16, int8, auto)"),
        })
    }
}

/// How a model turns the cosine similarity of a photo and a class into a probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scoring {
    /// CLIP: `softmax(temperature * cos)` over the classes, which sum to 1.
    Softmax {
        /// `exp(logit_scale)`.
        temperature: f32,
    },
    /// SigLIP: `sigmoid(temperature * cos + bias)` for each class on its own: how likely the
    /// photo shows that class, not a share among the classes (several can be near 1, or none).
    Sigmoid {
        /// `exp(logit_scale)`.
        temperature: f32,
        /// `logit_bias`.
        bias: f32,
    },
}

impl Scoring {
    /// `exp(logit_scale)`.
    pub fn temperature(&self) -> f32 {
        match *self {
            Scoring::Softmax { temperature } | Scoring::Sigmoid { temperature, .. } => temperature,
        }
    }
}

/// A CLIP-family model: both towers, their projections into the shared space, and the logit
/// scale (and, for SigLIP, bias).
///
/// Each tower is built from the weights the first time it is used (or by
/// [`ClipModel::build_image_tower`]), so a run whose prompt embeddings are all cached never reads
/// the text weights, and re-scoring stored image embeddings reads neither tower.
pub struct ClipModel {
    weights: VarBuilder<'static>,
    config: ClipConfig,
    text: OnceLock<Box<dyn TextEncoder>>,
    vision: OnceLock<Box<dyn ImageEncoder>>,
    logit_scale: f32,
    logit_bias: Option<f32>,
    dtype: DType,
    matmul: MatmulKind,
}

/// A tower and its projection into the shared space.
struct Projected<T> {
    encoder: T,
    projection: Dense,
}

/// A text tower with its projection: token sequences in, embeddings in the shared space out.
trait TextEncoder: Send + Sync {
    fn embed(&self, sequences: &[Vec<u32>]) -> Result<Tensor>;
}

/// An image tower with its projection: pixels in, embeddings in the shared space out.
trait ImageEncoder: Send + Sync {
    fn embed(&self, pixels: &Tensor) -> Result<Tensor>;

    /// Per-patch embeddings `(batch, patches, projection)` in the shared space.
    fn dense(&self, _pixels: &Tensor, _std: f64) -> Result<Tensor> {
        bail!(
            "dense maps (--regions auto) need a CLIP model: SigLIP's embedding comes from a \
             pooling head, not from one token, so its patches have no place in the shared space"
        )
    }
}

impl TextEncoder for Projected<text::TextTransformer> {
    fn embed(&self, sequences: &[Vec<u32>]) -> Result<Tensor> {
        self.projection.forward(&self.encoder.forward(sequences)?)
    }
}

impl ImageEncoder for Projected<vision::VisionTransformer> {
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        self.projection.forward(&self.encoder.forward(pixels)?)
    }

    fn dense(&self, pixels: &Tensor, std: f64) -> Result<Tensor> {
        self.projection
            .forward(&self.encoder.forward_dense(pixels, std)?)
    }
}

impl TextEncoder for siglip_text::SiglipTextTransformer {
    fn embed(&self, sequences: &[Vec<u32>]) -> Result<Tensor> {
        self.forward(sequences)
    }
}

impl ImageEncoder for siglip_vision::SiglipVisionTransformer {
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        self.forward(pixels)
    }
}

impl ClipModel {
    /// Opens the model in `vb` (a `CLIPModel` or `SiglipModel` state dict) with its config; only
    /// the logit scale (and bias) is read here. `matmul` says how the dense layers multiply.
    pub fn load(vb: VarBuilder<'static>, config: &ClipConfig, matmul: MatmulKind) -> Result<Self> {
        let dtype = vb.dtype();
        let scalar = |name: &str| -> Result<f32> {
            // SigLIP stores its scale and bias as one-element vectors, CLIP its scale as a scalar.
            let t = vb.get_unchecked(name)?;
            if t.elem_count() != 1 {
                bail!("{name} has shape {:?}; expected one value", t.dims());
            }
            Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0])
        };
        let logit_scale = scalar("logit_scale")?;
        let logit_bias = match config.family {
            Family::Clip => None,
            Family::Siglip => Some(scalar("logit_bias")?),
        };
        Ok(Self {
            weights: vb,
            config: config.clone(),
            text: OnceLock::new(),
            vision: OnceLock::new(),
            logit_scale,
            logit_bias,
            dtype,
            matmul,
        })
    }

    /// The bias-free projection `name` from a tower's width into the shared space.
    fn projection(&self, hidden: usize, name: &str) -> Result<Dense> {
        let proj = self.config.projection_dim;
        Dense::load(
            hidden,
            proj,
            false,
            self.weights.pp(name),
            self.matmul.at_edge(),
        )
    }

    /// The text tower, built from the weights on first use.
    fn text_tower(&self) -> Result<&dyn TextEncoder> {
        if let Some(tower) = self.text.get() {
            return Ok(tower.as_ref());
        }
        let t = &self.config.text_config;
        let vb = self.weights.pp("text_model");
        let tower: Box<dyn TextEncoder> = match self.config.family {
            Family::Clip => Box::new(Projected {
                encoder: text::TextTransformer::load(vb, t, self.matmul)?,
                projection: self.projection(t.hidden_size, "text_projection")?,
            }),
            Family::Siglip => Box::new(siglip_text::SiglipTextTransformer::load(
                vb,
                t,
                self.config.projection_dim,
                self.matmul,
            )?),
        };
        Ok(self.text.get_or_init(|| tower).as_ref())
    }

    /// The image tower, built from the weights on first use.
    fn image_tower(&self) -> Result<&dyn ImageEncoder> {
        if let Some(tower) = self.vision.get() {
            return Ok(tower.as_ref());
        }
        let v = &self.config.vision_config;
        let vb = self.weights.pp("vision_model");
        let tower: Box<dyn ImageEncoder> = match self.config.family {
            Family::Clip => Box::new(Projected {
                encoder: vision::VisionTransformer::load(vb, v, self.matmul)?,
                projection: self.projection(v.hidden_size, "visual_projection")?,
            }),
            Family::Siglip => Box::new(siglip_vision::SiglipVisionTransformer::load(
                vb,
                v,
                self.matmul,
            )?),
        };
        Ok(self.vision.get_or_init(|| tower).as_ref())
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

    /// How similarities become probabilities: a softmax for CLIP, a sigmoid per class with the
    /// learned bias for SigLIP.
    pub fn scoring(&self) -> Scoring {
        let temperature = self.logit_scale.exp();
        match self.logit_bias {
            None => Scoring::Softmax { temperature },
            Some(bias) => Scoring::Sigmoid { temperature, bias },
        }
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
        Ok(tower
            .embed(&pixels.to_dtype(self.dtype)?)?
            .to_dtype(DType::F32)?)
    }

    /// NACLIP's per-patch image embeddings `(batch, grid * grid, projection_dim)`, unnormalised,
    /// patches in row order, for normalised pixels `(batch, 3, size, size)`; `std` is the
    /// Gaussian neighbourhood's width in patches (NACLIP uses 5).
    pub fn dense_image_features(&self, pixels: &Tensor, std: f64) -> Result<Tensor> {
        let tower = self
            .image_tower()
            .context("the image tower does not match config.json")?;
        Ok(tower
            .dense(&pixels.to_dtype(self.dtype)?, std)?
            .to_dtype(DType::F32)?)
    }

    /// Projected, unnormalised text embeddings `(batch, projection_dim)` for token sequences.
    /// The first call reads the text tower's weights.
    pub fn text_features(&self, sequences: &[Vec<u32>]) -> Result<Tensor> {
        let tower = self
            .text_tower()
            .context("the text tower does not match config.json")?;
        Ok(tower.embed(sequences)?.to_dtype(DType::F32)?)
    }

    /// Whether the text tower has been read (false until a prompt is embedded).
    pub fn text_loaded(&self) -> bool {
        self.text.get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_resolve_auto_and_run_f32_without_bf16_arithmetic() {
        let cpu = candle_core::Device::Cpu;
        let vision = config::VisionConfig {
            hidden_size: 64,
            intermediate_size: 256,
            image_size: 32,
            patch_size: 8,
            ..Default::default()
        };
        let plan = |p: Precision| p.plan(&cpu, &vision, None);
        let f32 = plan(Precision::F32).unwrap();
        assert_eq!(
            (f32.precision, f32.matmul),
            (Precision::F32, MatmulKind::Native)
        );
        let (auto, bf16) = (
            plan(Precision::Auto).unwrap(),
            plan(Precision::Bf16).unwrap(),
        );
        // auto is one of the engines the CPU has (measured), and never warns.
        let engines: Vec<MatmulKind> = probe::candidates().iter().map(|c| c.matmul).collect();
        assert!(engines.contains(&auto.matmul));
        let expected = match auto.matmul {
            MatmulKind::Native => Precision::F32,
            #[cfg(target_arch = "x86_64")]
            MatmulKind::PackedBf16(_) => Precision::Bf16,
            #[cfg(target_arch = "x86_64")]
            MatmulKind::Int8(_) => panic!("auto never picks int8 (it is opt-in)"),
        };
        assert_eq!(auto.precision, expected);
        assert!(auto.note.is_none() && auto.dtype == DType::F32);
        match bf16.matmul {
            MatmulKind::Native => {
                assert_eq!(bf16.precision, Precision::F32);
                assert!(bf16.note.unwrap().contains("no bf16 arithmetic"));
            }
            #[cfg(target_arch = "x86_64")]
            MatmulKind::PackedBf16(_) => {
                assert_eq!(bf16.precision, Precision::Bf16);
                assert!(bf16.note.is_none());
            }
            #[cfg(target_arch = "x86_64")]
            MatmulKind::Int8(_) => panic!("bf16 planned as int8"),
        }
        // int8 runs an int8 engine where the CPU has one, else f32 and says so.
        let int8 = plan(Precision::Int8).unwrap();
        assert_eq!(int8.dtype, DType::F32);
        match int8.matmul {
            MatmulKind::Native => {
                assert_eq!(int8.precision, Precision::F32);
                assert!(int8.note.unwrap().contains("no int8 dot products"));
            }
            #[cfg(target_arch = "x86_64")]
            MatmulKind::Int8(engine) => {
                assert_eq!(Some(engine), int8::engine().unwrap());
                assert_eq!(int8.precision, Precision::Int8);
                assert!(int8.note.is_none());
            }
            #[cfg(target_arch = "x86_64")]
            MatmulKind::PackedBf16(_) => panic!("int8 planned as bf16"),
        }
        assert_eq!(int8.matmul.at_edge(), MatmulKind::Native);
        assert_eq!("int8".parse::<Precision>().unwrap(), Precision::Int8);
        assert_eq!("auto".parse::<Precision>().unwrap(), Precision::Auto);
    }
}
