//! Every command on the SigLIP fixture (`tests/fixtures/tiny-siglip`): classify (plain, a layout,
//! the open set), eval, adapt and classify with the adapter, index and search. The parity of its
//! numbers with transformers is in `tests/parity.rs`, serving in `tests/serve.rs`.

mod common;

use common::photos::{synthetic, write_jpeg};
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn run(dir: &Path, args: &[&str]) -> Output {
    foodclip()
        .current_dir(dir)
        .args(["--exact-preprocess", "--model"])
        .arg(fixtures().join("tiny-siglip"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mixed() -> PathBuf {
    fixtures().join("labels/mixed.txt")
}

/// Probabilities of a record's predictions.
fn probs(record: &Value) -> Vec<f64> {
    record["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["prob"].as_f64().unwrap())
        .collect()
}

/// Three class folders of two photos each (fixture photos), for eval and adapt.
fn dataset(root: &Path) -> PathBuf {
    let ds = root.join("ds");
    let images = fixtures().join("images");
    for (class, files) in [
        ("김치찌개", ["baseline.jpg", "progressive.jpg"]),
        ("bibimbap", ["palette.png", "rgba.png"]),
        ("떡볶이", ["wide.jpg", "plain.bmp"]),
    ] {
        std::fs::create_dir_all(ds.join(class)).unwrap();
        for f in files {
            std::fs::copy(images.join(f), ds.join(class).join(f)).unwrap();
        }
    }
    ds
}

#[test]
fn classify_gives_a_sigmoid_per_class_and_the_open_set_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let images = fixtures().join("images");
    let o = run(
        dir.path(),
        &[
            "classify",
            "--labels",
            s(&mixed()),
            "-k",
            "0",
            "--format",
            "jsonl",
            s(&images),
        ],
    );
    let records = jsonl_records(ok(&o));
    assert_eq!(records.len(), std::fs::read_dir(&images).unwrap().count());
    for r in &records {
        let p = probs(r);
        assert_eq!(p.len(), 5);
        assert!(p.iter().all(|&x| x > 0.0 && x < 1.0), "{r}");
        let total: f64 = p.iter().sum();
        assert!((total - 1.0).abs() > 1e-3, "a softmax? {r}");
    }
    // A threshold above every sigmoid: no dish is likely, every photo is unknown.
    let top = records.iter().map(|r| probs(r)[0]).fold(0.0f64, f64::max);
    let threshold = format!("{:.4}", (top + 1.0) / 2.0);
    let o = run(
        dir.path(),
        &[
            "classify",
            "--labels",
            s(&mixed()),
            "--threshold",
            &threshold,
            "--format",
            "jsonl",
            s(&images),
        ],
    );
    for r in jsonl_records(ok(&o)) {
        assert_eq!(r["label"], "unknown", "{r}");
    }
}

#[test]
fn a_tray_layout_answers_per_compartment() {
    let dir = tempfile::tempdir().unwrap();
    let tray = dir.path().join("tray.jpg");
    write_jpeg(&synthetic(400, 300, 3), &tray);
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/trays/school-5.toml");
    let o = run(
        dir.path(),
        &[
            "classify",
            "--labels",
            s(&mixed()),
            "--layout",
            s(&layout),
            "--format",
            "jsonl",
            s(&tray),
        ],
    );
    let records = jsonl_records(ok(&o));
    assert_eq!(records.len(), 5, "one record per compartment");
    for r in &records {
        assert!(r["region"].is_string() || r["region"].is_object(), "{r}");
        assert!(probs(r).iter().all(|&x| x > 0.0 && x < 1.0));
    }
}

#[test]
fn eval_and_adapt_run_and_the_adapter_applies() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let o = run(
        dir.path(),
        &["eval", "--labels", s(&mixed()), "--format", "json", s(&ds)],
    );
    let report: Value = serde_json::from_slice(ok(&o)).unwrap();
    let top1 = report["top1"]
        .as_f64()
        .unwrap_or_else(|| panic!("{report}"));
    assert!((0.0..=1.0).contains(&top1));
    let adapter = dir.path().join("kitchen.safetensors");
    ok(&run(
        dir.path(),
        &["adapt", s(&ds), "--labels", s(&mixed()), "-o", s(&adapter)],
    ));
    let o = run(
        dir.path(),
        &[
            "classify",
            "--adapter",
            s(&adapter),
            "-k",
            "0",
            "--format",
            "jsonl",
            s(&ds.join("bibimbap/rgba.png")),
        ],
    );
    let r = &jsonl_records(ok(&o))[0];
    assert!(probs(r).iter().all(|&x| x > 0.0 && x < 1.0), "{r}");
    // The adapter is bound to this checkpoint: another model refuses it.
    let o = foodclip()
        .args(["--model"])
        .arg(fixtures().join("tiny-openai"))
        .args([
            "classify",
            "--adapter",
            s(&adapter),
            s(&ds.join("bibimbap/rgba.png")),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn index_and_search_find_photos_by_text() {
    let dir = tempfile::tempdir().unwrap();
    let arch = dir.path().join("arch");
    std::fs::create_dir_all(&arch).unwrap();
    for i in 0..4 {
        write_jpeg(&synthetic(120, 90, i + 1), &arch.join(format!("{i}.jpg")));
    }
    ok(&run(dir.path(), &["index", "arch"]));
    let db = arch.join(".foodclip/index.sqlite");
    let o = run(
        dir.path(),
        &[
            "search",
            "--db",
            s(&db),
            "bibimbap",
            "--top",
            "4",
            "-f",
            "jsonl",
        ],
    );
    let hits = jsonl_records(ok(&o));
    assert_eq!(hits.len(), 4);
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
}

/// The registered SigLIP models resolve through a hub cache at their pinned commits (the fixture
/// standing in for the real files) and answer exactly as the checkpoint directory does.
#[test]
fn registered_siglip_models_load_from_the_hub_cache() {
    let hub = tempfile::tempdir().unwrap();
    let registry = foodclip::registry::Registry::builtin();
    let photo = fixtures().join("images/baseline.jpg");
    let classify = |model: &str| {
        let o = foodclip()
            .env("HF_HUB_CACHE", hub.path())
            .env("HF_HUB_OFFLINE", "1")
            .args([
                "--exact-preprocess",
                "--model",
                model,
                "classify",
                "--labels",
            ])
            .arg(mixed())
            .args(["-k", "0", "--format", "jsonl"])
            .arg(&photo)
            .output()
            .unwrap();
        jsonl_records(ok(&o)).remove(0)
    };
    let direct = classify(s(&fixtures().join("tiny-siglip")));
    for name in [
        "siglip-base-patch16-256-multilingual",
        "siglip2-base-patch16-224",
    ] {
        let entry = registry.find(name).unwrap();
        assert!(entry.languages.iter().any(|l| l == "ko"), "{name}");
        let snapshot = hub
            .path()
            .join(format!("models--{}", entry.hub_id.replace('/', "--")))
            .join("snapshots")
            .join(&entry.revision);
        copy_checkpoint("tiny-siglip", &snapshot);
        let via_hub = classify(name);
        assert_eq!(probs(&via_hub), probs(&direct), "{name}");
        assert_eq!(via_hub["label"], direct["label"], "{name}");
    }
}
