//! Shared fixture helpers for the integration tests.
#![allow(dead_code)]

pub mod browser;
pub mod drift;
pub mod kitchen;
#[cfg(unix)]
pub mod memory;
pub mod pgserver;
pub mod photos;

use foodclip::checkpoint::Checkpoint;
use foodclip::source::{HubOptions, ModelSource};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[cfg(unix)]
#[allow(unused_imports)] // used by some test binaries only
pub use memory::children_peak_kib;

/// The `foodclip` binary, kept off the network and away from the user's caches: hub files from
/// a directory that does not exist, prompt embeddings in a cache under the build's temporary
/// directory (shared by the tests, as concurrent runs may share one).
pub fn foodclip() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_foodclip"));
    cmd.env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", "/nonexistent-foodclip-test")
        .env(
            "FOODCLIP_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("prompt-cache"),
        )
        .env_remove("FOODCLIP_MODEL");
    cmd
}

/// `foodclip --model tiny-openai ARGS`, run in `dir`, away from any store or site the
/// environment names.
pub fn run_in(dir: &Path, args: &[&str]) -> std::process::Output {
    foodclip()
        .current_dir(dir)
        .arg("--model")
        .arg(fixtures().join("tiny-openai"))
        .args(args)
        .env_remove("FOODCLIP_DB")
        .env_remove("FOODCLIP_SITE")
        .output()
        .unwrap()
}

/// Copies the fixture checkpoint `name` into `to`.
pub fn copy_checkpoint(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The fixture directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture checkpoints: two CLIPs, a SigLIP and a SigLIP 2 (fixed resolution).
pub const CHECKPOINTS: [&str; 4] = ["tiny-openai", "tiny-gelu", "tiny-siglip", "tiny-siglip2"];

#[derive(Debug, Deserialize)]
pub struct RefPrompt {
    pub text: String,
    pub ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

#[derive(Debug, Deserialize)]
pub struct RefClass {
    pub names: Vec<String>,
    pub embedding: Vec<f32>,
}

#[derive(Debug, Deserialize)]
pub struct RefImage {
    pub file: String,
    pub embedding: Vec<f32>,
    pub scores: Vec<f32>,
    pub probs: Vec<f32>,
}

/// transformers' zero-shot image-classification pipeline on one photo.
#[derive(Debug, Deserialize)]
pub struct RefPipeline {
    pub file: String,
    pub template: String,
    /// `{"label", "score"}`, best first.
    pub answer: Vec<serde_json::Value>,
}

/// What transformers computed for one checkpoint (written by `tests/fixtures/generate.py`).
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub templates: Vec<String>,
    pub logit_scale: f32,
    /// SigLIP's learned bias.
    #[serde(default)]
    pub logit_bias: Option<f32>,
    pub prompts: Vec<RefPrompt>,
    pub classes: Vec<RefClass>,
    pub images: Vec<RefImage>,
    #[serde(default)]
    pub pipeline: Option<RefPipeline>,
}

pub fn reference(name: &str) -> Reference {
    let text =
        std::fs::read_to_string(fixtures().join("reference").join(format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn checkpoint(name: &str) -> Checkpoint {
    load_checkpoint(&fixtures().join(name), foodclip::model::Precision::F32)
}

/// The checkpoint in `dir`, offline, on the CPU, in `precision`.
pub fn load_checkpoint(dir: &Path, precision: foodclip::model::Precision) -> Checkpoint {
    let source = ModelSource::Local(dir.to_path_buf());
    let hub = HubOptions {
        offline: true,
        progress: false,
    };
    Checkpoint::load_with(&source, &hub, &candle_core::Device::Cpu, precision, None).unwrap()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The `path` of every JSON line in `stdout`.
pub fn jsonl_paths(stdout: &[u8]) -> Vec<String> {
    jsonl_records(stdout)
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect()
}

/// The JSON records of JSON-lines output.
pub fn jsonl_records(stdout: &[u8]) -> Vec<serde_json::Value> {
    stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// A fixture photo prepared exactly as the reference prepares it.
pub fn exact_picture(ckpt: &Checkpoint, file: &str) -> image::RgbImage {
    ckpt.preprocess
        .load(
            &fixtures().join("images").join(file),
            foodclip::preprocess::DEFAULT_MAX_PIXELS,
            foodclip::preprocess::Fidelity::Exact,
        )
        .unwrap()
}

/// The stdout of a run that must have succeeded (else its stderr is the failure).
pub fn ok(o: &std::process::Output) -> &[u8] {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    &o.stdout
}
