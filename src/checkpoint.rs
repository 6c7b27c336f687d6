//! A loaded checkpoint: config, model, tokenizer and image preprocessing, all read from the
//! checkpoint's own files.

use crate::model::{tokenizer::PromptTokenizer, weights, ClipConfig, ClipModel, Precision};
use crate::preprocess::PreprocessConfig;
use crate::source::{HubOptions, ModelSource};
use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Everything needed to embed photos and prompts with one checkpoint.
pub struct Checkpoint {
    /// Where it came from (`hub:owner/name@rev` or `local:/dir`).
    pub identity: String,
    /// The parsed `config.json`.
    pub config: ClipConfig,
    /// The model.
    pub model: ClipModel,
    /// The prompt tokenizer.
    pub tokenizer: PromptTokenizer,
    /// The image preprocessing.
    pub preprocess: PreprocessConfig,
    /// Where the tensors live.
    pub device: Device,
    /// Number format the model runs in.
    pub precision: Precision,
}

impl Checkpoint {
    /// Loads every file of `source`, fetching from the hub as needed.
    ///
    /// ```no_run
    /// use foodclip::{checkpoint::Checkpoint, registry::Registry, source::{HubOptions, ModelSource}};
    /// let source = ModelSource::resolve(Some("./my-checkpoint"), &Registry::builtin())?;
    /// let checkpoint = Checkpoint::load(&source, &HubOptions::default(), &candle_core::Device::Cpu)?;
    /// println!("context: {} tokens", checkpoint.tokenizer.max_len());
    /// # anyhow::Ok(())
    /// ```
    pub fn load(source: &ModelSource, hub: &HubOptions, device: &Device) -> Result<Self> {
        Self::load_with(source, hub, device, Precision::F32)
    }

    /// Like [`Checkpoint::load`], running the model in `precision`.
    pub fn load_with(
        source: &ModelSource,
        hub: &HubOptions,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        let files = source.fetcher(hub);
        let config = ClipConfig::from_file(&files.file("config.json")?)?;
        let preprocess = load_preprocess(source, hub)?;
        let size = config.vision_config.image_size as u32;
        let probe = preprocess.output_size(size * 3, size * 2);
        if probe != (size, size) {
            bail!(
                "preprocessor_config.json makes {}x{} images but the model takes {size}x{size}",
                probe.0,
                probe.1
            );
        }
        let tokenizer = PromptTokenizer::load(
            &files.file("tokenizer.json")?,
            files.optional_file("tokenizer_config.json")?.as_deref(),
            config.text_config.max_position_embeddings,
        )?;
        let weights_path = files.weights()?;
        let vb = weights::open(&weights_path, precision.dtype(), device)?;
        let model = ClipModel::load(vb, &config).with_context(|| {
            format!("{} does not match its config.json", weights_path.display())
        })?;
        Ok(Self {
            identity: source.identity(),
            config,
            model,
            tokenizer,
            preprocess,
            device: device.clone(),
            precision,
        })
    }
}

/// Loads only the preprocessing of `source` (for `foodclip preview`, which needs no weights).
pub fn load_preprocess(source: &ModelSource, hub: &HubOptions) -> Result<PreprocessConfig> {
    PreprocessConfig::from_file(&source.fetcher(hub).file("preprocessor_config.json")?)
}
