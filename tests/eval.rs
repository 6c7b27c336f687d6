//! `foodclip eval` on fixture data sets, open-set answers in `classify`, and re-scoring stored
//! embeddings.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The fixture data set: class folders (one class has no photos), an `unknown` folder, a folder
/// that names no class, a photo outside every folder, unreadable files, and hidden entries.
fn dataset(root: &Path) -> PathBuf {
    let images = fixtures().join("images");
    let ds = root.join("trays");
    let put = |folder: &str, files: &[&str], from: &Path| {
        let dir = ds.join(folder);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            std::fs::copy(from.join(f), dir.join(f)).unwrap();
        }
    };
    put(
        "김치찌개",
        &["baseline.jpg", "wide.jpg", "progressive.jpg"],
        &images,
    );
    // Folder names in another spelling of a class: a synonym, upper case, an underscore.
    put(
        "Mixed_Rice_With_Vegetables",
        &["cmyk.jpg", "plain.bmp"],
        &images,
    );
    put("fried chicken", &["rgba.png", "lzw.tiff"], &images);
    put(
        "unknown",
        &["lossy.webp", "palette.png", "gray16.png"],
        &images,
    );
    put("pizza", &["grayscale.jpg"], &images);
    put(
        "fried chicken",
        &["truncated.jpg", "empty.jpg"],
        &fixtures().join("bad"),
    );
    std::fs::copy(images.join("rgb16.png"), ds.join("loose.png")).unwrap();
    std::fs::write(ds.join("README.txt"), "not a photo").unwrap();
    // Hidden entries are no part of the data set: an index's folder, a resource file macOS leaves
    // beside each photo on a USB stick (it ends in .jpg but holds no picture).
    std::fs::create_dir_all(ds.join(".foodclip")).unwrap();
    std::fs::copy(images.join("wide.jpg"), ds.join(".foodclip/thumb.jpg")).unwrap();
    std::fs::write(ds.join("김치찌개/._baseline.jpg"), b"\0\x05\x16\x07").unwrap();
    ds
}

fn tiny() -> std::process::Command {
    let mut cmd = foodclip();
    cmd.arg("--model").arg(fixtures().join("tiny-openai"));
    cmd
}

fn eval(dataset: &Path, extra: &[&str]) -> Output {
    tiny()
        .args(["eval", "--format", "json", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg(dataset)
        .args(extra)
        .output()
        .unwrap()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&o.stderr));
    })
}

/// Top-1 label per photo, from `classify` on the same photos.
fn classify_top1(paths: &[String]) -> HashMap<String, String> {
    let o = tiny()
        .args(["classify", "--format", "jsonl", "-k", "1", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .args(paths)
        .output()
        .unwrap();
    jsonl_records(&o.stdout)
        .into_iter()
        .filter(|v| v.get("predictions").is_some())
        .map(|v| {
            (
                v["path"].as_str().unwrap().to_string(),
                v["predictions"][0]["label"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn eval_scores_a_folder_data_set_and_lists_what_it_could_not() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let o = eval(&ds, &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "unreadable photos make exit code 1"
    );
    let v = json(&o);
    assert_eq!(v["n"], 7);
    assert_eq!(v["unknown_photos"], 3);
    let unreadable: Vec<&str> = v["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["path"].as_str().unwrap())
        .collect();
    assert_eq!(unreadable.len(), 2);
    assert!(unreadable.iter().all(|p| p.contains("fried chicken/")));
    let mut unmatched: Vec<(String, String)> = v["unmatched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["path"].as_str().unwrap().into(),
                u["label"].as_str().unwrap().into(),
            )
        })
        .collect();
    unmatched.sort();
    assert_eq!(unmatched.len(), 2);
    assert!(unmatched[0].0.ends_with("loose.png") && unmatched[0].1.is_empty());
    assert_eq!(unmatched[1].1, "pizza");

    // Per class: supports from the folders (the synonym folder counts for bibimbap), and a
    // class with no photos.
    let per_class: HashMap<&str, &Value> = v["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["label"].as_str().unwrap(), c))
        .collect();
    assert_eq!(per_class.len(), 5);
    assert_eq!(per_class["김치찌개"]["support"], 3);
    assert_eq!(per_class["bibimbap"]["support"], 2);
    assert_eq!(per_class["fried chicken"]["support"], 2);
    assert_eq!(per_class["떡볶이"]["support"], 0);
    assert!(per_class["떡볶이"]["recall"].is_null());

    // top-1 agrees with classify's answers on the same photos.
    let truths = [
        ("김치찌개", "김치찌개"),
        ("Mixed_Rice_With_Vegetables", "bibimbap"),
        ("fried chicken", "fried chicken"),
    ];
    let mut paths = Vec::new();
    let mut truth_of = HashMap::new();
    for (folder, class) in truths {
        for e in std::fs::read_dir(ds.join(folder)).unwrap() {
            let p = e.unwrap().path().to_string_lossy().into_owned();
            truth_of.insert(p.clone(), class);
            paths.push(p);
        }
    }
    let top1 = classify_top1(&paths);
    assert_eq!(top1.len(), 7);
    let right = top1
        .iter()
        .filter(|(p, l)| truth_of[p.as_str()] == l.as_str())
        .count();
    assert!(
        (v["top1"].as_f64().unwrap() - right as f64 / 7.0).abs() < 1e-9,
        "{v}"
    );
    assert!(v["top5"].as_f64().unwrap() >= v["top1"].as_f64().unwrap());
    // The confusion matrix agrees with the supports and with top-1.
    let rows = v["confusion_matrix"]["rows"].as_array().unwrap();
    let labels = v["confusion_matrix"]["labels"].as_array().unwrap();
    let mut trace = 0;
    for (i, row) in rows.iter().enumerate() {
        let row: Vec<u64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let label = labels[i].as_str().unwrap();
        assert_eq!(
            row.iter().sum::<u64>(),
            per_class[label]["support"].as_u64().unwrap()
        );
        trace += row[i];
    }
    assert_eq!(trace as usize, right);
    // Macro F1 is the mean F1 of the classes with photos or predictions.
    let present: Vec<f64> = per_class
        .values()
        .filter(|c| c["support"].as_u64().unwrap() + c["predicted"].as_u64().unwrap() > 0)
        .map(|c| c["f1"].as_f64().unwrap())
        .collect();
    let mean = present.iter().sum::<f64>() / present.len() as f64;
    assert!((v["macro_f1"].as_f64().unwrap() - mean).abs() < 1e-9, "{v}");
    // The confusions list the off-diagonal cells of the matrix, largest first.
    let index = |name: &str| labels.iter().position(|l| l == name).unwrap();
    let confusions = v["confusions"].as_array().unwrap();
    let cells = rows
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            let r = r.as_array().unwrap();
            (0..r.len()).filter(move |&j| j != i && r[j].as_u64().unwrap() > 0)
        })
        .count();
    assert_eq!(confusions.len(), cells.min(10), "{v}");
    let counts: Vec<u64> = confusions
        .iter()
        .map(|c| c["count"].as_u64().unwrap())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
    for c in confusions {
        let (t, p) = (
            index(c["truth"].as_str().unwrap()),
            index(c["predicted"].as_str().unwrap()),
        );
        assert_ne!(t, p);
        assert_eq!(rows[t][p].as_u64(), c["count"].as_u64(), "{c}");
    }
}

#[test]
fn a_csv_data_set_gives_the_same_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let folder = json(&eval(&ds, &[]));
    let mut csv = String::from("path,label\n");
    for (folder, label) in [
        ("김치찌개", "kimchi stew"),
        ("Mixed_Rice_With_Vegetables", "비빔밥"),
        ("fried chicken", "\"fried chicken\""),
        ("unknown", "unknown"),
        ("pizza", "pizza"),
    ] {
        let mut names: Vec<_> = std::fs::read_dir(ds.join(folder))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for n in names {
            // Relative to the CSV's folder.
            csv.push_str(&format!("\"trays/{folder}/{n}\",{label}\n"));
        }
    }
    csv.push_str("trays/loose.png,\n");
    std::fs::write(dir.path().join("set.csv"), csv).unwrap();
    let from_csv = json(&eval(&dir.path().join("set.csv"), &[]));
    for key in [
        "n",
        "top1",
        "top5",
        "macro_f1",
        "per_class",
        "unknown_photos",
    ] {
        assert!(!folder[key].is_null(), "{key}");
        assert_eq!(folder[key], from_csv[key], "{key}");
    }
    assert!(folder["n"].as_u64().unwrap() > 0);
    // A row with one field is an error naming the line.
    std::fs::write(dir.path().join("bad.csv"), "path,label\na.jpg,x\nb.jpg\n").unwrap();
    let o = eval(&dir.path().join("bad.csv"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.csv:3: expected two fields"));
}

#[test]
fn stored_embeddings_rescore_without_the_photos_and_only_with_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let store = dir.path().join("emb.safetensors");
    let first = json(&eval(&ds, &["--save-embeddings", store.to_str().unwrap()]));
    let again = json(&eval(&ds, &["--embeddings", store.to_str().unwrap()]));
    for key in ["n", "top1", "top5", "per_class", "confusion_matrix"] {
        assert_eq!(first[key], again[key], "{key}");
    }

    // classify from stored embeddings: the same answers as from the photos.
    let o = tiny()
        .args(["classify", "--format", "jsonl", "-k", "1", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg("--embeddings")
        .arg(&store)
        .output()
        .unwrap();
    let stored = records(&o);
    let paths: Vec<String> = stored
        .iter()
        .map(|r| r["path"].as_str().unwrap().into())
        .collect();
    assert_eq!(paths.len(), 10, "every readable photo with a truth");
    let from_photos = classify_top1(&paths);
    for r in &stored {
        let path = r["path"].as_str().unwrap();
        assert_eq!(
            r["predictions"][0]["label"].as_str().unwrap(),
            from_photos[path]
        );
    }

    // Another checkpoint refuses them.
    let o = foodclip()
        .arg("--model")
        .arg(fixtures().join("tiny-gelu"))
        .args(["eval", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg(&ds)
        .arg("--embeddings")
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("holds embeddings from checkpoint"), "{err}");
}

fn classify_open_set(extra: &[&str]) -> Output {
    tiny()
        .args(["classify", "--format", "jsonl", "-k", "2", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .args(extra)
        .arg(fixtures().join("images/baseline.jpg"))
        .arg(fixtures().join("images/wide.jpg"))
        .output()
        .unwrap()
}

fn records(o: &Output) -> Vec<Value> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    jsonl_records(&o.stdout)
}

#[test]
fn open_set_rules_answer_unknown_when_unconvincing() {
    for r in records(&classify_open_set(&["--threshold", "1"])) {
        assert_eq!(r["label"], "unknown");
    }
    for r in records(&classify_open_set(&["--threshold", "0"])) {
        assert_eq!(r["label"], r["predictions"][0]["label"]);
    }
    for r in records(&classify_open_set(&["--min-margin", "0.0001"])) {
        let p = &r["predictions"];
        let margin = p[0]["prob"].as_f64().unwrap() - p[1]["prob"].as_f64().unwrap();
        let want = if margin >= 0.0001 {
            p[0]["label"].as_str().unwrap()
        } else {
            "unknown"
        };
        assert_eq!(r["label"], want);
    }
    // Without a rule there is no decision field.
    assert!(records(&classify_open_set(&[]))[0].get("label").is_none());
    let o = classify_open_set(&["--threshold", "1.5"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn calibration_sweeps_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let v = json(&eval(&ds, &["--calibrate", "--target-precision", "0"]));
    let cal = &v["calibration"];
    let points = cal["points"].as_array().unwrap();
    assert_eq!(points.len(), 10, "one point per distinct top-1 probability");
    let thresholds: Vec<f64> = points
        .iter()
        .map(|p| p["threshold"].as_f64().unwrap())
        .collect();
    assert!(thresholds.windows(2).all(|w| w[0] < w[1]));
    let coverage: Vec<f64> = points
        .iter()
        .map(|p| p["coverage"].as_f64().unwrap())
        .collect();
    assert!(coverage.windows(2).all(|w| w[0] >= w[1]));
    assert_eq!(coverage[0], 1.0);
    assert_eq!(points[0]["unknown_rejected"], 0.0);
    // Any precision reaches 0: the lowest threshold, answering every photo.
    assert_eq!(cal["threshold"], points[0]["threshold"]);
    // The table names the flag to use.
    let o = tiny()
        .args(["eval", "--calibrate", "--target-precision", "0", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg(&ds)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("for precision >= 0: --threshold "), "{text}");
}
