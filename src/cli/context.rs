//! What every command derives from the global flags, worked out once: the terminal UI, hub
//! options, the registry, the cache root, and how to load the model and its label embeddings.

use super::flags::{ClassArgs, Cli, DeviceKind, RegionArgs};
use super::ui::Ui;
use crate::adapter::Adapter;
use crate::cache::{default_root, TextCache};
use crate::checkpoint::Checkpoint;
use crate::classify::Classifier;
use crate::labels::{check, LabelSet, Templates};
use crate::model::{Precision, Scoring};
use crate::preprocess::Fidelity;
use crate::registry::Registry;
use crate::source::{offline_from_env, HubOptions, ModelSource};
use crate::store::{Kind, Store};
use anyhow::{bail, Context as _, Result};
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The global flags, resolved.
pub(super) struct Context {
    pub ui: Ui,
    pub hub: HubOptions,
    pub registry: Registry,
    pub fidelity: Fidelity,
    /// `--site`: a shared store's site.
    pub site: Option<String>,
    model: Option<String>,
    device: DeviceKind,
    precision: Precision,
    /// Where prompt embeddings and checkpoint fingerprints are kept; `None` with `--no-cache`
    /// or on a platform without a cache directory.
    cache_root: Option<PathBuf>,
    /// The cache was wanted, but the platform has no cache directory (warn when it is used).
    platform_has_no_cache: bool,
}

impl Context {
    /// Resolves the global flags (and sets up the worker threads).
    pub fn new(cli: &Cli) -> Result<Self> {
        if let Some(n) = cli.threads {
            if n == 0 {
                bail!("--threads must be at least 1");
            }
            // candle's matmuls read RAYON_NUM_THREADS; decoding runs on the same global pool.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .context("cannot start worker threads")?;
        }
        let platform_root = cli.cache_dir.clone().or_else(default_root);
        Ok(Self {
            ui: Ui { quiet: cli.quiet },
            hub: HubOptions {
                offline: cli.offline || offline_from_env(),
                progress: !cli.quiet && io::stderr().is_terminal(),
            },
            registry: Registry::builtin(),
            fidelity: if cli.exact_preprocess {
                Fidelity::Exact
            } else {
                Fidelity::Fast
            },
            site: cli.site.clone(),
            model: cli.model.clone(),
            device: cli.device,
            precision: cli.precision,
            platform_has_no_cache: !cli.no_cache && platform_root.is_none(),
            cache_root: platform_root.filter(|_| !cli.no_cache),
        })
    }

    /// The checkpoint `--model` names.
    pub fn source(&self) -> Result<ModelSource> {
        ModelSource::resolve(self.model.as_deref(), &self.registry)
    }

    /// Loads the model. `open_only`: build no tower up front (re-scoring stored embeddings
    /// needs none).
    pub fn model(&self, open_only: bool) -> Result<Checkpoint> {
        let source = self.source()?;
        let device = match self.device {
            DeviceKind::Cpu => candle_core::Device::Cpu,
            DeviceKind::Cuda => candle_core::Device::new_cuda(0)
                .context("--device cuda: no usable GPU (build with `--features cuda`)")?,
        };
        let loaded = if open_only {
            Checkpoint::open(
                &source,
                &self.hub,
                &device,
                self.precision,
                self.cache_root.as_deref(),
            )
        } else {
            Checkpoint::load_with(
                &source,
                &self.hub,
                &device,
                self.precision,
                self.cache_root.as_deref(),
            )
        };
        let ckpt = loaded.with_context(|| format!("cannot load model {}", source.identity()))?;
        if let Some(note) = &ckpt.note {
            self.ui.warn(note);
        }
        Ok(ckpt)
    }

    /// The checkpoint's fingerprint, remembered in the cache directory unless `--no-cache`.
    pub fn fingerprint(&self, ckpt: &Checkpoint) -> Result<String> {
        match &self.cache_root {
            Some(root) => ckpt.fingerprint_cached(root),
            None => ckpt.fingerprint(),
        }
    }

    /// The prompt-embedding cache for `ckpt`, unless `--no-cache`.
    fn prompt_cache(&self, ckpt: &Checkpoint) -> Result<Option<TextCache>> {
        if self.platform_has_no_cache {
            self.ui.warn(
                "this platform has no cache directory; set FOODCLIP_CACHE_DIR to cache label embeddings",
            );
        }
        let Some(root) = &self.cache_root else {
            return Ok(None);
        };
        Ok(Some(TextCache::new(
            root,
            &self.fingerprint(ckpt)?,
            ckpt.precision,
        )))
    }

    /// Embeds the classes of `labels` through the prompt cache, telling the user when prompts
    /// had to be encoded.
    pub fn classifier(
        &self,
        ckpt: &Checkpoint,
        labels: &LabelSet,
        templates: &Templates,
    ) -> Result<Classifier> {
        let ui = &self.ui;
        let cache = self.prompt_cache(ckpt)?;
        let start = Instant::now();
        let classifier = Classifier::new(ckpt, labels, templates, cache.as_ref(), |w| ui.warn(&w))?;
        let stats = classifier.prompt_stats();
        if stats.corrupt > 0 {
            ui.warn(&format!(
                "{} damaged entries in the prompt cache were recomputed and replaced",
                stats.corrupt
            ));
        }
        if let Some(e) = &stats.write_error {
            ui.warn(e);
        }
        if stats.encoded > 0 {
            let kept = cache.map_or(String::new(), |c| {
                format!("; cached in {}", c.dir().display())
            });
            ui.note(&format!(
                "encoded {} label prompts in {:.1} s{kept}",
                stats.encoded,
                start.elapsed().as_secs_f64()
            ));
        }
        Ok(classifier)
    }

    /// The classes of a run: from `--labels`, or from `--adapter` (which brings them; a label
    /// file beside it must list the same classes). Returns the adapter and the templates too.
    pub fn classes(&self, args: &ClassArgs) -> Result<(LabelSet, Option<Adapter>, Templates)> {
        let templates = Templates::from_args(&args.templates.templates)?;
        let adapter = args.adapter.as_deref().map(Adapter::load).transpose()?;
        let labels = match (args.labels.as_deref(), &adapter) {
            (Some(file), Some(a)) => {
                let set = LabelSet::load(file)?;
                let names = |l: &LabelSet| -> Vec<Vec<String>> {
                    l.classes.iter().map(|c| c.names.clone()).collect()
                };
                if names(&set) != names(&a.labels) {
                    bail!(
                        "{} lists other classes than the adapter {} ({} classes); leave out \
                         --labels, or make the adapter again with this file",
                        file.display(),
                        a.labels.path.display(),
                        a.labels.classes.len()
                    );
                }
                set
            }
            (Some(file), None) => LabelSet::load(file)?,
            (None, Some(a)) => a.labels.clone(),
            (None, None) => bail!("give --labels FILE (or --adapter FILE)"),
        };
        Ok((labels, adapter, templates))
    }

    /// What ranks the user's classes: the adapter's classes and cache when there is one (made
    /// with this checkpoint, or refused), else the label prompts' embeddings. Warns when a
    /// softmax over one class would give every photo 100%.
    pub fn scorer(
        &self,
        ckpt: &Checkpoint,
        labels: &LabelSet,
        templates: &Templates,
        adapter: Option<&Adapter>,
    ) -> Result<Classifier> {
        let scoring = ckpt.model.scoring();
        if let ([class], Scoring::Softmax { .. }) = (&labels.classes[..], scoring) {
            self.ui.warn(&format!(
                "{} has one class ({}): this model's probabilities are shares among the classes, \
                 so every photo gets 100%; list the other dishes that may be there too",
                labels.path.display(),
                class.display()
            ));
        }
        match adapter {
            None => self.classifier(ckpt, labels, templates),
            Some(a) => {
                self.check_adapter(ckpt, a)?;
                if !matches!(templates, Templates::Default) {
                    bail!("--adapter brings its class embeddings; leave out --template");
                }
                Classifier::from_adapter(a, scoring, &ckpt.device)
            }
        }
    }

    /// Refuses an adapter made with another checkpoint than `ckpt`.
    pub fn check_adapter(&self, ckpt: &Checkpoint, adapter: &Adapter) -> Result<()> {
        let ours = self.fingerprint(ckpt)?;
        if adapter.checkpoint != ours {
            bail!(
                "{} was made with checkpoint {}, but the model is {} ({ours}); pass the --model \
                 it was made with, or adapt again",
                adapter.labels.path.display(),
                adapter.checkpoint,
                ckpt.identity
            );
        }
        if adapter.support.dim != ckpt.config.projection_dim {
            bail!(
                "{} does not fit the model's embeddings",
                adapter.labels.path.display()
            );
        }
        Ok(())
    }

    /// The kind of index rows this run makes or reads: the checkpoint, the preprocessing and
    /// precision, and the regions' source.
    pub fn index_kind(&self, ckpt: &Checkpoint, regions: &RegionArgs) -> Result<Kind> {
        let fidelity = match self.fidelity {
            Fidelity::Exact => "exact",
            Fidelity::Fast => "fast",
        };
        Ok(Kind {
            checkpoint: self.fingerprint(ckpt)?,
            mode: format!("{fidelity}-{}", ckpt.precision),
            source: regions.source_id()?,
        })
    }

    /// Opens the store `db` (see [`Store::open`]) with `--site`.
    pub fn store(&self, db: &Path, create: bool) -> Result<Store> {
        Store::open(db, create, self.site.as_deref())
    }

    /// Warns once when the labels use a language the model's registry entry lacks.
    pub fn warn_language(&self, ckpt: &Checkpoint, labels: &LabelSet) {
        let entry = ckpt.source.entry(&self.registry);
        if let Some(f) = entry.and_then(|e| check::language_mismatch(labels, e, &self.registry)) {
            self.ui.warn(&f.located(&labels.path));
        }
    }
}
