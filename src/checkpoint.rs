//! A loaded checkpoint: config, model, tokenizer and image preprocessing, all read from the
//! checkpoint's own files.

use crate::fsutil::write_atomically;
use crate::model::{tokenizer::PromptTokenizer, weights, ClipConfig, ClipModel, Family, Precision};
use crate::preprocess::PreprocessConfig;
use crate::source::{HubOptions, ModelSource};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Everything needed to embed photos and prompts with one checkpoint.
pub struct Checkpoint {
    /// Where it came from (`hub:owner/name@rev` or `local:/dir`).
    pub identity: String,
    /// The source it was loaded from.
    pub source: ModelSource,
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
    /// Number format the model runs in (as planned: `auto` resolved).
    pub precision: Precision,
    /// Something the user should hear about how it runs (bf16 asked for, f32 run).
    pub note: Option<String>,
    /// The files read: config, tokenizer (and its config, if any), weights.
    files: Vec<PathBuf>,
    /// The local files' content hash, computed once per process.
    content_hash: OnceLock<String>,
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
        Self::load_with(source, hub, device, Precision::F32, None)
    }

    /// Like [`Checkpoint::load`], running the model in `precision`; `--precision auto`
    /// remembers what it measured under `cache` (see [`crate::model::probe`]).
    pub fn load_with(
        source: &ModelSource,
        hub: &HubOptions,
        device: &Device,
        precision: Precision,
        cache: Option<&Path>,
    ) -> Result<Self> {
        let ckpt = Self::open(source, hub, device, precision, cache)?;
        ckpt.model.build_image_tower()?;
        Ok(ckpt)
    }

    /// Reads the checkpoint's config, tokenizer and preprocessing and opens its weights, building
    /// neither tower: they are read when first used. For work that may need no tower at all, such
    /// as re-scoring stored image embeddings against cached prompts.
    pub fn open(
        source: &ModelSource,
        hub: &HubOptions,
        device: &Device,
        precision: Precision,
        cache: Option<&Path>,
    ) -> Result<Self> {
        let files = source.fetcher(hub);
        let config_path = files.file("config.json")?;
        let mut config = ClipConfig::from_file(&config_path)?;
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
        let tokenizer_path = files.file("tokenizer.json")?;
        let tokenizer_config = files.optional_file("tokenizer_config.json")?;
        let mut tokenizer = PromptTokenizer::load(
            &tokenizer_path,
            tokenizer_config.as_deref(),
            config.text_config.max_position_embeddings,
        )?;
        if config.family == Family::Siglip {
            tokenizer = tokenizer.lowercasing();
            // SigLIP reads its embedding at the last position, padding for most prompts: pad
            // with the token transformers pads with, the tokenizer's (SigLIP 2's Gemma pads
            // with 0 where its config keeps SigLIP's default 1).
            if let Some(pad) = tokenizer.pad_id() {
                config.text_config.pad_token_id = pad;
            }
            // SigLIP 2's tokenizer pads on the left, so the last position is the last token.
            config.text_config.pad_left = tokenizer.pads_left();
        }
        let weights_path = files.weights()?;
        let plan = precision.plan(device, &config.vision_config, cache)?;
        let vb = weights::open(&weights_path, plan.dtype, device)?;
        let model = ClipModel::load(vb, &config, plan.matmul)
            .with_context(|| format!("cannot read {}", weights_path.display()))?;
        Ok(Self {
            identity: source.identity(),
            source: source.clone(),
            config,
            model,
            tokenizer,
            preprocess,
            device: device.clone(),
            precision: plan.precision,
            note: plan.note,
            content_hash: OnceLock::new(),
            files: [config_path, tokenizer_path]
                .into_iter()
                .chain(tokenizer_config)
                .chain([weights_path])
                .collect(),
        })
    }

    /// What makes this checkpoint's outputs what they are, for caches and saved embeddings:
    /// `hub:owner/name@<commit>` for a hub snapshot (commits never change), otherwise
    /// `blake3:<hash>` of the config, tokenizer and weight files' contents, so an edited or
    /// replaced local checkpoint never matches its old entries.
    pub fn fingerprint(&self) -> Result<String> {
        if let Some(commit) = self.hub_commit() {
            return Ok(commit);
        }
        if let Some(hash) = self.content_hash.get() {
            return Ok(hash.clone());
        }
        let mut hasher = blake3::Hasher::new();
        // Read in large chunks (not mapped, so the weights do not count twice in resident memory),
        // each hashed on all cores.
        let mut chunk = vec![0u8; 16 << 20];
        for path in &self.files {
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            hasher.update(&file.metadata()?.len().to_le_bytes());
            loop {
                let n = read_full(&mut file, &mut chunk)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                hasher.update_rayon(&chunk[..n]);
                if n < chunk.len() {
                    break;
                }
            }
        }
        let hash = format!("blake3:{}", hasher.finalize().to_hex());
        Ok(self.content_hash.get_or_init(|| hash).clone())
    }

    /// Like [`Checkpoint::fingerprint`], remembering a local checkpoint's hash under `root`
    /// (`fingerprints-v1/`), keyed by each file's path, size and times (and inode on Unix):
    /// files that have not changed are not read again.
    pub fn fingerprint_cached(&self, root: &Path) -> Result<String> {
        if let Some(commit) = self.hub_commit() {
            return Ok(commit);
        }
        let mut key = String::new();
        for path in &self.files {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let path = std::fs::canonicalize(path)?;
            let _ = writeln!(
                key,
                "{}\0{}\0{:?}\0{}",
                path.display(),
                meta.len(),
                meta.modified().ok(),
                change_stamp(&meta)
            );
        }
        let key = blake3::hash(key.as_bytes()).to_hex().to_string();
        let memo = root
            .join("fingerprints-v1")
            .join(format!("{}.txt", &key[..32]));
        if let Ok(text) = std::fs::read_to_string(&memo) {
            if let Some((k, v)) = text.trim_end().split_once('\n') {
                if k == key && v.starts_with("blake3:") && v.len() == 7 + 64 {
                    return Ok(v.to_string());
                }
            }
        }
        let value = self.fingerprint()?;
        // A memo that cannot be written only costs the hash next time.
        let _ = std::fs::create_dir_all(memo.parent().expect("has a parent"))
            .and_then(|()| write_atomically(&memo, format!("{key}\n{value}\n").as_bytes()));
        Ok(value)
    }

    /// `hub:owner/name@<commit>` when every file comes from one hub cache snapshot
    /// (`.../snapshots/<commit>/<file>`).
    fn hub_commit(&self) -> Option<String> {
        let ModelSource::Hub(hub) = &self.source else {
            return None;
        };
        let commit = |p: &PathBuf| {
            let dir = p.parent()?;
            let name = dir.file_name()?.to_str()?;
            let is_commit = name.len() == 40 && name.chars().all(|c| c.is_ascii_hexdigit());
            (is_commit && dir.parent()?.file_name()? == "snapshots").then(|| name.to_string())
        };
        let first = commit(self.files.first()?)?;
        self.files
            .iter()
            .all(|p| commit(p).as_ref() == Some(&first))
            .then(|| format!("hub:{}@{first}", hub.repo))
    }
}

/// What changes whenever a file is rewritten, even with its old modification time restored:
/// inode and status-change time on Unix.
#[cfg(unix)]
fn change_stamp(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{}:{}.{}", meta.ino(), meta.ctime(), meta.ctime_nsec())
}

#[cfg(not(unix))]
fn change_stamp(_meta: &std::fs::Metadata) -> String {
    String::new()
}

/// Fills `buf` from `r` as far as the input goes; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Loads only the preprocessing of `source` (for `foodclip preview`, which needs no weights).
pub fn load_preprocess(source: &ModelSource, hub: &HubOptions) -> Result<PreprocessConfig> {
    PreprocessConfig::from_file(&source.fetcher(hub).file("preprocessor_config.json")?)
}
