//! Leaf helpers that several layers share: atomic file writes, paths written losslessly, and
//! TOML files read with errors that name the line.
//!
//! Paths stay `Path`/`PathBuf` from the folder walk to the decoder. Where they must become text,
//! a path that is valid UTF-8 is written as that text; any other path (an EUC-KR file name from
//! an old archive, say) is written as `{"bytes": "<base64 of its bytes>"}`, as ripgrep's JSON
//! printer does, so that it can be read back exactly. CSV and TSV hold the raw bytes.

use base64::Engine;
use serde::{Serialize, Serializer};
use std::borrow::Cow;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The 1-based line of byte `at` in `text`.
pub fn line_at(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads the TOML file at `path` (a `what`: "layout", "menu") into `T`, and returns it with the
/// file's text (for the lines of spans). A file that cannot be parsed is an error
/// `PATH:LINE: message`.
pub fn read_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
) -> anyhow::Result<(T, String)> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let value = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_at(&text, s.start));
        anyhow::anyhow!("{}:{line}: {}", path.display(), e.message().trim())
    })?;
    Ok((value, text))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over the target, so readers see the old file or the new one, never half of one.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let file = dir.path().join("out.txt");
/// foodclip::fsutil::write_atomically(&file, b"done")?;
/// assert_eq!(std::fs::read(&file)?, b"done");
/// # std::io::Result::Ok(())
/// ```
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, true)
}

/// Like [`write_atomically`] without the sync: a reader still sees a whole file or none, but a
/// power cut may leave an empty or torn one (for caches whose entries carry their own checksum).
pub fn write_atomically_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, false)
}

/// Checks, before a long run, that the file it writes at its end can go to `path`: its folder
/// exists and `path` is not a folder. `what` names the file in the error (`--summary`), so that a
/// mistyped folder costs a second, not the run.
pub fn check_writable(what: &str, path: &Path) -> anyhow::Result<()> {
    let dir = folder_of(path);
    if path.is_dir() {
        anyhow::bail!("{what} {} is a folder: name a file", path.display());
    }
    if !dir.is_dir() {
        anyhow::bail!(
            "{what} {}: there is no folder {} to write it in",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// The folder a file at `path` goes in (`.` for a bare name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn replace(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = folder_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The bytes of a path: exact on Unix; elsewhere the UTF-8 of its (lossy) text.
pub fn path_bytes(path: &Path) -> Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Cow::Borrowed(path.as_os_str().as_bytes())
    }
    #[cfg(not(unix))]
    match path.to_string_lossy() {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}

/// The path whose bytes are `bytes` (see [`path_bytes`]).
pub fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(bytes))
    }
    #[cfg(not(unix))]
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

/// A path as JSON: its text when it is UTF-8, else `{"bytes": "<base64>"}`.
///
/// ```
/// use foodclip::fsutil::{path_from_json, PathJson};
/// let v = serde_json::to_value(PathJson("trays/김치.jpg".as_ref()))?;
/// assert_eq!(v, "trays/김치.jpg");
/// assert_eq!(path_from_json(&v).unwrap(), std::path::Path::new("trays/김치.jpg"));
/// # serde_json::Result::Ok(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PathJson<'a>(pub &'a Path);

impl Serialize for PathJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(path_bytes(self.0));
                map.serialize_entry("bytes", &b64)?;
                map.end()
            }
        }
    }
}

/// Reads a path written as [`PathJson`]; `None` if `value` is neither form.
pub fn path_from_json(value: &serde_json::Value) -> Option<PathBuf> {
    match value {
        serde_json::Value::String(s) => Some(PathBuf::from(s)),
        serde_json::Value::Object(map) if map.len() == 1 => {
            let b64 = map.get("bytes")?.as_str()?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            Some(path_from_bytes(bytes))
        }
        _ => None,
    }
}

/// Whether `e` (or its cause) is a write to a closed pipe (`foodclip ... | head`): a normal end,
/// as in ripgrep, not an error to report.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        write_atomically(&path, b"one").unwrap();
        write_atomically_unsynced(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomically(&dir.path().join("no/such/dir/x"), b"").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_round_trip_through_json() {
        // "김치.jpg" in EUC-KR.
        let path = path_from_bytes(b"trays/\xb1\xe8\xc4\xa1.jpg".to_vec());
        assert!(path.to_str().is_none());
        let v = serde_json::to_value(PathJson(&path)).unwrap();
        assert_eq!(v, serde_json::json!({"bytes": "dHJheXMvsejEoS5qcGc="}));
        assert_eq!(path_from_json(&v).unwrap(), path);
        assert!(path_from_json(&serde_json::json!({"bytes": "!!"})).is_none());
        assert!(path_from_json(&serde_json::json!(3)).is_none());
    }

    #[test]
    fn closed_pipes_are_found_through_context() {
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_closed_pipe(&e));
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::StorageFull));
        assert!(!is_closed_pipe(&e));
    }
}
