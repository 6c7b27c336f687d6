//! Model configuration, mapped field by field from a checkpoint's `config.json`.
//!
//! Defaults are those of transformers' `CLIPTextConfig` and `CLIPVisionConfig` (or, for
//! `model_type: "siglip"`, `SiglipTextConfig` and `SiglipVisionConfig`), so a hub config that
//! leaves a field out means what it means to the reference implementation.

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

/// The architecture a config describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// CLIP (`CLIPModel`): softmax over the classes.
    #[default]
    Clip,
    /// SigLIP (`SiglipModel`, and SigLIP 2's fixed-resolution checkpoints, which load as it): no
    /// class token, an attention-pooling image head, a text head on the last token, and a
    /// sigmoid per class with a learned bias.
    Siglip,
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
    /// SigLIP: width of the text head's output (the hidden size when absent).
    pub projection_size: Option<usize>,
    /// SigLIP: pad prompts on the left, as the tokenizer does (SigLIP 2's Gemma); not in
    /// `config.json`, set from the tokenizer's files.
    #[serde(skip)]
    pub pad_left: bool,
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
            projection_size: None,
            pad_left: false,
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
    /// SigLIP: whether the attention-pooling head is there (foodclip needs it).
    pub vision_use_head: bool,
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
            vision_use_head: true,
        }
    }
}

/// The fields where transformers' SigLIP configs default otherwise than CLIP's, per tower.
const SIGLIP_DEFAULTS: [(&str, &[(&str, f64)]); 2] = [
    (
        "text_config",
        &[
            ("vocab_size", 32000.0),
            ("hidden_size", 768.0),
            ("intermediate_size", 3072.0),
            ("num_attention_heads", 12.0),
            ("max_position_embeddings", 64.0),
            ("layer_norm_eps", 1e-6),
        ],
    ),
    (
        "vision_config",
        &[("patch_size", 16.0), ("layer_norm_eps", 1e-6)],
    ),
];

/// A whole `CLIPModel` (or `SiglipModel`) configuration.
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
    /// Width of the shared embedding space (SigLIP: the text head's width).
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    /// The architecture, from `model_type`.
    #[serde(skip)]
    pub family: Family,
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
        let mut value: serde_json::Value = serde_json::from_str(json)?;
        let family = match value.get("model_type").and_then(|v| v.as_str()) {
            None | Some("clip") => Family::Clip,
            Some("siglip") => Family::Siglip,
            Some("siglip2") => bail!(
                "model_type is \"siglip2\" (SigLIP 2 NaFlex, variable resolution); foodclip runs \
                 the fixed-resolution SigLIP 2 checkpoints (model_type \"siglip\", such as \
                 google/siglip2-base-patch16-224)"
            ),
            Some(kind) => bail!(
                "model_type is {kind:?}; foodclip runs CLIP and SigLIP models (model_type \"clip\" or \"siglip\")"
            ),
        };
        if family == Family::Siglip {
            siglip_defaults(&mut value)?;
        }
        let mut config: ClipConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let hint = if field.ends_with("hidden_act") {
                " (foodclip supports CLIP configs with hidden_act quick_gelu, gelu, gelu_new)"
            } else {
                ""
            };
            anyhow::anyhow!("field {field}: {}{hint}", e.into_inner())
        })?;
        config.family = family;
        if family == Family::Siglip {
            let t = &config.text_config;
            config.projection_dim = t.projection_size.unwrap_or(t.hidden_size);
        }
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
        let t = &self.text_config;
        let v = &self.vision_config;
        if self.family == Family::Siglip {
            if !v.vision_use_head {
                bail!("vision_config.vision_use_head is false; SigLIP image embeddings come from its head");
            }
            if self.projection_dim != v.hidden_size {
                bail!(
                    "text_config.projection_size {} differs from vision_config.hidden_size {}: \
                     the two towers' embeddings must have one width",
                    self.projection_dim,
                    v.hidden_size
                );
            }
        }
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
        // SigLIP reads the last position, not EOS: its configs keep CLIP's unused default.
        if self.family == Family::Clip {
            within(
                "text_config.eos_token_id",
                t.eos_token_id as usize,
                0,
                t.vocab_size - 1,
            )?;
        }
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

/// Fills the fields a SigLIP `config.json` leaves out with SigLIP's defaults (which differ
/// from CLIP's), so that the structs' CLIP defaults only apply to fields the two share.
fn siglip_defaults(value: &mut serde_json::Value) -> Result<()> {
    let Some(root) = value.as_object_mut() else {
        bail!("config.json is not a JSON object");
    };
    for (tower, fields) in SIGLIP_DEFAULTS {
        let entry = root.entry(tower).or_insert_with(|| serde_json::json!({}));
        let Some(tower_map) = entry.as_object_mut() else {
            bail!("field {tower}: not a JSON object");
        };
        for (name, default) in fields {
            tower_map.entry(*name).or_insert_with(|| {
                if default.fract() == 0.0 {
                    serde_json::json!(*default as u64)
                } else {
                    serde_json::json!(default)
                }
            });
        }
        tower_map
            .entry("hidden_act")
            .or_insert_with(|| serde_json::json!("gelu_pytorch_tanh"));
    }
    Ok(())
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
        let e = ClipConfig::from_json(r#"{"model_type": "siglip2"}"#).unwrap_err();
        assert!(format!("{e:#}").contains("NaFlex"));
        let e = ClipConfig::from_json(r#"{"model_type": "blip"}"#).unwrap_err();
        assert!(format!("{e:#}").contains("blip"));
    }

    #[test]
    fn siglip_configs_take_siglips_defaults() {
        // The multilingual SigLIP base's config.json, as the hub holds it: almost nothing.
        let c = ClipConfig::from_json(
            r#"{"model_type": "siglip", "text_config": {"vocab_size": 250000},
                "vision_config": {"image_size": 256}}"#,
        )
        .unwrap();
        assert_eq!(c.family, Family::Siglip);
        let (t, v) = (&c.text_config, &c.vision_config);
        assert_eq!(
            (t.vocab_size, t.hidden_size, t.num_attention_heads),
            (250000, 768, 12)
        );
        assert_eq!((t.max_position_embeddings, t.layer_norm_eps), (64, 1e-6));
        assert_eq!(
            (v.image_size, v.patch_size, v.layer_norm_eps),
            (256, 16, 1e-6)
        );
        assert_eq!(t.hidden_act, Activation::GeluTanh);
        assert_eq!(v.hidden_act, Activation::GeluTanh);
        assert_eq!(c.projection_dim, 768);
        let e = ClipConfig::from_json(
            r#"{"model_type": "siglip", "text_config": {"projection_size": 512}}"#,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("one width"), "{e:#}");
        // CLIP keeps CLIP's defaults.
        assert_eq!(ClipConfig::from_json("{}").unwrap().family, Family::Clip);
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
