//! The photos of a run: files and folders from the command line, lists of paths on stdin,
//! deterministic shards, and the photos an earlier run already recorded (`--resume`).
//!
//! Paths stay `PathBuf`s from the walk to the decoder, so names that are not UTF-8 (an EUC-KR
//! archive, say) are read like any other.

use crate::fsutil::{path_bytes, path_from_bytes};
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// File extensions of photos, taken when walking folders: the formats foodclip decodes (`.jfif`
/// and `.jpe` are JPEGs too: browsers on Windows save photos as `.jfif`), and HEIC/HEIF, AVIF and
/// JPEG XL, which it does not: those are taken too, so that each fails by name with what to do
/// instead of vanishing from the run (a phone's photos are often HEIC).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jfif", "jpe", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif",
    "avif", "jxl",
];

/// The photos of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// Paths, in input order.
    pub paths: Vec<PathBuf>,
    /// Files met in folders that are not images (by extension), left out. Hidden entries are
    /// not counted: see [`is_hidden`].
    pub not_images: usize,
    /// Folders that could not be read (permissions, a share gone away), with why: the walk
    /// goes on without them.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl Inputs {
    /// These inputs, or an error naming the first folder that could not be read: for commands
    /// that a partial listing would mislead (an index would take that folder's photos as
    /// deleted, an evaluation would score fewer photos of a class).
    pub fn complete(self) -> Result<Self> {
        match self.unreadable.first() {
            Some((dir, why)) => bail!("cannot read folder {}: {why}", dir.display()),
            None => Ok(self),
        }
    }
}

/// Expands inputs: files as given, folders recursively (image extensions only, sorted by name,
/// hidden entries left out), and `-` as a list of paths read from `stdin`, one per line or
/// NUL-separated when `null`. A hidden file named on the command line or in the list is read.
/// A folder that cannot be read is kept in [`Inputs::unreadable`], not an error.
///
/// ```
/// let got = foodclip::inputs::collect_inputs(&["-".into()], true, &b"a.jpg\0b c.png\0"[..])?;
/// assert_eq!(got.paths, [std::path::Path::new("a.jpg"), std::path::Path::new("b c.png")]);
/// # anyhow::Ok(())
/// ```
pub fn collect_inputs(inputs: &[PathBuf], null: bool, mut stdin: impl Read) -> Result<Inputs> {
    let mut out = Inputs::default();
    for input in inputs {
        if input.as_os_str() == "-" {
            let mut buf = Vec::new();
            stdin
                .read_to_end(&mut buf)
                .context("cannot read paths from stdin")?;
            let sep = if null { b'\0' } else { b'\n' };
            for raw in buf.split(|&b| b == sep) {
                let line = if null {
                    raw
                } else {
                    raw.strip_suffix(b"\r").unwrap_or(raw)
                };
                if !line.is_empty() {
                    out.paths.push(path_from_bytes(line.to_vec()));
                }
            }
        } else if input.is_dir() {
            walk(input, &mut out, &mut HashSet::new());
        } else {
            out.paths.push(input.clone());
        }
    }
    Ok(out)
}

/// Whether `path` ends in one of [`IMAGE_EXTENSIONS`] (any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
}

/// Whether a folder walk leaves `path` out: its name starts with a dot, as `.git`, foodclip's own
/// `.foodclip` index folder, `.DS_Store` and the `._IMG_0001.jpg` resource files macOS leaves on
/// USB sticks (they end in `.jpg` but hold no picture). ripgrep and fd skip them too.
pub fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

/// Adds the photos below `dir` to `out`. Symbolic links are followed, but each real folder is
/// read once (`seen` holds resolved paths): a link back up (`current -> ..`, as on many shares)
/// would otherwise list the same photos again at every level, and two links to one folder would
/// count its photos twice.
fn walk(dir: &Path, out: &mut Inputs, seen: &mut HashSet<PathBuf>) {
    let listed = std::fs::canonicalize(dir).and_then(|real| match seen.insert(real) {
        true => std::fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>(),
        false => Ok(Vec::new()),
    });
    let mut entries = match listed {
        Ok(entries) => entries,
        Err(e) => return out.unreadable.push((dir.to_path_buf(), e.to_string())),
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if is_hidden(&path) {
            continue;
        } else if path.is_dir() {
            walk(&path, out, seen);
        } else if has_image_extension(&path) {
            out.paths.push(path);
        } else {
            out.not_images += 1;
        }
    }
}

/// One of `count` deterministic parts of the input (`--shard K/N`, K counted from 0). A path
/// belongs to shard `fnv1a(path bytes) % N`, so N machines given the same paths split them with
/// no coordination, whatever order each lists them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: u64,
    /// Number of shards.
    pub count: u64,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// Parses `K/N`.
    ///
    /// ```
    /// let shard: foodclip::inputs::Shard = "2/8".parse().unwrap();
    /// assert_eq!((shard.index, shard.count), (2, 8));
    /// assert!("8/8".parse::<foodclip::inputs::Shard>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, n) = s.split_once('/').ok_or("expected K/N, e.g. 0/4")?;
        let index: u64 = k
            .trim()
            .parse()
            .map_err(|_| format!("bad shard index {k:?}"))?;
        let count: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("bad shard count {n:?}"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: K must be in 0..N"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether `path` is this shard's.
    pub fn contains(&self, path: &Path) -> bool {
        fnv1a(&path_bytes(path)) % self.count == self.index
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The photos already recorded in an output file (`--resume`), read by `parse` from the file's
/// complete lines (`complete`, up to and including the last newline) and its unfinished last
/// line (`partial`, possibly empty). `parse` must reject a file this command did not write.
///
/// Only after `parse` has accepted every line is an unfinished last line cut off, so that its
/// photo is written again; a rejected file is left untouched, byte for byte. A missing file
/// records nothing.
pub fn recorded_paths(
    file: &Path,
    parse: impl FnOnce(&[u8], &[u8]) -> Result<Vec<PathBuf>>,
) -> Result<HashSet<PathBuf>> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let (whole, partial) = bytes.split_at(complete);
    let done = parse(whole, partial).with_context(|| {
        format!(
            "--resume {}: not a file of this command's records, left as it is; --resume needs \
             the file this command wrote",
            file.display()
        )
    })?;
    if !partial.is_empty() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .with_context(|| format!("cannot open {}", file.display()))?;
        f.set_len(complete as u64)
            .with_context(|| format!("cannot trim {}", file.display()))?;
    }
    Ok(done.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    #[test]
    fn shards_partition_the_input() {
        let paths: Vec<PathBuf> = (0..1000)
            .map(|i| PathBuf::from(format!("trays/{i:05}.jpg")))
            .collect();
        let n = 7;
        let mut seen = vec![0; paths.len()];
        for k in 0..n {
            let shard = Shard { index: k, count: n };
            for (i, p) in paths.iter().enumerate() {
                if shard.contains(p) {
                    seen[i] += 1;
                }
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "every path in exactly one shard"
        );
        let sizes: Vec<usize> = (0..n)
            .map(|k| {
                paths
                    .iter()
                    .filter(|p| Shard { index: k, count: n }.contains(p))
                    .count()
            })
            .collect();
        assert!(sizes.iter().all(|&s| s > 100 && s < 190), "{sizes:?}");
        assert!("1/0".parse::<Shard>().is_err() && "x".parse::<Shard>().is_err());
    }

    #[test]
    fn resume_cuts_a_partial_line_only_after_the_parser_accepts_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("out.jsonl");
        std::fs::write(&f, "a\nb\nc-partial").unwrap();
        let lines = |whole: &[u8], partial: &[u8]| -> Result<Vec<PathBuf>> {
            assert_eq!(partial, b"c-partial");
            Ok(whole
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| path_from_bytes(l.to_vec()))
                .collect())
        };
        let done = recorded_paths(&f, lines).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(std::fs::read(&f).unwrap(), b"a\nb\n");
        // A parser that refuses leaves the file as it was.
        std::fs::write(&f, "notes\nmore notes").unwrap();
        let e = recorded_paths(&f, |_, _| bail!("line 1: not a record")).unwrap_err();
        assert!(format!("{e:#}").contains("line 1: not a record"), "{e:#}");
        assert_eq!(std::fs::read(&f).unwrap(), b"notes\nmore notes");
        // No file: nothing recorded.
        assert!(
            recorded_paths(&dir.path().join("none"), |_, _| unreachable!())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn folders_are_walked_in_order_and_non_images_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        for f in [
            "b/c/z.JPG",
            "b/a.png",
            "a.webp",
            "b/IMG_0001.HEIC",
            "b/saved.jfif",
            "notes.txt",
            "b/c/readme.md",
            "._a.webp",
            ".DS_Store",
            ".foodclip/index.sqlite",
            ".thumbs/t.jpg",
            "b/.c.png",
        ] {
            std::fs::create_dir_all(dir.path().join(f).parent().unwrap()).unwrap();
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let got = collect_inputs(&[dir.path().to_path_buf()], false, io::empty()).unwrap();
        let rel: Vec<&Path> = got
            .paths
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap())
            .collect();
        assert_eq!(
            rel,
            [
                Path::new("a.webp"),
                Path::new("b/IMG_0001.HEIC"),
                Path::new("b/a.png"),
                Path::new("b/c/z.JPG"),
                Path::new("b/saved.jfif")
            ]
        );
        assert_eq!(got.not_images, 2);
        let hidden = dir.path().join("b/.c.png");
        let got = collect_inputs(std::slice::from_ref(&hidden), false, io::empty()).unwrap();
        assert_eq!(got.paths, [hidden], "a hidden file given by name is read");
        let got = collect_inputs(&["-".into()], true, &b"x y.jpg\0/z\n.png\0"[..]).unwrap();
        assert_eq!(
            got.paths,
            [PathBuf::from("x y.jpg"), PathBuf::from("/z\n.png")]
        );
        let got = collect_inputs(&["-".into()], false, &b"a.jpg\r\n\nb.jpg"[..]).unwrap();
        assert_eq!(got.paths, [PathBuf::from("a.jpg"), PathBuf::from("b.jpg")]);
    }

    #[cfg(unix)]
    #[test]
    fn links_are_followed_and_each_folder_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("day1")).unwrap();
        std::fs::create_dir_all(d.join("elsewhere")).unwrap();
        std::fs::write(d.join("day1/a.jpg"), b"").unwrap();
        std::fs::write(d.join("elsewhere/b.jpg"), b"").unwrap();
        std::os::unix::fs::symlink("..", d.join("day1/up")).unwrap();
        std::os::unix::fs::symlink("../elsewhere", d.join("day1/linked")).unwrap();
        let got = collect_inputs(&[d.join("day1")], false, io::empty()).unwrap();
        assert_eq!(
            got.paths,
            [d.join("day1/a.jpg"), d.join("day1/linked/b.jpg")]
        );
        assert_eq!(got.not_images, 0);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_names_are_kept_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let name = path_from_bytes(b"\xb1\xe8\xc4\xa1.jpg".to_vec());
        std::fs::write(dir.path().join(&name), b"").unwrap();
        let got = collect_inputs(&[dir.path().to_path_buf()], false, io::empty()).unwrap();
        assert_eq!(got.paths, [dir.path().join(&name)]);
        let got = collect_inputs(&["-".into()], false, &b"\xb1\xe8\xc4\xa1.jpg\n"[..]).unwrap();
        assert_eq!(got.paths, [name]);
    }
}
