//! The on-disk cache of prompt embeddings, so that a second run over the same label file never
//! runs the text encoder.
//!
//! Layout: `ROOT/text-v1/<model>/<prompt>.emb`, where `<model>` hashes the checkpoint's identity
//! and the precision, and `<prompt>` hashes the whole key (identity, precision, prompt). Each
//! entry holds its full key, the embedding and a BLAKE3 checksum of both; an entry that is
//! truncated, corrupted or written for another key is never trusted: it reads as
//! [`Lookup::Corrupt`] and the caller recomputes and replaces it.
//!
//! Entries are written to a temporary file and renamed into place, so a reader sees a whole entry
//! or none, and two processes filling the same cache at once are safe (the last rename wins, and
//! both wrote the same bytes). Nothing is fsynced: an entry torn by a power cut fails its checksum.

use crate::fsutil::write_atomically_unsynced;
use crate::model::Precision;
use std::io;
use std::path::{Path, PathBuf};

/// First bytes of every entry; bump the version when the layout changes.
const MAGIC: &[u8; 8] = b"FCTXTv1\n";
const CHECKSUM_LEN: usize = 32;

/// The platform's cache directory for foodclip: `$XDG_CACHE_HOME/foodclip` or
/// `~/.cache/foodclip` on Linux, `~/Library/Caches/foodclip` on macOS, `%LOCALAPPDATA%\foodclip`
/// on Windows. `None` when the platform has none. (The command line's `--cache-dir` and
/// `FOODCLIP_CACHE_DIR` take precedence.)
pub fn default_root() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("foodclip"))
}

/// What the cache holds for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A verified embedding.
    Hit(Vec<f32>),
    /// No entry.
    Miss,
    /// An entry that failed verification; recompute and [`TextCache::put`] it.
    Corrupt,
}

/// Prompt embeddings of one checkpoint at one precision.
///
/// ```
/// use foodclip::cache::{Lookup, TextCache};
/// use foodclip::model::Precision;
/// let root = std::env::temp_dir().join(format!("foodclip-doc-{}", std::process::id()));
/// let cache = TextCache::new(&root, "hub:openai/clip-vit-base-patch32@3d74acf", Precision::F32);
/// assert_eq!(cache.get("a photo of bibimbap."), Lookup::Miss);
/// cache.put("a photo of bibimbap.", &[0.6, 0.8])?;
/// assert_eq!(cache.get("a photo of bibimbap."), Lookup::Hit(vec![0.6, 0.8]));
/// # std::fs::remove_dir_all(&root)?;
/// # std::io::Result::Ok(())
/// ```
#[derive(Debug, Clone)]
pub struct TextCache {
    dir: PathBuf,
    /// Identity and precision, the part of every key shared by this checkpoint's entries.
    model_key: String,
}

impl TextCache {
    /// The cache under `root` for the checkpoint `identity` (see
    /// [`crate::checkpoint::Checkpoint::fingerprint`]) run in `precision`. Nothing is created
    /// until the first [`TextCache::put`].
    pub fn new(root: &Path, identity: &str, precision: Precision) -> Self {
        let model_key = format!("{identity}\n{precision}\n");
        let dir = root
            .join("text-v1")
            .join(short_hash(model_key.as_bytes(), 16));
        Self { dir, model_key }
    }

    /// The folder holding this checkpoint's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key(&self, prompt: &str) -> String {
        format!("{}{prompt}", self.model_key)
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{}.emb", short_hash(key.as_bytes(), 32)))
    }

    /// Looks up the embedding of `prompt`.
    pub fn get(&self, prompt: &str) -> Lookup {
        let key = self.key(prompt);
        match std::fs::read(self.entry_path(&key)) {
            Ok(bytes) => match decode(&bytes, &key) {
                Some(v) => Lookup::Hit(v),
                None => Lookup::Corrupt,
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Lookup::Miss,
            Err(_) => Lookup::Corrupt,
        }
    }

    /// Stores the embedding of `prompt`, atomically replacing any entry there.
    pub fn put(&self, prompt: &str, embedding: &[f32]) -> io::Result<()> {
        let key = self.key(prompt);
        std::fs::create_dir_all(&self.dir)?;
        write_atomically_unsynced(&self.entry_path(&key), &encode(&key, embedding))
    }
}

/// The first `hex_len` hex digits of the BLAKE3 hash of `bytes`.
fn short_hash(bytes: &[u8], hex_len: usize) -> String {
    blake3::hash(bytes).to_hex()[..hex_len].to_string()
}

fn encode(key: &str, embedding: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + key.len() + embedding.len() * 4 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(embedding.len() as u32).to_le_bytes());
    embedding
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// The embedding in `bytes` if they are a whole, intact entry for `key`.
fn decode(bytes: &[u8], key: &str) -> Option<Vec<f32>> {
    let body_len = bytes.len().checked_sub(CHECKSUM_LEN)?;
    let (body, sum) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let rest = body.strip_prefix(MAGIC)?;
    let (stored_key, rest) = take_sized(rest, 1)?;
    if stored_key != key.as_bytes() {
        return None;
    }
    let (values, rest) = take_sized(rest, 4)?;
    if !rest.is_empty() || values.is_empty() {
        return None;
    }
    Some(
        values
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect(),
    )
}

/// Splits off a field stored as a u32 LE count of `unit`-byte items followed by the items.
fn take_sized(bytes: &[u8], unit: usize) -> Option<(&[u8], &[u8])> {
    let (count, rest) = bytes.split_first_chunk::<4>()?;
    let len = (u32::from_le_bytes(*count) as usize).checked_mul(unit)?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(root: &Path) -> TextCache {
        TextCache::new(root, "local:abc", Precision::F32)
    }

    #[test]
    fn every_damaged_entry_reads_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        c.put("p", &[1.0, -2.5, 3.25]).unwrap();
        let path = c.entry_path(&c.key("p"));
        let good = std::fs::read(&path).unwrap();
        assert_eq!(c.get("p"), Lookup::Hit(vec![1.0, -2.5, 3.25]));
        for cut in [0, 1, 8, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert_eq!(c.get("p"), Lookup::Corrupt, "cut at {cut}");
        }
        for flip in [0, 9, 20, good.len() - 40, good.len() - 1] {
            let mut bad = good.clone();
            bad[flip] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(c.get("p"), Lookup::Corrupt, "bit flipped at {flip}");
        }
        // A valid entry of another key at this path (as a hash collision would leave).
        std::fs::write(&path, encode("local:abc\nf32\nq", &[1.0])).unwrap();
        assert_eq!(c.get("p"), Lookup::Corrupt);
        c.put("p", &[4.0]).unwrap();
        assert_eq!(c.get("p"), Lookup::Hit(vec![4.0]));
    }

    #[test]
    fn keys_separate_checkpoints_precisions_and_prompts() {
        let dir = tempfile::tempdir().unwrap();
        cache(dir.path()).put("p", &[1.0]).unwrap();
        assert_eq!(cache(dir.path()).get("p"), Lookup::Hit(vec![1.0]));
        assert_eq!(cache(dir.path()).get("p "), Lookup::Miss);
        let other = TextCache::new(dir.path(), "local:abd", Precision::F32);
        assert_eq!(other.get("p"), Lookup::Miss);
        let half = TextCache::new(dir.path(), "local:abc", Precision::Bf16);
        assert_eq!(half.get("p"), Lookup::Miss);
    }
}
