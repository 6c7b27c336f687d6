//! Running many photos: decoding them in parallel while the model works on the previous batch,
//! and handing results back in input order. Memory stays bounded: at most one batch waits while
//! another is decoded. Where the photos come from is [`crate::inputs`]' business.

use crate::checkpoint::Checkpoint;
use crate::classify::embed_pictures;
use crate::embeddings::StoredEmbeddings;
use crate::fsutil::is_closed_pipe;
use crate::preprocess::Fidelity;
use crate::regions::{pieces, Photo, Piece, Region, Regions};
use crate::store::Row;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

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
    /// Photos read (or looked up).
    pub photos: usize,
    /// Photos with at least one record done (a photo that could not be read has none).
    pub photos_done: usize,
    /// Records (photos, or regions) with a result.
    pub done: usize,
    /// Records that failed (a photo that could not be read, a region without a valid box).
    pub failed: usize,
    /// Photos of a streamed store that the run's filter left out (`--shard`, `--resume`).
    pub skipped: usize,
    /// Stopped early because the output was closed (`| head`).
    pub output_closed: bool,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// One record of a batch: a photo, or one region of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The region, `None` for a whole photo.
    pub region: Option<Region>,
    /// `Ok(())` when it has a row in the batch's embeddings (rows follow the items' order), or
    /// why it has none.
    pub result: Result<(), String>,
    /// Something to tell the user (a clipped box).
    pub warning: Option<String>,
}

/// The records of each photo of a batch.
pub type Items = Vec<Vec<Item>>;

/// A batch's embeddings as rows, one per record that has one, in the records' order.
pub fn embedding_rows(emb: Option<&Tensor>) -> Result<std::vec::IntoIter<Vec<f32>>> {
    Ok(match emb {
        Some(e) => e.to_vec2::<f32>()?,
        None => Vec::new(),
    }
    .into_iter())
}

/// Where a run's image embeddings come from.
pub enum Embedder<'a> {
    /// Decode photos and run them through the checkpoint's image tower.
    Photos {
        /// The model.
        ckpt: &'a Checkpoint,
        /// Batching and decoding.
        options: BatchOptions,
        /// The photos' regions; `None` for one record per photo.
        regions: Option<&'a Regions>,
    },
    /// Look them up in stored embeddings (`--embeddings`), with the regions stored beside
    /// them; a path not stored fails.
    Stored {
        /// The stored embeddings.
        stored: &'a StoredEmbeddings,
        /// Photos per batch.
        batch_size: usize,
        /// Where the tensors go.
        device: &'a Device,
    },
    /// Every photo of a store, its rows read once, in the store's order (`classify --db`):
    /// memory holds one batch, however many rows the store has.
    Streamed {
        /// The rows, a photo's together (see [`RowStream`]).
        rows: RowStream<'a>,
        /// Which photos the run takes; the rest count as skipped.
        keep: Box<dyn Fn(&Path) -> bool + 'a>,
        /// Photos per batch.
        batch_size: usize,
        /// Where the tensors go.
        device: &'a Device,
    },
}

/// Stored rows read once: calls its argument with each row in turn (a photo's rows one after
/// another), and stops with the argument's first error.
pub type RowStream<'a> = Box<dyn FnOnce(&mut dyn FnMut(Row) -> Result<()>) -> Result<()> + 'a>;

/// Embeds `paths` in batches (or, with [`Embedder::Streamed`], every photo the store holds:
/// `paths` is not read) and hands every batch to `emit` in input order: the embeddings of
/// the records that have one (`None` if none has), the batch's paths and each photo's records.
/// Photos are decoded on the rayon pool while the previous batch is embedded. Stops after the
/// batch in flight when `interrupted` is set, or when `emit` fails with a broken pipe (a normal
/// end); any other error of `emit` is returned as it is.
pub fn run_batches(
    embedder: Embedder,
    paths: &[PathBuf],
    interrupted: &AtomicBool,
    mut emit: impl FnMut(Option<&Tensor>, &[PathBuf], Items) -> Result<()>,
) -> Result<Stats> {
    let start = Instant::now();
    let mut stats = Stats::default();
    // Hands one batch on; `Ok(true)` means stop.
    let mut deliver = |emb: Option<Tensor>, chunk: &[PathBuf], items: Items| {
        stats.photos += chunk.len();
        for photo in &items {
            let ok = photo.iter().filter(|i| i.result.is_ok()).count();
            stats.done += ok;
            stats.failed += photo.len() - ok;
            stats.photos_done += usize::from(ok > 0);
        }
        match emit(emb.as_ref(), chunk, items) {
            Err(e) if is_closed_pipe(&e) => {
                stats.output_closed = true;
                Ok(true)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(interrupted.load(Ordering::Relaxed)),
        }
    };
    match embedder {
        Embedder::Photos {
            ckpt,
            options,
            regions,
        } => decode_and_embed(ckpt, paths, options, regions, interrupted, &mut deliver)?,
        Embedder::Stored {
            stored,
            batch_size,
            device,
        } => {
            let mut rows: HashMap<&Path, Vec<usize>> = HashMap::new();
            for (i, p) in stored.paths.iter().enumerate() {
                rows.entry(p.as_path()).or_default().push(i);
            }
            for chunk in paths.chunks(batch_size.max(1)) {
                let mut values = Vec::new();
                let items: Items = chunk
                    .iter()
                    .map(|p| {
                        // An index stores absolute paths: a relative one is looked up as such.
                        let found = rows.get(p.as_path()).or_else(|| {
                            let absolute = std::fs::canonicalize(p).ok()?;
                            rows.get(absolute.as_path())
                        });
                        found
                    })
                    .map(|found| match found {
                        Some(rows) => rows
                            .iter()
                            .map(|&r| {
                                values.extend_from_slice(
                                    &stored.values[r * stored.dim..(r + 1) * stored.dim],
                                );
                                Item {
                                    region: stored.regions.get(r).cloned().flatten(),
                                    result: Ok(()),
                                    warning: None,
                                }
                            })
                            .collect(),
                        None => vec![Item {
                            region: None,
                            result: Err("not in the embeddings file".to_string()),
                            warning: None,
                        }],
                    })
                    .collect();
                let n = values.len() / stored.dim.max(1);
                let emb = (n > 0)
                    .then(|| Tensor::from_vec(values, (n, stored.dim), device))
                    .transpose()?;
                if deliver(emb, chunk, items)? {
                    break;
                }
            }
        }
        Embedder::Streamed {
            rows,
            keep,
            batch_size,
            device,
        } => stats.skipped = stream(rows, keep, batch_size, device, &mut deliver)?,
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Why a [`RowStream`] was stopped early: the run was told to stop.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped")
    }
}

impl std::error::Error for Stopped {}

/// The [`Embedder::Streamed`] loop: gathers the rows of `batch_size` photos that `keep` takes
/// (a photo is a run of rows with one site and path) and hands them on. Returns how many
/// photos `keep` left out.
fn stream(
    rows: RowStream,
    keep: Box<dyn Fn(&Path) -> bool + '_>,
    batch_size: usize,
    device: &Device,
    deliver: &mut impl FnMut(Option<Tensor>, &[PathBuf], Items) -> Result<bool>,
) -> Result<usize> {
    let batch_size = batch_size.max(1);
    let mut chunk: Vec<PathBuf> = Vec::with_capacity(batch_size);
    let mut items: Items = Vec::with_capacity(batch_size);
    let mut values: Vec<f32> = Vec::new();
    let mut width = 0;
    // The photo of the last row (site and path), and whether it is kept.
    let mut last: Option<(Option<String>, PathBuf, bool)> = None;
    let mut skipped = 0;
    // Hands the gathered batch on; `Ok(true)` means stop.
    let mut flush =
        |chunk: &mut Vec<PathBuf>, items: &mut Items, values: &mut Vec<f32>, width: usize| {
            if chunk.is_empty() {
                return Ok(false);
            }
            let n = values.len() / width.max(1);
            let emb = (n > 0)
                .then(|| Tensor::from_vec(std::mem::take(values), (n, width), device))
                .transpose()?;
            let stop = deliver(emb, chunk, std::mem::take(items))?;
            chunk.clear();
            anyhow::Ok(stop)
        };
    let read = rows(&mut |row: Row| {
        let same = last
            .as_ref()
            .is_some_and(|(site, path, _)| *site == row.site && *path == row.path);
        if !same {
            if chunk.len() == batch_size && flush(&mut chunk, &mut items, &mut values, width)? {
                return Err(Stopped.into());
            }
            let kept = keep(&row.path);
            if kept {
                chunk.push(row.path.clone());
                items.push(Vec::new());
            } else {
                skipped += 1;
            }
            last = Some((row.site, row.path, kept));
        }
        if last.as_ref().is_some_and(|(_, _, kept)| *kept) {
            if width == 0 {
                width = row.vector.len();
            }
            if row.vector.len() != width {
                bail!(
                    "stored embeddings of two widths ({width} and {})",
                    row.vector.len()
                );
            }
            values.extend(row.vector);
            items.last_mut().expect("a photo per row").push(Item {
                region: row.region,
                result: Ok(()),
                warning: None,
            });
        }
        Ok(())
    });
    match read {
        Err(e) if e.is::<Stopped>() => {}
        Err(e) => return Err(e),
        Ok(()) => {
            flush(&mut chunk, &mut items, &mut values, width)?;
        }
    }
    Ok(skipped)
}

/// The [`Embedder::Photos`] loop: each photo's pieces through [`run_prepared`].
fn decode_and_embed(
    ckpt: &Checkpoint,
    paths: &[PathBuf],
    options: BatchOptions,
    regions: Option<&Regions>,
    interrupted: &AtomicBool,
    deliver: &mut impl FnMut(Option<Tensor>, &[PathBuf], Items) -> Result<bool>,
) -> Result<()> {
    let prepare = |p: &PathBuf| {
        let photo = Photo::File(p);
        let max = options.max_pixels;
        (
            pieces(regions, &ckpt.preprocess, photo, max, options.fidelity),
            (),
        )
    };
    run_prepared(
        ckpt,
        paths,
        options.batch_size,
        interrupted,
        prepare,
        |emb, chunk, done| {
            deliver(
                emb,
                chunk,
                done.into_iter().map(|(items, ())| items).collect(),
            )
        },
    )
}

/// The one decode/embed loop: a thread prepares `batch_size` work items at a time on the rayon
/// pool (`prepare` gives each its pieces for the model, and anything else the caller needs),
/// while the model embeds the previous batch's pictures `batch_size` at a time; `deliver` gets
/// each batch in order with the embeddings of the pieces that have a picture (`None` if none
/// has), and returns whether to stop. At most one prepared batch waits: bounded memory.
pub fn run_prepared<W: Sync, P: Send>(
    ckpt: &Checkpoint,
    work: &[W],
    batch_size: usize,
    interrupted: &AtomicBool,
    prepare: impl Fn(&W) -> (Vec<Piece>, P) + Sync,
    mut deliver: impl FnMut(Option<Tensor>, &[W], Vec<(Vec<Item>, P)>) -> Result<bool>,
) -> Result<()> {
    let batch_size = batch_size.max(1);
    std::thread::scope(|scope| -> Result<()> {
        // One prepared batch may wait while the next is prepared: bounded memory.
        let (tx, rx) = sync_channel(1);
        let prepare = &prepare;
        scope.spawn(move || {
            for chunk in work.chunks(batch_size) {
                if interrupted.load(Ordering::Relaxed) {
                    break;
                }
                let prepared: Vec<_> = chunk.par_iter().map(prepare).collect();
                if tx.send(prepared).is_err() {
                    break;
                }
            }
        });
        for (chunk, prepared) in work.chunks(batch_size).zip(rx.iter()) {
            let mut pictures = Vec::new();
            let mut done = Vec::with_capacity(chunk.len());
            for (pieces, payload) in prepared {
                let mut records = Vec::with_capacity(pieces.len());
                for piece in pieces {
                    let result = piece.picture.map(|p| pictures.push(p));
                    records.push(Item {
                        region: piece.region,
                        result,
                        warning: piece.warning,
                    });
                }
                done.push((records, payload));
            }
            let emb = if pictures.is_empty() {
                None
            } else {
                let parts = pictures
                    .chunks(batch_size)
                    .map(|part| embed_pictures(ckpt, part))
                    .collect::<Result<Vec<_>>>()
                    .context("the image tower failed")?;
                Some(Tensor::cat(&parts, 0)?)
            };
            if deliver(emb, chunk, done)? {
                return Ok(());
            }
        }
        Ok(())
    })
}
