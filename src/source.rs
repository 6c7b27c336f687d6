//! Where a checkpoint's files come from: a local directory, or the Hugging Face hub through
//! hf-hub's standard cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
//! Files already in the cache are used without touching the network; `HF_HUB_OFFLINE=1` or
//! `--offline` forbids the network altogether.

use crate::registry::Registry;
use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// How to reach the hub.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Never use the network; fail if a file is not cached.
    pub offline: bool,
    /// Show a download progress bar on stderr.
    pub progress: bool,
}

/// A checkpoint on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubModel {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// Weight file, if the registry names one.
    pub weights: Option<String>,
}

/// A resolved `--model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory holding `config.json`, the weights, `tokenizer.json` and `preprocessor_config.json`.
    Local(PathBuf),
    /// A hub repository at a revision.
    Hub(HubModel),
}

const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

impl ModelSource {
    /// Resolves `--model`: a local directory, a registry name, or a hub id (`owner/name[@revision]`).
    /// `None` is the registry's default model.
    pub fn resolve(spec: Option<&str>, registry: &Registry) -> Result<Self> {
        let from_entry = |e: &crate::registry::ModelEntry, revision: Option<&str>| {
            ModelSource::Hub(HubModel {
                repo: e.hub_id.clone(),
                revision: revision.unwrap_or(&e.revision).to_string(),
                weights: e.weights.clone(),
            })
        };
        let Some(spec) = spec else {
            return Ok(from_entry(registry.default_entry(), None));
        };
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::Local(path.to_path_buf()));
        }
        if path.exists() {
            bail!("--model {spec}: is a file; give the checkpoint's directory, a registry name or a hub id");
        }
        if let Some(entry) = registry.find(spec) {
            return Ok(from_entry(entry, None));
        }
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        let looks_like_hub_id = !spec.starts_with(['.', '/', '~'])
            && repo.split('/').count() == 2
            && repo.split('/').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            });
        if looks_like_hub_id && !revision.is_empty() {
            if let Some(entry) = registry.find(repo) {
                return Ok(from_entry(entry, Some(revision)));
            }
            return Ok(ModelSource::Hub(HubModel {
                repo: repo.into(),
                revision: revision.into(),
                weights: None,
            }));
        }
        let names: Vec<&str> = registry.entries.iter().map(|e| e.name.as_str()).collect();
        bail!(
            "--model {spec}: no such directory, registered name or hub id (registered: {}; see `foodclip models list`)",
            names.join(", ")
        )
    }

    /// The registry entry of a hub source's repository, if registered.
    pub fn entry<'r>(&self, registry: &'r Registry) -> Option<&'r crate::registry::ModelEntry> {
        match self {
            ModelSource::Hub(h) => registry.find(&h.repo),
            ModelSource::Local(_) => None,
        }
    }

    /// A stable identity for caches and outputs: `hub:owner/name@revision` or `local:/abs/dir`.
    pub fn identity(&self) -> String {
        match self {
            ModelSource::Local(dir) => {
                format!(
                    "local:{}",
                    std::fs::canonicalize(dir)
                        .unwrap_or_else(|_| dir.clone())
                        .display()
                )
            }
            ModelSource::Hub(h) => format!("hub:{}@{}", h.repo, h.revision),
        }
    }

    /// Opens the source for fetching files.
    pub fn fetcher(&self, options: &HubOptions) -> Fetcher {
        Fetcher {
            source: self.clone(),
            options: options.clone(),
            cache: hub_cache_dir(),
        }
    }
}

/// Fetches a checkpoint's files from its source.
pub struct Fetcher {
    source: ModelSource,
    options: HubOptions,
    cache: PathBuf,
}

impl Fetcher {
    /// A required file.
    pub fn file(&self, name: &str) -> Result<PathBuf> {
        match self.optional_file(name)? {
            Some(p) => Ok(p),
            None => Err(self.missing(name)),
        }
    }

    /// A file the checkpoint may lack.
    pub fn optional_file(&self, name: &str) -> Result<Option<PathBuf>> {
        match &self.source {
            ModelSource::Local(dir) => {
                let p = dir.join(name);
                Ok(p.is_file().then_some(p))
            }
            ModelSource::Hub(h) => self.hub_file(h, name),
        }
    }

    /// The weights: the registry's choice, else `model.safetensors`, else `pytorch_model.bin`.
    pub fn weights(&self) -> Result<PathBuf> {
        if let ModelSource::Hub(HubModel {
            weights: Some(w), ..
        }) = &self.source
        {
            return self.file(w);
        }
        for name in WEIGHT_FILES {
            if let Some(p) = self.optional_file(name)? {
                return Ok(p);
            }
        }
        Err(self.missing("model.safetensors or pytorch_model.bin"))
    }

    fn missing(&self, what: &str) -> anyhow::Error {
        match &self.source {
            ModelSource::Local(dir) => anyhow!("{} has no {what}", dir.display()),
            ModelSource::Hub(h) if self.options.offline => anyhow!(
                "{what} of {}@{} is not in the cache {} and the network is off (HF_HUB_OFFLINE / --offline)",
                h.repo,
                h.revision,
                self.cache.display()
            ),
            ModelSource::Hub(h) => anyhow!("{}@{} has no {what}", h.repo, h.revision),
        }
    }

    fn hub_file(&self, h: &HubModel, name: &str) -> Result<Option<PathBuf>> {
        if let Some(p) = cached_file(&self.cache, &h.repo, &h.revision, name) {
            return Ok(Some(p));
        }
        if self.options.offline {
            return Ok(None);
        }
        let api = ApiBuilder::from_cache(Cache::new(self.cache.clone()))
            .with_progress(self.options.progress)
            .build()
            .context("cannot set up the Hugging Face hub client")?;
        let repo = api.repo(Repo::with_revision(
            h.repo.clone(),
            RepoType::Model,
            h.revision.clone(),
        ));
        match repo.get(name) {
            Ok(p) => Ok(Some(p)),
            Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
            Err(e) => Err(anyhow!(
                "cannot download {name} of {}@{}: {e}",
                h.repo,
                h.revision
            )),
        }
    }
}

/// The hub cache directory, as huggingface_hub computes it.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    Cache::default().path().clone()
}

/// Whether `HF_HUB_OFFLINE` asks for offline mode.
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// Looks a file up in the hub cache layout: `models--owner--name/snapshots/<commit>/<file>`, the
/// commit read from `refs/<revision>` unless the revision is a commit hash itself.
fn cached_file(cache: &Path, repo: &str, revision: &str, name: &str) -> Option<PathBuf> {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        revision.to_string()
    } else {
        std::fs::read_to_string(repo_dir.join("refs").join(revision))
            .ok()?
            .trim()
            .to_string()
    };
    let p = repo_dir.join("snapshots").join(commit).join(name);
    p.is_file().then_some(p)
}
