//! Model configuration, mapped field by field from a checkpoint's `config.json`.
//!
//! Defaults are those of transformers' `CLIPTextConfig` and `CLIPVisionConfig`, so a hub config
//! that leaves a field out means what it means to the reference implementation.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The activation between the two MLP layers (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI CLIP's choice.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact GELU, `x * Φ(x)` with the error function.
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", rename = "gelu_fast")]
    GeluTanh,
}

/// The text tower (`text_config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// Number of token embeddings.
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP inside each layer.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Context length: the longest token sequence the model takes.
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
    /// Token id that ends a prompt; the text embedding is read at its first occurrence.
    pub eos_token_id: u32,
    /// Token id used for padding.
    pub pad_token_id: u32,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            pad_token_id: 1,
        }
    }
}

/// The vision tower (`vision_config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP inside each layer.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Colour channels of the input.
    pub num_channels: usize,
    /// Side of the square input image, in pixels.
    pub image_size: usize,
    /// Side of one square patch, in pixels.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// A whole `CLIPModel` configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    /// Must be `clip` (or absent).
    #[serde(default)]
    pub model_type: Option<String>,
    /// The text tower.
    #[serde(default)]
    pub text_config: TextConfig,
    /// The vision tower.
    #[serde(default)]
    pub vision_config: VisionConfig,
    /// Width of the shared embedding space.
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
}

fn default_projection_dim() -> usize {
    512
}

impl ClipConfig {
    /// Reads and checks a `config.json`.
    ///
    /// ```
    /// let json = r#"{"model_type": "clip", "projection_dim": 512,
    ///   "text_config": {"hidden_act": "gelu", "eos_token_id": 2},
    ///   "vision_config": {"image_size": 224, "patch_size": 14}}"#;
    /// let config = foodclip::model::ClipConfig::from_json(json).unwrap();
    /// assert_eq!(config.vision_config.patch_size, 14);
    /// assert_eq!(config.text_config.hidden_act, foodclip::model::Activation::Gelu);
    /// ```
    pub fn from_json(json: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let config: ClipConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let hint = if field.ends_with("hidden_act") {
                " (foodclip supports CLIP configs with hidden_act quick_gelu, gelu, gelu_new)"
            } else {
                ""
            };
            anyhow::anyhow!("field {field}: {}{hint}", e.into_inner())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and checks the `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&json)
            .with_context(|| format!("unsupported model config {}", path.display()))
    }

    /// Checks every size, count and id against the others and against sane bounds, so that no
    /// arithmetic on them can overflow and no tensor is asked for in a shape that makes no sense.
    fn validate(&self) -> Result<()> {
        if let Some(kind) = &self.model_type {
            if kind != "clip" {
                bail!("model_type is {kind:?}; foodclip runs CLIP models (model_type \"clip\")");
            }
        }
        let t = &self.text_config;
        let v = &self.vision_config;
        within("projection_dim", self.projection_dim, 1, MAX_WIDTH)?;
        for (tower, width, mlp, layers, heads, eps) in [
            (
                "text_config",
                t.hidden_size,
                t.intermediate_size,
                t.num_hidden_layers,
                t.num_attention_heads,
                t.layer_norm_eps,
            ),
            (
                "vision_config",
                v.hidden_size,
                v.intermediate_size,
                v.num_hidden_layers,
                v.num_attention_heads,
                v.layer_norm_eps,
            ),
        ] {
            within(&format!("{tower}.hidden_size"), width, 1, MAX_WIDTH)?;
            within(&format!("{tower}.intermediate_size"), mlp, 1, 8 * MAX_WIDTH)?;
            within(&format!("{tower}.num_hidden_layers"), layers, 1, MAX_LAYERS)?;
            within(&format!("{tower}.num_attention_heads"), heads, 1, width)?;
            if !width.is_multiple_of(heads) {
                bail!(
                    "{tower}.hidden_size {width} is not a multiple of num_attention_heads {heads}"
                );
            }
            if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
                bail!("{tower}.layer_norm_eps is {eps}; it must be a small positive number such as 1e-5");
            }
        }
        within("text_config.vocab_size", t.vocab_size, 1, MAX_VOCAB)?;
        within(
            "text_config.max_position_embeddings",
            t.max_position_embeddings,
            1,
            MAX_TOKENS,
        )?;
        within(
            "text_config.eos_token_id",
            t.eos_token_id as usize,
            0,
            t.vocab_size - 1,
        )?;
        within(
            "text_config.pad_token_id",
            t.pad_token_id as usize,
            0,
            t.vocab_size - 1,
        )?;
        if v.num_channels != 3 {
            bail!(
                "vision_config.num_channels is {}; foodclip feeds RGB images (3 channels)",
                v.num_channels
            );
        }
        within("vision_config.image_size", v.image_size, 1, MAX_IMAGE)?;
        within("vision_config.patch_size", v.patch_size, 1, v.image_size)?;
        if !v.image_size.is_multiple_of(v.patch_size) {
            bail!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size,
                v.patch_size
            );
        }
        let grid = v.image_size / v.patch_size;
        if grid * grid > MAX_TOKENS {
            bail!(
                "vision_config: image_size {} / patch_size {} makes {} patches, more than {MAX_TOKENS}",
                v.image_size,
                v.patch_size,
                grid * grid
            );
        }
        Ok(())
    }
}

/// Widths (hidden and projection sizes) above this are refused as absurd.
const MAX_WIDTH: usize = 16_384;
/// Encoder layers above this are refused.
const MAX_LAYERS: usize = 256;
/// Vocabulary sizes above this are refused.
const MAX_VOCAB: usize = 1 << 20;
/// Sequence lengths (text context, image patches) above this are refused.
const MAX_TOKENS: usize = 16_384;
/// Input image sides above this are refused.
const MAX_IMAGE: usize = 4096;

/// Fails, naming `field`, unless `min <= value <= max`.
fn within(field: &str, value: usize, min: usize, max: usize) -> Result<()> {
    if value < min || value > max {
        bail!("{field} is {value}; it must be from {min} to {max}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_transformers() {
        let c = ClipConfig::from_json("{}").unwrap();
        assert_eq!(c.text_config.max_position_embeddings, 77);
        assert_eq!(c.text_config.eos_token_id, 49407);
        assert_eq!(c.vision_config.image_size, 224);
        assert_eq!(c.projection_dim, 512);
    }

    #[test]
    fn rejects_unknown_activation_and_model_type() {
        let e = ClipConfig::from_json(r#"{"text_config": {"hidden_act": "swish"}}"#).unwrap_err();
        assert!(format!("{e:#}").contains("swish"), "{e:#}");
        let e = ClipConfig::from_json(r#"{"model_type": "siglip"}"#).unwrap_err();
        assert!(format!("{e:#}").contains("siglip"));
    }

    #[test]
    fn rejects_inconsistent_geometry() {
        let e = ClipConfig::from_json(r#"{"vision_config": {"image_size": 225}}"#).unwrap_err();
        assert!(format!("{e:#}").contains("patch_size"));
        let e = ClipConfig::from_json(
            r#"{"text_config": {"hidden_size": 30, "num_attention_heads": 8}}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("num_attention_heads"));
    }

    #[test]
    fn accepts_tanh_gelu_aliases() {
        for name in ["gelu_new", "gelu_pytorch_tanh", "gelu_fast"] {
            let c =
                ClipConfig::from_json(&format!(r#"{{"text_config": {{"hidden_act": "{name}"}}}}"#))
                    .unwrap();
            assert_eq!(c.text_config.hidden_act, Activation::GeluTanh);
        }
    }
}
