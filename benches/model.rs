//! Model-only throughput: image embeddings from preprocessed tensors.
//!
//! `cargo bench --bench model -- CHECKPOINT_DIR [BATCH] [ITERATIONS] [PRECISION]` prints one JSON
//! line with the mean seconds per batch and the peak resident memory. `bench/bench.py` runs it
//! beside PyTorch on the same checkpoint; it takes random pixels, so no photo decoding is timed.

use candle_core::{Device, Tensor};
use foodclip::checkpoint::Checkpoint;
use foodclip::source::{HubOptions, ModelSource};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(dir) = args.first() else {
        eprintln!(
            "usage: cargo bench --bench model -- CHECKPOINT_DIR [BATCH] [ITERATIONS] [PRECISION]"
        );
        return Ok(());
    };
    let batch: usize = args.get(1).map_or(Ok(32), |s| s.parse())?;
    let iterations: usize = args.get(2).map_or(Ok(5), |s| s.parse())?;
    let precision = args.get(3).map_or("f32", String::as_str).parse()?;
    let source = ModelSource::Local(dir.into());
    let ckpt = Checkpoint::load_with(
        &source,
        &HubOptions {
            offline: true,
            progress: false,
        },
        &Device::Cpu,
        precision,
        None,
    )?;
    let size = ckpt.model.image_size();
    let pixels = Tensor::randn(0f32, 1f32, (batch, 3, size, size), &Device::Cpu)?;
    ckpt.model.image_features(&pixels)?; // warm-up
    let start = Instant::now();
    for _ in 0..iterations {
        ckpt.model.image_features(&pixels)?;
    }
    let secs = start.elapsed().as_secs_f64() / iterations as f64;
    let peak = peak_rss_mb().map_or("null".to_string(), |mb| format!("{mb:.0}"));
    println!("{{\"batch\": {batch}, \"precision\": \"{precision}\", \"seconds_per_batch\": {secs:.4}, \"images_per_second\": {:.2}, \"peak_rss_mb\": {peak}}}", batch as f64 / secs);
    Ok(())
}

/// This process's peak resident memory (`VmHWM`), on Linux.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
