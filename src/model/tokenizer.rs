//! Prompt tokenisation with the checkpoint's own `tokenizer.json`, truncated as transformers
//! truncates (`truncation=True`: cut to the context, special tokens such as EOS kept).
//!
//! SigLIP models were trained on lower-cased text: transformers lower-cases for them (SigLIP's
//! tokenizer by its `do_lower_case`, SigLIP 2's by a `Lowercase` normaliser it puts in front of
//! Gemma's), and so does [`PromptTokenizer::lowercasing`].

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Token ids of one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The ids, special tokens included.
    pub ids: Vec<u32>,
    /// Whether the prompt was cut to fit the context.
    pub truncated: bool,
}

/// A checkpoint's tokenizer, set to truncate at the model's context.
pub struct PromptTokenizer {
    /// Truncates at `max_len`.
    inner: Tokenizer,
    /// The same tokenizer without truncation, to tell when a prompt was cut.
    untruncated: Tokenizer,
    max_len: usize,
    /// The id of `tokenizer_config.json`'s `pad_token`, if it names one the vocabulary has.
    pad_id: Option<u32>,
    /// Whether batches are padded on the left (`padding_side`).
    pads_left: bool,
    lowercase: bool,
}

/// Tokenizer classes whose `padding_side` defaults to the left in transformers (Gemma's, which
/// SigLIP 2 uses).
const LEFT_PADDING_CLASSES: [&str; 3] =
    ["GemmaTokenizer", "GemmaTokenizerFast", "Siglip2Tokenizer"];

impl PromptTokenizer {
    /// Loads `tokenizer.json`; `tokenizer_config.json` (optional) may lower the length limit
    /// through `model_max_length`. `context` is the model's `max_position_embeddings`.
    pub fn load(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        context: usize,
    ) -> Result<Self> {
        let mut inner = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", tokenizer_json.display()))?;
        let mut max_len = context;
        let mut pad_id = None;
        let mut pads_left = false;
        if let Some(path) = tokenizer_config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            if let Some(m) = value.get("model_max_length").and_then(Value::as_f64) {
                if m >= 1.0 && m < max_len as f64 {
                    max_len = m as usize;
                }
            }
            // A plain string, or an AddedToken's {"content": ...}.
            let pad = value.get("pad_token");
            let pad = pad
                .and_then(Value::as_str)
                .or_else(|| pad.and_then(|p| p.get("content")).and_then(Value::as_str));
            pad_id = pad.and_then(|p| inner.token_to_id(p));
            pads_left = match value.get("padding_side").and_then(Value::as_str) {
                Some(side) => side == "left",
                None => value
                    .get("tokenizer_class")
                    .and_then(Value::as_str)
                    .is_some_and(|c| LEFT_PADDING_CLASSES.contains(&c)),
            };
        }
        inner.with_padding(None);
        let untruncated = inner.clone();
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("cannot set truncation on {}: {e}", tokenizer_json.display()))?;
        Ok(Self {
            inner,
            untruncated,
            max_len,
            pad_id,
            pads_left,
            lowercase: false,
        })
    }

    /// The same tokenizer, lower-casing every prompt first (SigLIP's).
    pub fn lowercasing(self) -> Self {
        Self {
            lowercase: true,
            ..self
        }
    }

    /// The padding token's id, as `tokenizer_config.json` names it.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Whether transformers pads this tokenizer's batches on the left (`padding_side`, or its
    /// class's default).
    pub fn pads_left(&self) -> bool {
        self.pads_left
    }

    /// The longest sequence produced, in tokens.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenises one prompt, adding the special tokens.
    pub fn encode(&self, prompt: &str) -> Result<Tokens> {
        // Character by character, as tokenizers' `Lowercase` normaliser does.
        let lowered: String;
        let prompt = if self.lowercase {
            lowered = prompt.chars().flat_map(char::to_lowercase).collect();
            &lowered
        } else {
            prompt
        };
        let encoding = self
            .inner
            .encode(prompt, true)
            .map_err(|e| anyhow!("cannot tokenize {prompt:?}: {e}"))?;
        let ids = encoding.get_ids().to_vec();
        // tokenizers drops the overflow record when a post-processor adds special tokens, so
        // compare with the full length instead.
        let truncated = ids.len() >= self.max_len
            && self
                .untruncated
                .encode(prompt, true)
                .map_err(|e| anyhow!("cannot tokenize {prompt:?}: {e}"))?
                .len()
                > ids.len();
        Ok(Tokens { ids, truncated })
    }
}
