//! Stored image embeddings, for re-scoring photos against other label files without running the
//! image encoder again.
//!
//! The file is a safetensors file with one tensor, `embeddings` (`photos x dim`, f32, each row
//! L2-normalised), and these metadata strings:
//!
//! - `format`: `foodclip-embeddings/1`;
//! - `checkpoint`: the checkpoint's fingerprint
//!   ([`crate::checkpoint::Checkpoint::fingerprint`]); embeddings from another checkpoint are
//!   refused;
//! - `paths`: a JSON array of the photos' paths, one per row: each its text, or
//!   `{"bytes": "<base64>"}` for a path that is not UTF-8 (see [`crate::fsutil`]);
//! - `regions` (only when rows are regions of photos): a JSON array, one per row, of `null` or
//!   the region (`index`, `box` `[x1, y1, x2, y2]`, and `name`, `id`, `label`, `image_id` when
//!   known; see [`crate::regions::Region`]).
//!
//! Python reads it with `safetensors.safe_open(path, "np")`: `.get_tensor("embeddings")` and
//! `json.loads(.metadata()["paths"])`.

use crate::fsutil::{path_from_json, write_atomically, PathJson};
use crate::regions::Region;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FORMAT: &str = "foodclip-embeddings/1";

/// Image embeddings with their photos and the checkpoint that made them.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEmbeddings {
    /// Fingerprint of the checkpoint.
    pub checkpoint: String,
    /// One path per row.
    pub paths: Vec<PathBuf>,
    /// One region per row (`None` for a whole photo), or empty when no row is a region.
    pub regions: Vec<Option<Region>>,
    /// Width of each row.
    pub dim: usize,
    /// Row-major `paths.len() x dim` values.
    pub values: Vec<f32>,
}

/// The metadata of a safetensors file whose `format` entry is `format`; anything else is an
/// error. Shared by the files foodclip writes (stored embeddings, adapters).
pub(crate) fn metadata(bytes: &[u8], format: &str) -> Result<HashMap<String, String>> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("{e}"))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(format) {
        bail!("no format {format:?} in its metadata");
    }
    Ok(meta)
}

/// Little-endian 4-byte values (f32, u32) from a tensor's bytes.
pub(crate) fn le_values<T>(data: &[u8], from: fn([u8; 4]) -> T) -> Vec<T> {
    data.chunks_exact(4)
        .map(|c| from(c.try_into().expect("4 bytes")))
        .collect()
}

impl StoredEmbeddings {
    /// Writes the file atomically.
    ///
    /// ```
    /// use foodclip::embeddings::StoredEmbeddings;
    /// let dir = tempfile::tempdir()?;
    /// let file = dir.path().join("trays.safetensors");
    /// let stored = StoredEmbeddings {
    ///     checkpoint: "hub:openai/clip-vit-base-patch32@3d74acf".into(),
    ///     paths: vec!["a.jpg".into(), "b.jpg".into()],
    ///     regions: Vec::new(),
    ///     dim: 2,
    ///     values: vec![0.6, 0.8, 1.0, 0.0],
    /// };
    /// stored.save(&file)?;
    /// assert_eq!(StoredEmbeddings::load(&file)?, stored);
    /// # anyhow::Ok(())
    /// ```
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes: Vec<u8> = self.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![self.paths.len(), self.dim], &bytes)
            .map_err(|e| anyhow!("cannot store embeddings: {e}"))?;
        let mut metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("checkpoint".to_string(), self.checkpoint.clone()),
            (
                "paths".to_string(),
                serde_json::to_string(&self.paths.iter().map(|p| PathJson(p)).collect::<Vec<_>>())?,
            ),
        ]);
        if self.regions.iter().any(Option::is_some) {
            if self.regions.len() != self.paths.len() {
                bail!("cannot store embeddings: not one region per path");
            }
            metadata.insert("regions".to_string(), serde_json::to_string(&self.regions)?);
        }
        let file = safetensors::tensor::serialize([("embeddings", view)], Some(metadata))
            .map_err(|e| anyhow!("cannot store embeddings: {e}"))?;
        write_atomically(path, &file).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads a file written by [`StoredEmbeddings::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&bytes).with_context(|| {
            format!(
                "{} is not a foodclip embeddings file (write one with --save-embeddings)",
                path.display()
            )
        })
    }

    fn parse(bytes: &[u8]) -> Result<Self> {
        let meta = metadata(bytes, FORMAT)?;
        let field = |k: &str| {
            meta.get(k)
                .ok_or_else(|| anyhow!("no {k:?} in its metadata"))
        };
        let paths: Vec<serde_json::Value> = serde_json::from_str(field("paths")?)?;
        let paths = paths
            .iter()
            .map(|p| path_from_json(p).ok_or_else(|| anyhow!("a path in its metadata is {p}")))
            .collect::<Result<Vec<PathBuf>>>()?;
        let regions: Vec<Option<Region>> = match meta.get("regions") {
            Some(r) => serde_json::from_str(r).context("unreadable regions in its metadata")?,
            None => Vec::new(),
        };
        if !regions.is_empty() && regions.len() != paths.len() {
            bail!(
                "its metadata holds {} regions for {} paths",
                regions.len(),
                paths.len()
            );
        }
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{e}"))?;
        let t = tensors.tensor("embeddings").map_err(|e| anyhow!("{e}"))?;
        let [rows, dim] = t.shape() else {
            bail!("embeddings are not a matrix");
        };
        if t.dtype() != Dtype::F32 || *rows != paths.len() {
            bail!("embeddings are not f32 with one row per path");
        }
        if rows.checked_mul(*dim) != Some(t.data().len() / 4) {
            bail!(
                "embeddings hold {} bytes, not {rows} x {dim} f32",
                t.data().len()
            );
        }
        let values = le_values(t.data(), f32::from_le_bytes);
        Ok(Self {
            checkpoint: field("checkpoint")?.clone(),
            paths,
            regions,
            dim: *dim,
            values,
        })
    }
}
