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
        let config: ClipConfig = serde_json::from_str(json).map_err(|e| {
            anyhow::anyhow!(
                "{e} (foodclip supports CLIP configs with hidden_act quick_gelu, gelu, gelu_new)"
            )
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

    fn validate(&self) -> Result<()> {
        if let Some(kind) = &self.model_type {
            if kind != "clip" {
                bail!("model_type is {kind:?}; foodclip runs CLIP models (model_type \"clip\")");
            }
        }
        let t = &self.text_config;
        let v = &self.vision_config;
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            bail!(
                "text hidden_size {} is not a multiple of num_attention_heads {}",
                t.hidden_size,
                t.num_attention_heads
            );
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            bail!(
                "vision hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size,
                v.num_attention_heads
            );
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            bail!(
                "vision image_size {} is not a multiple of patch_size {}",
                v.image_size,
                v.patch_size
            );
        }
        if v.num_channels != 3 {
            bail!(
                "vision num_channels is {}; foodclip feeds RGB images (3 channels)",
                v.num_channels
            );
        }
        if t.max_position_embeddings == 0 || t.vocab_size == 0 {
            bail!("text config has an empty vocabulary or context");
        }
        Ok(())
    }
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
