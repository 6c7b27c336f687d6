//! `foodclip adapt`: Tip-Adapter's formula against numpy, cross-validation choosing the photos
//! when the class names carry nothing, and adapters refused where they do not belong.

mod common;

use common::photos::{synthetic, write_jpeg};
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

const TEMPLATES: [&str; 4] = ["-t", "a photo of {}, a type of food.", "-t", "{}"];

fn run(model: &str, args: &[&str]) -> Output {
    foodclip()
        .args(["--exact-preprocess", "--model"])
        .arg(fixtures().join(model))
        .args(args)
        .output()
        .unwrap()
}

/// `foodclip adapt DATA --labels LABELS -o OUT EXTRA...` on tiny-openai.
fn adapt(data: &Path, labels: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["adapt", s(data), "--labels", s(labels), "-o", s(out)];
    args.extend(extra);
    run("tiny-openai", &args)
}

/// A CSV field, quoted.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_formula_matches_numpy_with_fixed_alpha_and_beta() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/adapter.json")).unwrap(),
    )
    .unwrap();
    let labels = LabelsOf::mixed();
    let dir = tempfile::tempdir().unwrap();
    let images = fixtures().join("images");
    let mut csv = String::new();
    for row in reference["support"].as_array().unwrap() {
        let class = row["class"].as_u64().unwrap() as usize;
        let file = images.join(row["file"].as_str().unwrap());
        csv.push_str(&format!(
            "{},{}\n",
            quoted(s(&file)),
            quoted(&labels.0[class])
        ));
    }
    let support = dir.path().join("support.csv");
    std::fs::write(&support, csv).unwrap();
    let adapter = dir.path().join("a.safetensors");
    let mixed = fixtures().join("labels/mixed.txt");
    let mut args = vec![
        "adapt",
        s(&support),
        "--labels",
        s(&mixed),
        "-o",
        s(&adapter),
    ];
    args.extend(["--alpha", "2", "--beta", "3", "--format", "json"]);
    args.extend(TEMPLATES);
    let report: Value = serde_json::from_slice(ok(&run("tiny-openai", &args))).unwrap();
    assert_eq!(report["report"]["photos"], 10);
    assert_eq!(report["report"]["method"], "tip-adapter");

    let files: Vec<PathBuf> = reference["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| images.join(f.as_str().unwrap()))
        .collect();
    let mut args = vec![
        "classify",
        "--adapter",
        s(&adapter),
        "-k",
        "0",
        "--format",
        "jsonl",
    ];
    args.extend(files.iter().map(|f| s(f)));
    let records = jsonl_records(ok(&run("tiny-openai", &args)));
    assert_eq!(records.len(), files.len());
    for (record, want) in records.iter().zip(reference["probs"].as_array().unwrap()) {
        let got: HashMap<&str, f64> = record["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["label"].as_str().unwrap(), p["prob"].as_f64().unwrap()))
            .collect();
        for (c, w) in want.as_array().unwrap().iter().enumerate() {
            let g = got[labels.0[c].as_str()];
            let w = w.as_f64().unwrap();
            assert!(
                (g - w).abs() < 1e-3,
                "{}: {} {g} vs {w}",
                record["path"],
                labels.0[c]
            );
        }
    }
}

/// The display names of a label file's classes.
struct LabelsOf(Vec<String>);

impl LabelsOf {
    fn mixed() -> Self {
        let set = foodclip::labels::LabelSet::load(&fixtures().join("labels/mixed.txt")).unwrap();
        Self(
            set.classes
                .iter()
                .map(|c| c.display().to_string())
                .collect(),
        )
    }
}

/// Four "dishes" the random text tower cannot tell by name (`dish-001`...), each a family of
/// pictures: 8 photos each, 4 to adapt on and 4 held out, in class folders.
fn dishes(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let labels = dir.join("dishes.txt");
    std::fs::write(&labels, "dish-001\ndish-002\ndish-003\ndish-004\n").unwrap();
    for (set, range) in [("support", 0..4u32), ("held", 4..8)] {
        for class in 0..4u32 {
            let folder = dir.join(set).join(format!("dish-00{}", class + 1));
            std::fs::create_dir_all(&folder).unwrap();
            for i in range.clone() {
                // The class sets the picture's pattern and tint; each photo varies it.
                let mut img = synthetic(160, 120, class * 7 + 1);
                let noise = synthetic(160, 120, 100 + class * 10 + i);
                for (p, n) in img.pixels_mut().zip(noise.pixels()) {
                    for ch in 0..3 {
                        p.0[ch] = ((p.0[ch] as u32 * 3 + n.0[ch] as u32) / 4) as u8;
                    }
                    p.0[class as usize % 3] = p.0[class as usize % 3].saturating_add(40);
                }
                write_jpeg(&img, &folder.join(format!("{i}.jpg")));
            }
        }
    }
    (labels, dir.join("support"), dir.join("held"))
}

/// Top-1 on `held` of the nearest class mean of `support`'s embeddings (cosine).
fn nearest_class_mean(support: &Path, held: &Path) -> f64 {
    let embed = |dir: &Path| -> Vec<(String, Vec<f32>)> {
        let o = run("tiny-openai", &["embed", s(dir), "--format", "jsonl"]);
        jsonl_records(ok(&o))
            .iter()
            .map(|r| {
                let path = PathBuf::from(r["path"].as_str().unwrap());
                let class = path
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                (
                    class,
                    serde_json::from_value(r["embedding"].clone()).unwrap(),
                )
            })
            .collect()
    };
    let mut means: HashMap<String, Vec<f32>> = HashMap::new();
    for (class, e) in embed(support) {
        let m = means.entry(class).or_insert_with(|| vec![0.0; e.len()]);
        m.iter_mut().zip(&e).for_each(|(m, v)| *m += v);
    }
    let held = embed(held);
    let right = held
        .iter()
        .filter(|(class, e)| {
            let best = means
                .iter()
                .max_by(|a, b| cosine(a.1, e).total_cmp(&cosine(b.1, e)))
                .unwrap();
            best.0 == class
        })
        .count();
    right as f64 / held.len() as f64
}

#[test]
fn cross_validation_lets_the_photos_decide_when_names_say_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, support, held) = dishes(dir.path());
    let adapter = dir.path().join("dishes.safetensors");
    let o = adapt(&support, &labels, &adapter, &["--format", "json", "--fit"]);
    let report: Value = serde_json::from_slice(ok(&o)).unwrap();
    let r = &report["report"];
    assert_eq!(r["photos"], 16);
    assert_eq!(r["folds"], 16, "leave-one-out");
    assert!(r["fitted_top1"].is_number());
    let eval = |extra: &[&str]| -> f64 {
        let mut args = vec!["eval", s(&held), "--format", "json"];
        args.extend(extra);
        let v: Value = serde_json::from_slice(ok(&run("tiny-openai", &args))).unwrap();
        v["top1"].as_f64().unwrap()
    };
    let zero_shot = eval(&["--labels", s(&labels)]);
    let adapted = eval(&["--adapter", s(&adapter)]);
    let ncm = nearest_class_mean(&support, &held);
    eprintln!(
        "held-out top-1: zero-shot {zero_shot}, adapter {adapted}, nearest class mean {ncm}; {r}"
    );
    assert_ne!(r["method"], "zero-shot", "{r}");
    assert!(
        adapted >= ncm - 0.125,
        "adapter {adapted} vs nearest class mean {ncm}"
    );
    assert!(
        adapted > zero_shot,
        "adapter {adapted} vs zero-shot {zero_shot}"
    );
}

#[test]
fn adapters_are_refused_where_they_do_not_belong_and_grow_with_update() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, support, held) = dishes(dir.path());
    let adapter = dir.path().join("a.safetensors");
    ok(&adapt(&support, &labels, &adapter, &[]));
    let photo = held.join("dish-001/4.jpg");
    // Another checkpoint: exit 2, one line.
    let o = run(
        "tiny-gelu",
        &["classify", s(&photo), "--adapter", s(&adapter)],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("was made with checkpoint") && err.lines().count() == 1,
        "{err}"
    );
    // A label file with other classes: exit 2; the same classes: fine.
    let mixed = fixtures().join("labels/mixed.txt");
    let o = run(
        "tiny-openai",
        &[
            "classify",
            s(&photo),
            "--adapter",
            s(&adapter),
            "--labels",
            s(&mixed),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("lists other classes than the adapter"));
    ok(&run(
        "tiny-openai",
        &[
            "classify",
            s(&photo),
            "--adapter",
            s(&adapter),
            "--labels",
            s(&labels),
        ],
    ));
    // A file that is not an adapter.
    let o = run(
        "tiny-openai",
        &["classify", s(&photo), "--adapter", s(&labels)],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a foodclip adapter"));

    // --update: the held-out photos and a new class join.
    let more = dir.path().join("more.txt");
    std::fs::write(&more, "dish-001\ndish-002\ndish-003\ndish-004\ndish-005\n").unwrap();
    std::fs::create_dir_all(held.join("dish-005")).unwrap();
    write_jpeg(&synthetic(90, 90, 555), &held.join("dish-005/a.jpg"));
    write_jpeg(&synthetic(90, 90, 556), &held.join("dish-005/b.jpg"));
    // A folder that names no class: listed, not used.
    std::fs::create_dir_all(held.join("mystery")).unwrap();
    write_jpeg(&synthetic(90, 90, 557), &held.join("mystery/c.jpg"));
    let updated = dir.path().join("b.safetensors");
    let update = ["--update", s(&adapter)];
    let o = adapt(
        &held,
        &more,
        &updated,
        &[&update[..], &["--format", "json"]].concat(),
    );
    let report: Value = serde_json::from_slice(ok(&o)).unwrap();
    assert_eq!(report["report"]["photos"], 16 + 18);
    assert_eq!(report["unmatched"][0]["label"], "mystery");
    assert_eq!(report["classes"], 5);
    let o = run(
        "tiny-openai",
        &[
            "classify",
            s(&photo),
            "--adapter",
            s(&updated),
            "-k",
            "0",
            "--format",
            "jsonl",
        ],
    );
    assert_eq!(
        jsonl_records(ok(&o))[0]["predictions"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // An update that drops a class is refused.
    let fewer = dir.path().join("fewer.txt");
    std::fs::write(&fewer, "dish-001\n").unwrap();
    let o = adapt(&held, &fewer, &updated, &update);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn stored_embeddings_adapt_and_classify_as_the_photos_do() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, support, held) = dishes(dir.path());
    let (from_photos, from_stored) = (
        dir.path().join("p.safetensors"),
        dir.path().join("e.safetensors"),
    );
    let stored = dir.path().join("support-embeddings.safetensors");
    let report = |out: &Path, extra: &[&str]| -> Value {
        let extra = [&["--format", "json"][..], extra].concat();
        serde_json::from_slice(ok(&adapt(&support, &labels, out, &extra))).unwrap()
    };
    let a = report(&from_photos, &["--save-embeddings", s(&stored)]);
    let b = report(&from_stored, &["--embeddings", s(&stored)]);
    assert_eq!(a["report"], b["report"]);
    // classify --embeddings with the adapter equals classify of the photos.
    let held_stored = dir.path().join("held.safetensors");
    let c1 = run(
        "tiny-openai",
        &[
            "classify",
            s(&held),
            "--adapter",
            s(&from_stored),
            "-k",
            "0",
            "--format",
            "jsonl",
            "--save-embeddings",
            s(&held_stored),
        ],
    );
    let c2 = run(
        "tiny-openai",
        &[
            "classify",
            "--embeddings",
            s(&held_stored),
            "--adapter",
            s(&from_stored),
            "-k",
            "0",
            "--format",
            "jsonl",
        ],
    );
    let (r1, r2) = (jsonl_records(ok(&c1)), jsonl_records(ok(&c2)));
    assert_eq!(r1.len(), 16);
    for (x, y) in r1.iter().zip(&r2) {
        for (p, q) in x["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(y["predictions"].as_array().unwrap())
        {
            assert_eq!(p["label"], q["label"]);
            assert!((p["prob"].as_f64().unwrap() - q["prob"].as_f64().unwrap()).abs() < 1e-6);
        }
    }
    // Augmented views: reproducible with a seed.
    let views = ["--augment", "2", "--seed", "7"];
    let (p1, p2) = (
        dir.path().join("v1.safetensors"),
        dir.path().join("v2.safetensors"),
    );
    let v1 = report(&p1, &views);
    let v2 = report(&p2, &views);
    assert_eq!(v1["report"], v2["report"]);
    let features = |p: &Path| {
        foodclip::adapter::Adapter::load(p)
            .unwrap()
            .support
            .features
    };
    let (augmented, plain) = (features(&p1), features(&from_photos));
    assert_eq!(augmented, features(&p2));
    assert_ne!(augmented, plain);
    // Views of the same photo: close to it, not equal.
    for (a, b) in augmented.chunks(24).zip(plain.chunks(24)) {
        let c = cosine(a, b);
        assert!(c > 0.8 && c < 0.99999, "cosine {c}");
    }
}
