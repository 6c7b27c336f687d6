//! Running many photos: gathering inputs (files, folders, stdin lists, shards, resumed runs),
//! decoding them in parallel while the model works on the previous batch, and handing results
//! back in input order. Memory stays bounded: at most one batch waits while another is decoded.

use crate::checkpoint::Checkpoint;
use crate::classify::embed_pictures;
use crate::embeddings::StoredEmbeddings;
use crate::preprocess::Fidelity;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

/// File extensions read when walking folders.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// The photos of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// Paths, in input order.
    pub paths: Vec<String>,
    /// Files met in folders that are not images (by extension), left out.
    pub not_images: usize,
}

/// Expands inputs: files as given, folders recursively (image extensions only, sorted by name),
/// and `-` as a list of paths read from `stdin`, one per line or NUL-separated when `null`.
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
                let line = String::from_utf8_lossy(raw);
                let line = if null {
                    line.as_ref()
                } else {
                    line.trim_end_matches('\r')
                };
                if !line.is_empty() {
                    out.paths.push(line.to_string());
                }
            }
        } else if input.is_dir() {
            walk(input, &mut out)
                .with_context(|| format!("cannot read folder {}", input.display()))?;
        } else {
            out.paths.push(input.display().to_string());
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

fn walk(dir: &Path, out: &mut Inputs) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if has_image_extension(&path) {
            out.paths.push(path.display().to_string());
        } else {
            out.not_images += 1;
        }
    }
    Ok(())
}

/// One of `count` deterministic parts of the input (`--shard K/N`, K counted from 0). A path
/// belongs to shard `fnv1a(path) % N`, so N machines given the same paths split them with no
/// coordination, whatever order each lists them in.
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
    /// let shard: foodclip::pipeline::Shard = "2/8".parse().unwrap();
    /// assert_eq!((shard.index, shard.count), (2, 8));
    /// assert!("8/8".parse::<foodclip::pipeline::Shard>().is_err());
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
    pub fn contains(&self, path: &str) -> bool {
        fnv1a(path.as_bytes()) % self.count == self.index
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How a batch run reads photos.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Photos per model call.
    pub batch_size: usize,
    /// Pixel cap per photo.
    pub max_pixels: u64,
    /// Exact or fast preprocessing.
    pub fidelity: Fidelity,
}

/// What became of a run's photos.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Photos with a result.
    pub done: usize,
    /// Photos that could not be read.
    pub failed: usize,
    /// Stopped early because the output was closed (`| head`).
    pub output_closed: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// The result of one input in a batch: `Ok(())` when it has a row in the batch's embeddings.
pub type InputResult = Result<(), String>;

/// Where a run's image embeddings come from.
pub enum Embedder<'a> {
    /// Decode photos and run them through the checkpoint's image tower.
    Photos {
        /// The model.
        ckpt: &'a Checkpoint,
        /// Batching and decoding.
        options: BatchOptions,
    },
    /// Look them up in stored embeddings (`--embeddings`); a path not stored fails.
    Stored {
        /// The stored embeddings.
        stored: &'a StoredEmbeddings,
        /// Photos per batch.
        batch_size: usize,
        /// Where the tensors go.
        device: &'a Device,
    },
}

/// Embeds `paths` in batches and hands every batch to `emit` in input order: the embeddings of
/// the photos that have one (`None` if none has), the batch's paths and each one's result.
/// Photos are decoded on the rayon pool while the previous batch is embedded. Stops after the
/// batch in flight when `interrupted` is set, or when `emit` fails with a broken pipe.
pub fn run_batches(
    embedder: Embedder,
    paths: &[String],
    interrupted: &AtomicBool,
    mut emit: impl FnMut(Option<&Tensor>, &[String], Vec<InputResult>) -> Result<()>,
) -> Result<Stats> {
    let start = Instant::now();
    let mut stats = Stats::default();
    // Hands one batch on; `Ok(true)` means stop.
    let mut deliver = |emb: Option<Tensor>, chunk: &[String], results: Vec<InputResult>| {
        let ok = results.iter().filter(|r| r.is_ok()).count();
        stats.failed += results.len() - ok;
        stats.done += ok;
        if let Err(e) = emit(emb.as_ref(), chunk, results) {
            match e.downcast_ref::<io::Error>() {
                Some(io) if io.kind() == io::ErrorKind::BrokenPipe => {
                    stats.output_closed = true;
                    return Ok(true);
                }
                _ => return Err(e.context("cannot write output")),
            }
        }
        Ok(interrupted.load(Ordering::Relaxed))
    };
    match embedder {
        Embedder::Photos { ckpt, options } => {
            decode_and_embed(ckpt, paths, options, interrupted, &mut deliver)?
        }
        Embedder::Stored {
            stored,
            batch_size,
            device,
        } => {
            let rows: HashMap<&str, usize> = stored
                .paths
                .iter()
                .enumerate()
                .map(|(i, p)| (p.as_str(), i))
                .collect();
            for chunk in paths.chunks(batch_size.max(1)) {
                let mut values = Vec::new();
                let results: Vec<InputResult> = chunk
                    .iter()
                    .map(|p| match rows.get(p.as_str()) {
                        Some(&r) => {
                            values.extend_from_slice(
                                &stored.values[r * stored.dim..(r + 1) * stored.dim],
                            );
                            Ok(())
                        }
                        None => Err("not in the embeddings file".to_string()),
                    })
                    .collect();
                let n = values.len() / stored.dim.max(1);
                let emb = (n > 0)
                    .then(|| Tensor::from_vec(values, (n, stored.dim), device))
                    .transpose()?;
                if deliver(emb, chunk, results)? {
                    break;
                }
            }
        }
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// The [`Embedder::Photos`] loop: a decoding thread feeds batches through a bounded channel.
fn decode_and_embed(
    ckpt: &Checkpoint,
    paths: &[String],
    options: BatchOptions,
    interrupted: &AtomicBool,
    deliver: &mut impl FnMut(Option<Tensor>, &[String], Vec<InputResult>) -> Result<bool>,
) -> Result<()> {
    let batch_size = options.batch_size.max(1);
    std::thread::scope(|scope| -> Result<()> {
        // One decoded batch may wait while the next is decoded: bounded memory.
        let (tx, rx) = sync_channel::<Vec<Result<image::RgbImage, String>>>(1);
        scope.spawn(move || {
            for chunk in paths.chunks(batch_size) {
                if interrupted.load(Ordering::Relaxed) {
                    break;
                }
                let decoded = chunk
                    .par_iter()
                    .map(|p| {
                        ckpt.preprocess
                            .load(Path::new(p), options.max_pixels, options.fidelity)
                            .map_err(|e| format!("{e:#}"))
                    })
                    .collect();
                if tx.send(decoded).is_err() {
                    break;
                }
            }
        });
        for (chunk, decoded) in paths.chunks(batch_size).zip(rx.iter()) {
            let mut pictures = Vec::new();
            let mut results = Vec::with_capacity(chunk.len());
            for d in decoded {
                match d {
                    Ok(pic) => {
                        pictures.push(pic);
                        results.push(Ok(()));
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            let emb = if pictures.is_empty() {
                None
            } else {
                Some(embed_pictures(ckpt, &pictures)?)
            };
            if deliver(emb, chunk, results)? {
                return Ok(());
            }
        }
        Ok(())
    })
}

/// Paths already recorded in a line-oriented output file (`--resume`): JSON lines with a `path`
/// field, or CSV/TSV rows whose first column is the path. A last line without its newline is an
/// unfinished record: the file is cut back to the last complete line so that it is written again.
pub fn recorded_paths(
    file: &Path,
    csv_separator: Option<char>,
) -> Result<std::collections::HashSet<String>> {
    let mut done = std::collections::HashSet::new();
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        let f = std::fs::OpenOptions::new().write(true).open(file)?;
        f.set_len(complete as u64)
            .with_context(|| format!("cannot trim {}", file.display()))?;
    }
    let text = String::from_utf8_lossy(&bytes[..complete]);
    for (i, line) in text.lines().enumerate() {
        let path = match csv_separator {
            None => match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => v.get("path").and_then(|p| p.as_str()).map(str::to_string),
                Err(_) => None,
            },
            Some(_) if i == 0 => continue, // header
            Some(sep) => Some(first_field(line, sep)),
        };
        match path {
            Some(p) => done.insert(p),
            None => bail!(
                "{}:{}: not a foodclip record; --resume needs the file this command wrote",
                file.display(),
                i + 1
            ),
        };
    }
    Ok(done)
}

/// The first field of a CSV (quoted or not) or TSV row.
fn first_field(line: &str, sep: char) -> String {
    if sep == ',' && line.starts_with('"') {
        let mut out = String::new();
        let mut chars = line[1..].chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    out.push('"');
                    chars.next();
                }
                '"' => break,
                c => out.push(c),
            }
        }
        out
    } else {
        line.split(sep).next().unwrap_or("").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_input() {
        let paths: Vec<String> = (0..1000).map(|i| format!("trays/{i:05}.jpg")).collect();
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
    fn resume_reads_records_and_drops_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("out.jsonl");
        std::fs::write(&f, "{\"path\":\"a.jpg\",\"predictions\":[]}\n{\"path\":\"b.jpg\",\"error\":\"x\"}\n{\"path\":\"c.j").unwrap();
        let done = recorded_paths(&f, None).unwrap();
        assert_eq!(done.len(), 2);
        assert!(done.contains("a.jpg") && done.contains("b.jpg"));
        assert!(std::fs::read_to_string(&f).unwrap().ends_with("\"x\"}\n"));
        let c = dir.path().join("out.csv");
        std::fs::write(
            &c,
            "path,rank,label,score,prob,error\n\"x,\"\"y\"\".jpg\",1,a,0.1,0.2,\nz.jpg,,,,,bad\n",
        )
        .unwrap();
        let done = recorded_paths(&c, Some(',')).unwrap();
        assert!(done.contains("x,\"y\".jpg") && done.contains("z.jpg"));
        std::fs::write(&f, "not json\n").unwrap();
        assert!(recorded_paths(&f, None).is_err());
    }

    #[test]
    fn folders_are_walked_in_order_and_non_images_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        for f in [
            "b/c/z.JPG",
            "b/a.png",
            "a.webp",
            "notes.txt",
            "b/c/readme.md",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let got = collect_inputs(&[dir.path().to_path_buf()], false, io::empty()).unwrap();
        let rel: Vec<String> = got
            .paths
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path().to_str().unwrap())
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(rel, ["/a.webp", "/b/a.png", "/b/c/z.JPG"]);
        assert_eq!(got.not_images, 2);
        let got = collect_inputs(&["-".into()], true, &b"x y.jpg\0/z\n.png\0"[..]).unwrap();
        assert_eq!(got.paths, ["x y.jpg", "/z\n.png"]);
        let got = collect_inputs(&["-".into()], false, &b"a.jpg\r\n\nb.jpg"[..]).unwrap();
        assert_eq!(got.paths, ["a.jpg", "b.jpg"]);
    }
}
