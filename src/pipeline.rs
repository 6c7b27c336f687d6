//! Running many photos: decoding them in parallel while the model works on the previous batch,
//! and handing results back in input order. Memory stays bounded: at most one batch waits while
//! another is decoded. Where the photos come from is [`crate::inputs`]' business.

use crate::checkpoint::Checkpoint;
use crate::classify::embed_pictures;
use crate::embeddings::StoredEmbeddings;
use crate::fsutil::is_closed_pipe;
use crate::preprocess::Fidelity;
use anyhow::{Context, Result};
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
/// batch in flight when `interrupted` is set, or when `emit` fails with a broken pipe (a normal
/// end); any other error of `emit` is returned as it is.
pub fn run_batches(
    embedder: Embedder,
    paths: &[PathBuf],
    interrupted: &AtomicBool,
    mut emit: impl FnMut(Option<&Tensor>, &[PathBuf], Vec<InputResult>) -> Result<()>,
) -> Result<Stats> {
    let start = Instant::now();
    let mut stats = Stats::default();
    // Hands one batch on; `Ok(true)` means stop.
    let mut deliver = |emb: Option<Tensor>, chunk: &[PathBuf], results: Vec<InputResult>| {
        let ok = results.iter().filter(|r| r.is_ok()).count();
        stats.failed += results.len() - ok;
        stats.done += ok;
        match emit(emb.as_ref(), chunk, results) {
            Err(e) if is_closed_pipe(&e) => {
                stats.output_closed = true;
                Ok(true)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(interrupted.load(Ordering::Relaxed)),
        }
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
            let rows: HashMap<&Path, usize> = stored
                .paths
                .iter()
                .enumerate()
                .map(|(i, p)| (p.as_path(), i))
                .collect();
            for chunk in paths.chunks(batch_size.max(1)) {
                let mut values = Vec::new();
                let results: Vec<InputResult> = chunk
                    .iter()
                    .map(|p| match rows.get(p.as_path()) {
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
    paths: &[PathBuf],
    options: BatchOptions,
    interrupted: &AtomicBool,
    deliver: &mut impl FnMut(Option<Tensor>, &[PathBuf], Vec<InputResult>) -> Result<bool>,
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
                            .load(p, options.max_pixels, options.fidelity)
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
                Some(embed_pictures(ckpt, &pictures).context("the image tower failed")?)
            };
            if deliver(emb, chunk, results)? {
                return Ok(());
            }
        }
        Ok(())
    })
}
