//! Label files end to end: dish groups and group scores in `classify`, `labels check` findings on
//! crafted files, `labels show`, template files, and the model-language warning.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

const GROUPED: &str = "# grouped\n[찌개 | stew]\n김치찌개 | kimchi stew\n된장찌개\n\n[rice]\nbibimbap | 비빔밥\nfried rice\ngimbap\n";

fn classify(labels: &Path, extra: &[&str]) -> Output {
    foodclip()
        .arg("--model")
        .arg(fixtures().join("tiny-openai"))
        .args(["classify", "-k", "0", "--labels"])
        .arg(labels)
        .args(extra)
        .arg(fixtures().join("images/baseline.jpg"))
        .arg(fixtures().join("images/wide.jpg"))
        .output()
        .unwrap()
}

#[test]
fn group_scores_sum_their_classes() {
    let dir = tempfile::tempdir().unwrap();
    let labels = write(dir.path(), "grouped.txt", GROUPED);
    let o = classify(&labels, &["--format", "jsonl", "--group-scores"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records: Vec<Value> = jsonl_records(&o.stdout);
    assert_eq!(records.len(), 2);
    let expected_group = |label: &str| {
        if ["김치찌개", "된장찌개"].contains(&label) {
            "찌개"
        } else {
            "rice"
        }
    };
    for r in &records {
        let preds = r["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), 5);
        let mut sums = std::collections::HashMap::new();
        for p in preds {
            let label = p["label"].as_str().unwrap();
            assert_eq!(p["group"], expected_group(label), "{p}");
            *sums.entry(expected_group(label)).or_insert(0.0) += p["prob"].as_f64().unwrap();
        }
        let groups = r["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2);
        let (first, second) = (
            groups[0]["prob"].as_f64().unwrap(),
            groups[1]["prob"].as_f64().unwrap(),
        );
        assert!(first >= second && second > 0.0, "{first} {second}");
        for g in groups {
            let want = sums[g["group"].as_str().unwrap()];
            assert!(
                (g["prob"].as_f64().unwrap() - want).abs() < 1e-5,
                "{g} vs {want}"
            );
        }
    }

    // Without --group-scores: the group of each prediction, no group list.
    let plain = classify(&labels, &["--format", "jsonl"]);
    let first: Value =
        serde_json::from_slice(plain.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert!(first.get("groups").is_none());
    assert!(first["predictions"][0]["group"].is_string());

    // CSV: group and group_prob columns.
    let csv = classify(&labels, &["--format", "csv", "--group-scores"]);
    let text = String::from_utf8(csv.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "path,rank,label,group,group_prob,score,prob,error"
    );
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(row[3], expected_group(row[2]));
    assert!(row[4].parse::<f64>().unwrap() >= row[6].parse::<f64>().unwrap());

    // A file without groups cannot give group scores.
    let o = classify(&fixtures().join("labels/mixed.txt"), &["--group-scores"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("mixed.txt has no [group] header lines"));
}

fn check(labels: &Path, model: &str, extra: &[&str]) -> Output {
    foodclip()
        .arg("--model")
        .arg(fixtures().join(model))
        .args(["labels", "check"])
        .arg(labels)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn labels_check_finds_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let long =
        "a very long dish name that keeps going with rice, pork, kimchi, tofu, egg and much more";
    let text = format!(
        "[soup]\n[stew]\n김치찌개 | kimchi stew\nBibimbap\nbibimbap\n{long} | kimchi stew\nbibimbap\nx || y\n"
    );
    let labels = write(dir.path(), "crafted.txt", &text);
    let o = check(&labels, "tiny-gelu", &["--pairs", "3"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let shown = labels.display().to_string();
    for want in [
        format!("{shown}:1: warning: group \"soup\" has no classes"),
        format!("{shown}:6: warning: \"kimchi stew\" also names the class on line 3"),
        format!("{shown}:6: warning: name \"{long}\" makes 1 prompt longer than the model's 32-token context"),
        format!("{shown}:7: error: duplicate class \"bibimbap\" (first on line 5)"),
        format!("{shown}:8: error: empty name in \"x || y\""),
        format!("{shown}:5: warning: class \"bibimbap\" is nearly the same as \"Bibimbap\" (line 4)"),
        format!("{shown}: 4 classes, 2 groups: 2 errors, 4 warnings"),
    ] {
        assert!(out.contains(&want), "missing {want:?} in\n{out}");
    }

    // Without a model to load, the file's own findings still print before the error (exit 2).
    let o = check(&labels, "no-such-model", &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(&format!("{shown}:7: error: duplicate class")),
        "{out}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--no-model checks the file alone"), "{err}");

    let o = check(&labels, "tiny-gelu", &["--format", "json", "--pairs", "3"]);
    let report = stdout_json(&o);
    assert_eq!(report["errors"], 2);
    assert_eq!(report["similar_pairs"].as_array().unwrap().len(), 3);
    // The tokenizer lowercases: the two spellings are one prompt, so one embedding.
    let top = &report["similar_pairs"][0];
    assert_eq!(
        (top["a"].as_str(), top["b"].as_str()),
        (Some("Bibimbap"), Some("bibimbap"))
    );
    assert!(top["cosine"].as_f64().unwrap() > 0.9999, "{top}");

    // The shipped lists are clean without a model; a clean file exits 0.
    for shipped in ["korean.txt", "english.txt"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("labels")
            .join(shipped);
        let o = check(&path, "tiny-gelu", &["--no-model", "--format", "json"]);
        assert_eq!(o.status.code(), Some(0));
        let report = stdout_json(&o);
        assert_eq!(
            (report["errors"].as_u64(), report["warnings"].as_u64()),
            (Some(0), Some(0)),
            "{report}"
        );
    }
}

#[test]
fn labels_show_lists_groups_names_and_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let labels = write(dir.path(), "grouped.txt", GROUPED);
    let show = |extra: &[&str]| {
        let o = foodclip()
            .args(["labels", "show", "--format", "json"])
            .arg(&labels)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success());
        stdout_json(&o)
    };
    let v = show(&[]);
    assert_eq!(v["groups"][0]["names"], serde_json::json!(["찌개", "stew"]));
    let kimchi = &v["classes"][0];
    assert_eq!(kimchi["group"], "찌개");
    assert_eq!(kimchi["line"], 3);
    let prompts: Vec<&str> = kimchi["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    // Korean templates for the Hangul name, English ones for the English name, from the files.
    let file = |name: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("labels/templates")
                .join(name),
        )
        .unwrap()
    };
    let templates = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    let (ko, en) = (
        templates(&file("food.ko.txt")),
        templates(&file("food.en.txt")),
    );
    let mut want: Vec<String> = ko.iter().map(|t| t.replace("{}", "김치찌개")).collect();
    want.extend(en.iter().map(|t| t.replace("{}", "kimchi stew")));
    assert_eq!(prompts, want);

    // --template FILE applies that file to every name.
    let en_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/templates/food.en.txt");
    let v = show(&["--template", en_file.to_str().unwrap()]);
    assert_eq!(
        v["classes"][0]["prompts"][0],
        en[0].replace("{}", "김치찌개")
    );

    let table = foodclip()
        .args(["labels", "show"])
        .arg(&labels)
        .output()
        .unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("[찌개 | stew]  line 2"), "{text}");
    assert!(text.contains("    also: kimchi stew"), "{text}");
}

/// A hub cache holding the tiny-openai files as the snapshot of a registered model.
fn fake_hub(root: &Path, name: &str) -> String {
    let registry = foodclip::registry::Registry::builtin();
    let entry = registry.find(name).unwrap();
    let snapshot = root
        .join(format!("models--{}", entry.hub_id.replace('/', "--")))
        .join("snapshots")
        .join(&entry.revision);
    copy_checkpoint("tiny-openai", &snapshot);
    entry.name.clone()
}

#[test]
fn korean_labels_on_an_english_model_get_one_warning() {
    let hub = tempfile::tempdir().unwrap();
    let english = fake_hub(hub.path(), "clip-vit-base-patch32");
    let korean = fake_hub(hub.path(), "clip-vit-base-patch32-ko");
    let run = |model: &str| {
        foodclip()
            .env("HF_HUB_CACHE", hub.path())
            .args(["--model", model, "classify", "--labels"])
            .arg(fixtures().join("labels/mixed.txt"))
            .arg(fixtures().join("images/baseline.jpg"))
            .output()
            .unwrap()
    };
    let o = run(&english);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("Korean names (e.g. \"김치찌개\")"),
        "{err}"
    );
    assert!(
        warnings[0].contains("use --model clip-vit-base-patch32-ko"),
        "{err}"
    );
    let o = run(&korean);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning:"));
}

#[test]
fn labels_check_without_a_model_says_how_to_check_the_file_alone() {
    // The default model is not in the (empty) hub cache and the network is off.
    let o = foodclip()
        .args(["labels", "check"])
        .arg(fixtures().join("labels/mixed.txt"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--no-model checks the file alone"), "{err}");
}
