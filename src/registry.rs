//! The registry of known checkpoints: one TOML file per model under `models/`, compiled into the
//! binary so `foodclip` works from any directory.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One registered checkpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Short name for `--model`.
    pub name: String,
    /// Hugging Face hub repository, `owner/name`.
    pub hub_id: String,
    /// Pinned commit, so every user gets the same files.
    pub revision: String,
    /// Weight file to fetch; `model.safetensors` (then `pytorch_model.bin`) when absent.
    #[serde(default)]
    pub weights: Option<String>,
    /// Languages the text encoder was trained on (ISO 639-1).
    pub languages: Vec<String>,
    /// Licence of the weights.
    pub license: String,
    /// Whether this is the model used without `--model`.
    #[serde(default)]
    pub default: bool,
    /// Anything a user should know.
    #[serde(default)]
    pub notes: String,
}

/// The TOML files of `models/`, embedded at build time.
const FILES: &[(&str, &str)] = &[
    (
        "clip-vit-base-patch32-ko.toml",
        include_str!("../models/clip-vit-base-patch32-ko.toml"),
    ),
    (
        "clip-vit-large-patch14-ko.toml",
        include_str!("../models/clip-vit-large-patch14-ko.toml"),
    ),
    (
        "clip-vit-base-patch32.toml",
        include_str!("../models/clip-vit-base-patch32.toml"),
    ),
    (
        "clip-vit-base-patch16.toml",
        include_str!("../models/clip-vit-base-patch16.toml"),
    ),
    (
        "clip-vit-large-patch14.toml",
        include_str!("../models/clip-vit-large-patch14.toml"),
    ),
    (
        "siglip-base-patch16-256-multilingual.toml",
        include_str!("../models/siglip-base-patch16-256-multilingual.toml"),
    ),
    (
        "siglip2-base-patch16-224.toml",
        include_str!("../models/siglip2-base-patch16-224.toml"),
    ),
];

/// All registered models.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Entries in registry order.
    pub entries: Vec<ModelEntry>,
}

impl Registry {
    /// The built-in registry.
    ///
    /// ```
    /// let registry = foodclip::registry::Registry::builtin();
    /// let default = registry.default_entry();
    /// assert!(default.languages.iter().any(|l| l == "ko"));
    /// ```
    pub fn builtin() -> Self {
        Self::parse(FILES).expect("the built-in registry is checked by tests")
    }

    fn parse(files: &[(&str, &str)]) -> Result<Self> {
        let mut entries = Vec::new();
        for (file, text) in files {
            let entry: ModelEntry =
                toml::from_str(text).with_context(|| format!("models/{file}"))?;
            entries.push(entry);
        }
        let defaults = entries.iter().filter(|e| e.default).count();
        if defaults != 1 {
            bail!("the registry must mark exactly one default model, found {defaults}");
        }
        Ok(Self { entries })
    }

    /// The default model.
    pub fn default_entry(&self) -> &ModelEntry {
        self.entries
            .iter()
            .find(|e| e.default)
            .expect("checked on parse")
    }

    /// Looks a model up by registry name or hub id.
    pub fn find(&self, name: &str) -> Option<&ModelEntry> {
        self.entries
            .iter()
            .find(|e| e.name == name || e.hub_id == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_models_is_embedded_and_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        let r = Registry::parse(FILES).unwrap();
        for e in &r.entries {
            assert_eq!(e.revision.len(), 40, "{}: pin a full commit hash", e.name);
            assert!(e.hub_id.contains('/'));
            assert_eq!(
                format!("{}.toml", e.name),
                FILES.iter().find(|(_, t)| t.contains(&e.hub_id)).unwrap().0
            );
        }
    }

    #[test]
    fn default_speaks_korean_and_english() {
        let r = Registry::builtin();
        let d = r.default_entry();
        assert!(d.languages.contains(&"ko".to_string()) && d.languages.contains(&"en".to_string()));
        assert_eq!(
            r.find("openai/clip-vit-base-patch32").unwrap().name,
            "clip-vit-base-patch32"
        );
    }

    #[test]
    fn rejects_two_defaults() {
        let a = r#"name = "a"
hub_id = "x/a"
revision = "r"
languages = ["en"]
license = "MIT"
default = true"#;
        assert!(Registry::parse(&[("a.toml", a), ("b.toml", a)]).is_err());
    }
}
