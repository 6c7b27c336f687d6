//! The prompt-embedding cache: hits skip the text encoder, any change of checkpoint, prompt or
//! precision misses, damaged entries are replaced, and concurrent writers are safe.

mod common;

use common::*;
use foodclip::cache::TextCache;
use foodclip::checkpoint::Checkpoint;
use foodclip::classify::Classifier;
use foodclip::labels::{LabelSet, Templates};
use foodclip::model::Precision;
use std::path::{Path, PathBuf};
use std::process::Output;

fn labels() -> LabelSet {
    LabelSet::load(&fixtures().join("labels/mixed.txt")).unwrap()
}

fn classifier(ckpt: &Checkpoint, cache: &TextCache, templates: &Templates) -> Classifier {
    Classifier::new(ckpt, &labels(), templates, Some(cache), |_| {}).unwrap()
}

#[test]
fn a_cached_run_never_builds_the_text_tower_and_gets_the_same_classes() {
    let root = tempfile::tempdir().unwrap();
    let first = checkpoint("tiny-gelu");
    let cache = TextCache::new(root.path(), &first.fingerprint().unwrap(), first.precision);
    let encoded = classifier(&first, &cache, &Templates::Default);
    let stats = encoded.prompt_stats();
    assert_eq!((stats.cached, stats.corrupt), (0, 0));
    assert!(stats.encoded > 10, "{stats:?}");

    let second = checkpoint("tiny-gelu");
    let cache = TextCache::new(
        root.path(),
        &second.fingerprint().unwrap(),
        second.precision,
    );
    let cached = classifier(&second, &cache, &Templates::Default);
    assert_eq!(cached.prompt_stats().encoded, 0);
    assert_eq!(cached.prompt_stats().cached, stats.encoded);
    assert!(!second.model.text_loaded(), "the text tower was read");
    assert_eq!(
        encoded.embeddings().to_vec2::<f32>().unwrap(),
        cached.embeddings().to_vec2::<f32>().unwrap()
    );
}

#[test]
fn other_checkpoints_prompts_and_precisions_miss() {
    let root = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_checkpoint("tiny-gelu", dir.path());
    let run = |ckpt: &Checkpoint, templates: &Templates| {
        let cache = TextCache::new(root.path(), &ckpt.fingerprint().unwrap(), ckpt.precision);
        classifier(ckpt, &cache, templates).prompt_stats().clone()
    };
    let one = Templates::Custom(vec!["{}".into()]);
    let two = Templates::Custom(vec!["{}".into(), "a photo of {}.".into()]);
    let gelu = load_checkpoint(dir.path(), Precision::F32);
    let fingerprint = gelu.fingerprint().unwrap();
    let names = run(&gelu, &one).encoded;
    // Only the new template's prompts are encoded.
    let more = run(&gelu, &two);
    assert_eq!((more.cached, more.encoded), (names, names));
    // The same files elsewhere are the same checkpoint: the key is the content, not the path.
    let same = checkpoint("tiny-gelu");
    assert_eq!(same.fingerprint().unwrap(), fingerprint);
    assert_eq!(run(&same, &two).encoded, 0);
    // Another precision, another checkpoint, or an edited weight file: all miss.
    assert_eq!(
        run(&load_checkpoint(dir.path(), Precision::Bf16), &one).cached,
        0
    );
    assert_eq!(run(&checkpoint("tiny-openai"), &one).cached, 0);
    let weights = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let scale = tensors.get_mut("logit_scale").unwrap();
    *scale = (&*scale + 0.5).unwrap();
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let edited = load_checkpoint(dir.path(), Precision::F32);
    assert_ne!(edited.fingerprint().unwrap(), fingerprint);
    assert_eq!(run(&edited, &one).cached, 0);
}

/// `classify` one photo against the mixed labels with the tiny-openai checkpoint, caching in
/// `cache`.
fn classify(cache: &Path, extra: &[&str]) -> Output {
    foodclip()
        .env("FOODCLIP_CACHE_DIR", cache)
        .arg("--model")
        .arg(fixtures().join("tiny-openai"))
        .args(extra)
        .args(["classify", "--format", "jsonl", "-k", "0", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg(fixtures().join("images/baseline.jpg"))
        .output()
        .unwrap()
}

fn encoded_note(o: &Output) -> Option<String> {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err.lines()
        .find(|l| l.contains("label prompts in"))
        .map(str::to_string)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(entries(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn the_command_line_reuses_repairs_and_bypasses_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let first = classify(cache.path(), &[]);
    let note = encoded_note(&first).expect("the first run encodes");
    assert!(note.contains(&cache.path().display().to_string()), "{note}");
    let second = classify(cache.path(), &[]);
    assert_eq!(encoded_note(&second), None);
    assert_eq!(first.stdout, second.stdout);

    // Damage every entry in two ways: the run notices, recomputes, and answers the same.
    let files = entries(&cache.path().join("text-v1"));
    assert!(files.len() > 10);
    for (i, f) in files.iter().enumerate() {
        let mut bytes = std::fs::read(f).unwrap();
        if i % 2 == 0 {
            bytes.truncate(bytes.len() / 2);
        } else {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
        }
        std::fs::write(f, bytes).unwrap();
    }
    let repaired = classify(cache.path(), &[]);
    let err = String::from_utf8_lossy(&repaired.stderr);
    assert!(
        err.contains(&format!("{} damaged entries", files.len())),
        "{err}"
    );
    assert_eq!(repaired.stdout, first.stdout);
    assert_eq!(encoded_note(&classify(cache.path(), &[])), None);

    // --no-cache neither reads nor writes.
    let empty = tempfile::tempdir().unwrap();
    let bypass = classify(empty.path(), &["--no-cache"]);
    assert!(encoded_note(&bypass).is_some());
    assert_eq!(bypass.stdout, first.stdout);
    assert!(entries(empty.path()).is_empty());
}

#[test]
fn concurrent_runs_share_one_cache_safely() {
    let cache = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            foodclip()
                .env("FOODCLIP_CACHE_DIR", cache.path())
                .arg("--model")
                .arg(fixtures().join("tiny-openai"))
                .args(["classify", "--format", "jsonl", "-k", "0", "--labels"])
                .arg(fixtures().join("labels/mixed.txt"))
                .arg(fixtures().join("images/baseline.jpg"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outputs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, outputs[0].stdout);
    }
    // Every entry is whole (no temporary files left), and a later run finds them all.
    let files = entries(cache.path());
    assert!(files
        .iter()
        .all(|p| p.extension().is_some_and(|e| e == "emb" || e == "txt")));
    let after = classify(cache.path(), &[]);
    assert_eq!(encoded_note(&after), None);
    assert!(!String::from_utf8_lossy(&after.stderr).contains("damaged"));
    assert_eq!(after.stdout, outputs[0].stdout);
}

#[test]
fn remembered_fingerprints_follow_file_changes() {
    let root = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_checkpoint("tiny-gelu", dir.path());
    let ckpt = load_checkpoint(dir.path(), Precision::F32);
    let hashed = ckpt.fingerprint().unwrap();
    assert_eq!(ckpt.fingerprint_cached(root.path()).unwrap(), hashed);
    let memos = entries(root.path());
    assert_eq!(memos.len(), 1);
    // The memo is what answers while the files are unchanged: a forged one is believed...
    let forged = format!("blake3:{}", "0".repeat(64));
    let text = std::fs::read_to_string(&memos[0]).unwrap();
    let key = text.lines().next().unwrap();
    std::fs::write(&memos[0], format!("{key}\n{forged}\n")).unwrap();
    assert_eq!(ckpt.fingerprint_cached(root.path()).unwrap(), forged);
    // ...until a file changes, even to the same bytes: then the files are hashed again.
    let tokenizer = dir.path().join("tokenizer.json");
    let bytes = std::fs::read(&tokenizer).unwrap();
    std::fs::remove_file(&tokenizer).unwrap();
    std::fs::write(&tokenizer, bytes).unwrap();
    assert_eq!(ckpt.fingerprint_cached(root.path()).unwrap(), hashed);
}
