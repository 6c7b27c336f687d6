//! End-to-end tests of the `foodclip` binary: outputs, exit codes and error messages.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

fn run(args: &[&str]) -> Output {
    foodclip().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a configuration error: exit 2, one line on stderr mentioning `needle`, no panic.
fn assert_config_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

fn classify_args<'a>(model: &'a str, labels: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        model,
        "--exact-preprocess",
        "classify",
        "--labels",
        labels,
        "-t",
        "a photo of {}, a type of food.",
        "-t",
        "{}",
    ]
}

#[test]
fn classify_jsonl_matches_reference_and_skips_bad_photos() {
    let fx = fixtures();
    let model = fx.join("tiny-gelu");
    let labels = fx.join("labels/mixed.txt");
    let reference = reference("tiny-gelu");
    let good: Vec<PathBuf> = reference
        .images
        .iter()
        .map(|i| fx.join("images").join(&i.file))
        .collect();
    let mut inputs: Vec<PathBuf> = good[..3].to_vec();
    inputs.push(fx.join("bad/truncated.jpg"));
    inputs.extend(good[3..].iter().cloned());
    inputs.push(fx.join("bad/empty.jpg"));
    let mut args = classify_args(path(&model), path(&labels));
    args.extend(["--format", "jsonl", "--top-k", "3", "--batch-size", "4"]);
    args.extend(inputs.iter().map(|p| path(p)));
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("truncated.jpg: truncated image"), "{err}");
    assert!(err.contains("empty.jpg: empty file"), "{err}");
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), inputs.len());
    let mut refs = reference.images.iter();
    for (line, input) in lines.iter().zip(&inputs) {
        assert_eq!(line["path"], path(input));
        if input.parent().unwrap().ends_with("bad") {
            assert!(line["error"].as_str().unwrap().len() > 5);
            continue;
        }
        let r = refs.next().unwrap();
        let preds = line["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), 3);
        for p in preds {
            let class = reference
                .classes
                .iter()
                .position(|c| c.names[0] == p["label"])
                .unwrap();
            assert!((p["score"].as_f64().unwrap() - r.scores[class] as f64).abs() <= 1e-4);
            assert!((p["prob"].as_f64().unwrap() - r.probs[class] as f64).abs() <= 1e-3);
        }
        let best = r.scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert!((preds[0]["score"].as_f64().unwrap() - best as f64).abs() <= 1e-4);
    }
}

/// The closing line counts failures apart and gives a speed of photos classified, not of photos
/// tried: a run where every photo fails did no work.
#[test]
fn summary_speed_counts_only_photos_classified() {
    let fx = fixtures();
    let model = fx.join("tiny-gelu");
    let labels = fx.join("labels/mixed.txt");
    let (truncated, empty) = (fx.join("bad/truncated.jpg"), fx.join("bad/empty.jpg"));
    let mut args = classify_args(path(&model), path(&labels));
    args.extend(["--format", "jsonl", path(&truncated), path(&empty)]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let summary = err.lines().last().unwrap();
    assert!(summary.contains("0 done, 2 failed, 0 skipped"), "{err}");
    assert!(summary.contains("(0.00 photos/s)"), "{err}");
    // By regions too: a photo none of whose regions is done is no photo done.
    let o = run(&[&args[..], &["--grid", "1x2"]].concat());
    let err = stderr(&o);
    let summary = err.lines().last().unwrap();
    assert!(
        summary.contains("0 regions done, 2 failed, of 2 photos"),
        "{err}"
    );
    assert!(summary.contains("(0.00 photos/s, 0.00 regions/s)"), "{err}");
}

/// `foodclip ARGS` bound by folder permissions: as root, without the capabilities that let root
/// read any folder (`setpriv`, util-linux); as anyone else, plainly.
#[cfg(unix)]
fn run_bound_by_permissions(args: &[&str]) -> Output {
    let plain = foodclip();
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("setpriv");
        let dropped = "-dac_override,-dac_read_search";
        c.arg(format!("--inh-caps={dropped}"))
            .arg(format!("--bounding-set={dropped}"))
            .arg("--")
            .arg(plain.get_program());
        for (key, value) in plain.get_envs() {
            match value {
                Some(v) => c.env(key, v),
                None => c.env_remove(key),
            };
        }
        c
    } else {
        plain
    };
    cmd.args(args).output().unwrap()
}

/// A folder that cannot be read is one failure of a classify run, named on stderr, and the
/// other folders' photos are classified; `index`, which would take its photos as deleted,
/// refuses before it makes a store.
#[cfg(unix)]
#[test]
fn unreadable_folders_are_reported_and_the_rest_run() {
    use std::os::unix::fs::PermissionsExt;
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let (open, locked) = (dir.path().join("open"), dir.path().join("locked"));
    for d in [&open, &locked] {
        std::fs::create_dir(d).unwrap();
        std::fs::copy(fx.join("images/baseline.jpg"), d.join("tray.jpg")).unwrap();
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (model, labels) = (fx.join("tiny-gelu"), fx.join("labels/mixed.txt"));
    let mut args = classify_args(path(&model), path(&labels));
    args.extend(["--format", "jsonl", path(dir.path())]);
    let o = run_bound_by_permissions(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let want = format!("{}: cannot read this folder", locked.display());
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("1 done, 1 failed"), "{err}");
    let open_photo = open.join("tray.jpg");
    assert_eq!(jsonl_paths(&o.stdout), [path(&open_photo)]);

    let o = run_bound_by_permissions(&["--model", path(&model), "index", path(dir.path())]);
    assert_config_error(&o, &format!("cannot read folder {}", locked.display()));
    assert!(!dir.path().join(".foodclip").exists());
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn formats_json_csv_tsv_table() {
    let fx = fixtures();
    let model = fx.join("tiny-openai");
    let labels = fx.join("labels/mixed.txt");
    let img = fx.join("images/baseline.jpg");
    let bad = fx.join("bad/not-an-image.jpg");
    let base = classify_args(path(&model), path(&labels));

    let mut args = base.clone();
    args.extend(["--format", "json", "--top-k", "0", path(&img), path(&bad)]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v[0]["predictions"].as_array().unwrap().len(),
        5,
        "top-k 0 means every class"
    );
    let probs: f64 = v[0]["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["prob"].as_f64().unwrap())
        .sum();
    assert!((probs - 1.0).abs() < 1e-5);
    assert!(v[1]["error"].as_str().unwrap().contains("not an image"));

    for (format, sep) in [("csv", ','), ("tsv", '\t')] {
        let mut args = base.clone();
        args.extend(["--format", format, "-k", "2", path(&img)]);
        let o = run(&args);
        assert!(o.status.success());
        let text = String::from_utf8(o.stdout).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(
            rows[0].split(sep).collect::<Vec<_>>(),
            ["path", "rank", "label", "score", "prob", "error"]
        );
        assert_eq!(rows.len(), 3);
        assert!(
            rows[1].starts_with(&format!("{}{sep}1{sep}", path(&img))),
            "{}",
            rows[1]
        );
    }

    let mut args = base.clone();
    args.extend(["--format", "table", "-k", "2", path(&img)]);
    let text = String::from_utf8(run(&args).stdout).unwrap();
    assert!(
        text.starts_with(path(&img)) && text.contains("  1  ") && text.contains('%'),
        "{text}"
    );
}

/// Without `--format`, `--output` FILE gets the format its extension names; `--format` wins.
#[test]
fn output_files_take_the_format_of_their_extension() {
    let fx = fixtures();
    let model = fx.join("tiny-openai");
    let labels = fx.join("labels/mixed.txt");
    let img = fx.join("images/baseline.jpg");
    let dir = tempfile::tempdir().unwrap();
    let written = |name: &str, extra: &[&str]| {
        let file = dir.path().join(name);
        let mut args = classify_args(path(&model), path(&labels));
        args.extend(["-k", "2", "-o", path(&file), path(&img)]);
        args.extend(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read_to_string(file).unwrap()
    };
    assert!(written("a.csv", &[]).starts_with("path,rank,label,score,prob,error\n"));
    assert!(written("a.TSV", &[]).starts_with("path\trank\tlabel\t"));
    let json: serde_json::Value = serde_json::from_str(&written("a.json", &[])).unwrap();
    assert_eq!(json[0]["predictions"].as_array().unwrap().len(), 2);
    for name in ["a.jsonl", "a.out"] {
        let text = written(name, &[]);
        assert_eq!(text.lines().count(), 1, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }
    assert!(written("b.csv", &["--format", "tsv"]).starts_with("path\trank"));
    // embed too (its default elsewhere is JSON Lines).
    let file = dir.path().join("e.csv");
    let o = run(&[
        "--model",
        path(&model),
        "embed",
        "-o",
        path(&file),
        path(&img),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(file).unwrap();
    let row: Vec<&str> = text.trim_end().split(',').collect();
    assert_eq!(row[0], path(&img), "{text}");
    assert!(row.len() > 8 && row[1..].iter().all(|v| v.parse::<f32>().is_ok()));
}

#[test]
fn label_file_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("tiny-openai");
    let img = fixtures().join("images/baseline.jpg");
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "dup.txt",
            b"# x\nkimchi\nramen\nkimchi | stew\n",
            "dup.txt:4: duplicate class \"kimchi\" (first on line 2)",
        ),
        (
            "utf8.txt",
            b"ok\n\xc3\x28 bad\n",
            "utf8.txt:2: not valid UTF-8",
        ),
        ("empty.txt", b"", "empty.txt: no classes"),
    ];
    for (name, body, needle) in cases {
        let f = dir.path().join(name);
        std::fs::write(&f, body).unwrap();
        let o = run(&[
            "--model",
            path(&model),
            "classify",
            "--labels",
            path(&f),
            path(&img),
        ]);
        assert_config_error(&o, needle);
    }
    let o = run(&[
        "--model",
        path(&model),
        "classify",
        "--labels",
        "/no/such/labels.txt",
        path(&img),
    ]);
    assert_config_error(&o, "/no/such/labels.txt");
    let o = run(&[
        "--model",
        path(&model),
        "classify",
        "--labels",
        path(&fixtures().join("labels/mixed.txt")),
        "-t",
        "no slot",
        path(&img),
    ]);
    assert_config_error(&o, "neither a template with {} for the class name");
}

#[test]
fn broken_checkpoints_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let labels = fixtures().join("labels/mixed.txt");
    let img = fixtures().join("images/baseline.jpg");
    let try_model = |m: &Path| {
        run(&[
            "--model",
            path(m),
            "classify",
            "--labels",
            path(&labels),
            path(img.as_path()),
        ])
    };

    assert_config_error(
        &try_model(Path::new("./no-such-dir")),
        "no such directory, registered name or hub id",
    );

    let no_tok = dir.path().join("no-tokenizer");
    copy_checkpoint("tiny-gelu", &no_tok);
    std::fs::remove_file(no_tok.join("tokenizer.json")).unwrap();
    assert_config_error(&try_model(&no_tok), "has no tokenizer.json");

    let no_weights = dir.path().join("no-weights");
    copy_checkpoint("tiny-gelu", &no_weights);
    std::fs::remove_file(no_weights.join("model.safetensors")).unwrap();
    assert_config_error(
        &try_model(&no_weights),
        "has no model.safetensors or pytorch_model.bin",
    );

    let cut = dir.path().join("truncated");
    copy_checkpoint("tiny-gelu", &cut);
    let bytes = std::fs::read(cut.join("model.safetensors")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert_config_error(&try_model(&cut), "not a valid safetensors file");

    let cut_bin = dir.path().join("truncated-bin");
    copy_checkpoint("tiny-openai", &cut_bin);
    let bytes = std::fs::read(cut_bin.join("pytorch_model.bin")).unwrap();
    std::fs::write(cut_bin.join("pytorch_model.bin"), &bytes[..bytes.len() / 3]).unwrap();
    assert_config_error(&try_model(&cut_bin), "pytorch_model.bin");

    // A weight file lacking one tensor: an error, never a random stand-in.
    let missing = dir.path().join("missing-tensor");
    copy_checkpoint("tiny-gelu", &missing);
    let mut tensors = candle_core::safetensors::load(
        missing.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    tensors
        .remove("vision_model.embeddings.class_embedding")
        .unwrap();
    candle_core::safetensors::save(&tensors, missing.join("model.safetensors")).unwrap();
    assert_config_error(&try_model(&missing), "class_embedding");

    let bad_cfg = dir.path().join("bad-config");
    copy_checkpoint("tiny-gelu", &bad_cfg);
    let cfg = std::fs::read_to_string(bad_cfg.join("config.json"))
        .unwrap()
        .replace("\"gelu\"", "\"swish\"");
    std::fs::write(bad_cfg.join("config.json"), cfg).unwrap();
    assert_config_error(&try_model(&bad_cfg), "swish");

    let mismatch = dir.path().join("crop-mismatch");
    copy_checkpoint("tiny-gelu", &mismatch);
    let pp = std::fs::read_to_string(mismatch.join("preprocessor_config.json"))
        .unwrap()
        .replace("96", "128");
    std::fs::write(mismatch.join("preprocessor_config.json"), pp).unwrap();
    assert_config_error(&try_model(&mismatch), "model takes 96x96");
}

#[test]
fn embed_prints_normalised_reference_embeddings() {
    let fx = fixtures();
    let reference = reference("tiny-openai");
    let img = fx.join("images").join(&reference.images[0].file);
    let o = run(&[
        "--model",
        path(&fx.join("tiny-openai")),
        "--exact-preprocess",
        "embed",
        path(&img),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e: Vec<f32> = v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert!(cosine(&e, &reference.images[0].embedding) >= 0.99999);
}

#[test]
fn preview_writes_what_the_model_sees() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen.png");
    let o = run(&[
        "preview",
        path(&fx.join("images/exif-orient6.jpg")),
        "-o",
        path(&out),
        "--exact-preprocess",
        "--model",
        path(&fx.join("tiny-gelu")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = image::open(&out).unwrap().to_rgb8();
    let theirs = image::open(fx.join("reference/tiny-gelu/exif-orient6.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(ours.dimensions(), (96, 96));
    let diff: u64 = ours
        .as_raw()
        .iter()
        .zip(theirs.as_raw())
        .map(|(a, b)| a.abs_diff(*b) as u64)
        .sum();
    assert!(diff as f64 / ours.as_raw().len() as f64 <= 0.02);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left behind"
    );

    let o = run(&[
        "preview",
        path(&fx.join("bad/bomb.png")),
        "-o",
        path(&out),
        "--model",
        path(&fx.join("tiny-gelu")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("decompression bomb"), "{}", stderr(&o));
}

#[test]
fn models_list_shows_the_registry() {
    let o = run(&["models", "list"]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    for id in [
        "openai/clip-vit-base-patch32",
        "openai/clip-vit-base-patch16",
        "openai/clip-vit-large-patch14",
        "Bingsu/clip-vit-base-patch32-ko",
        "Bingsu/clip-vit-large-patch14-ko",
        "google/siglip-base-patch16-256-multilingual",
        "google/siglip2-base-patch16-224",
    ] {
        assert!(text.contains(id), "{id} missing from\n{text}");
    }
    assert!(text.contains("(default)"));
    // Columns line up, whatever the longest name (the default's is marked).
    let header = text.lines().next().unwrap();
    for column in ["HUB ID", "LICENSE"] {
        let at = header.find(column).unwrap();
        for line in text.lines().skip(1) {
            assert!(
                line[..at].ends_with("  ") && !line[at..].starts_with(' '),
                "{text}"
            );
        }
    }
    let o = run(&["models", "list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["default"] == true)
            .count(),
        1
    );
}

#[test]
fn hub_ids_resolve_from_the_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = home.path().join("hub/models--someone--tiny-clip");
    copy_checkpoint("tiny-openai", &repo.join("snapshots").join(commit));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let img = fixtures().join("images/baseline.jpg");
    let embed = |model: &str| {
        foodclip()
            .env("HF_HOME", home.path())
            .args(["--model", model, "embed", path(&img)])
            .output()
            .unwrap()
    };
    for model in ["someone/tiny-clip", &format!("someone/tiny-clip@{commit}")] {
        let o = embed(model);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
    }
    assert_config_error(&embed("someone/tiny-clip@v2"), "not in the cache");
    assert_config_error(&embed("someone/other"), "not in the cache");
}

#[test]
fn stdin_lists_with_newlines_and_nuls() {
    let fx = fixtures();
    let a = fx.join("images/baseline.jpg");
    let b = fx.join("images/palette.png");
    for (sep, flag) in [("\n", None), ("\0", Some("--null"))] {
        let mut cmd = foodclip();
        cmd.args(["--model", path(&fx.join("tiny-openai")), "embed", "-"]);
        if let Some(f) = flag {
            cmd.arg(f);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        write!(
            child.stdin.take().unwrap(),
            "{}{sep}{}{sep}",
            path(&a),
            path(&b)
        )
        .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success());
        let paths: Vec<String> = jsonl_paths(&o.stdout);
        assert_eq!(paths, [path(&a), path(&b)]);
    }
}

#[test]
fn closed_pipe_ends_quietly() {
    let fx = fixtures();
    let img = fx.join("images/palette.png");
    let mut cmd = foodclip();
    cmd.args([
        "--model",
        path(&fx.join("tiny-openai")),
        "embed",
        "--batch-size",
        "1",
    ]);
    for _ in 0..300 {
        cmd.arg(&img);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the pipe closes while foodclip is still writing.
    let o = child.wait_with_output().unwrap();
    assert!(first.contains("embedding"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    let o = run(&["classify"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--labels"), "{}", stderr(&o));
    let labels = fixtures().join("labels/mixed.txt");
    let o = run(&[
        "--model",
        path(&fixtures().join("tiny-openai")),
        "classify",
        "--labels",
        path(&labels),
    ]);
    assert_config_error(&o, "no photos given");
    let o = run(&["embed", "--format", "xml", "a.jpg"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("xml"), "{}", stderr(&o));
}

/// A file written at the end of a long run (embeddings kept, an adapter, a leftovers summary) is
/// checked before the run: a folder that is not there is a configuration error at once, before
/// any photo is read, not after all of them.
#[test]
fn end_of_run_files_are_checked_before_the_run() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder/out.json");
    let no_folder = format!(
        "there is no folder {}",
        dir.path().join("no-such-folder").display()
    );
    let (model, labels, images) = (
        fx.join("tiny-openai"),
        fx.join("labels/mixed.txt"),
        fx.join("images"),
    );
    let (photos, m, l) = (path(&images), path(&missing), path(&labels));
    let classify = ["classify", "--labels", l, photos, "--save-embeddings"];
    let runs: [(Vec<&str>, &str); 4] = [
        ([&classify[..], &[m]].concat(), &no_folder),
        (
            [&classify[..], &[path(dir.path())]].concat(),
            "is a folder: name a file",
        ),
        (vec!["adapt", photos, "--labels", l, "-o", m], &no_folder),
        (
            vec![
                "leftovers",
                "--served",
                photos,
                "--returned",
                photos,
                "--labels",
                l,
                "--summary",
                m,
            ],
            &no_folder,
        ),
    ];
    for (args, needle) in runs {
        let o = run(&[&["--model", path(&model)], &args[..]].concat());
        assert_config_error(&o, needle);
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

/// Inputs that hold no photo at all are not a silent success: a warning says what folders are
/// searched for (not with --quiet).
#[test]
fn a_folder_without_photos_gets_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("menu.txt"), "김치찌개").unwrap();
    let model = fixtures().join("tiny-openai");
    let embed = ["--model", path(&model), "embed", path(dir.path())];
    let o = run(&embed);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning: no photos found (1 other file left out)"),
        "{err}"
    );
    assert!(err.contains(".jpg .jpeg") && err.contains(".png"), "{err}");
    let o = run(&[&embed[..], &["--quiet"]].concat());
    assert_eq!(stderr(&o), "");
}

/// One class under a softmax (CLIP) gives every photo 100%: a warning says so. SigLIP scores
/// each class alone, so one class is a fair question there and gets no warning.
#[test]
fn one_class_under_a_softmax_gets_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("one.txt");
    std::fs::write(&labels, "김치찌개\n").unwrap();
    let photo = fixtures().join("images/baseline.jpg");
    for (model, warned) in [("tiny-openai", true), ("tiny-siglip", false)] {
        let m = fixtures().join(model);
        let args = ["--model", path(&m), "classify", "--labels", path(&labels)];
        let o = run(&[&args[..], &["-f", "jsonl", path(&photo)]].concat());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(0), "{err}");
        assert_eq!(
            err.contains("has one class (김치찌개)"),
            warned,
            "{model}: {err}"
        );
    }
}

/// A subcommand's help lists its own flags first and the flags every subcommand shares (model,
/// precision, threads, cache) apart, under their own heading.
#[test]
fn help_keeps_global_options_apart() {
    for command in ["classify", "leftovers", "serve"] {
        let o = run(&[command, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        let help = String::from_utf8(o.stdout).unwrap();
        let heading = help
            .find("\nGlobal options:\n")
            .unwrap_or_else(|| panic!("no global heading: {help}"));
        let (own, global) = help.split_at(heading);
        for flag in ["--model <MODEL>", "--precision", "--threads", "--no-cache"] {
            assert!(
                global.contains(flag) && !own.contains(flag),
                "{flag}: {help}"
            );
        }
        assert!(own.contains("--batch-size"), "{help}");
    }
}

/// Every size, count and id in the two config files is checked when the checkpoint is loaded:
/// exit 2, one line naming the file and the field, never a result.
#[test]
fn absurd_config_values_are_refused_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let labels = fixtures().join("labels/mixed.txt");
    let img = fixtures().join("images/baseline.jpg");
    let cases: &[(&str, &str, serde_json::Value, &str)] = &[
        (
            "preprocessor_config.json",
            "size",
            serde_json::json!({"shortest_edge": 0}),
            "shortest_edge is 0",
        ),
        (
            "preprocessor_config.json",
            "size",
            serde_json::json!({"shortest_edge": 4000000000u64}),
            "shortest_edge is 4000000000",
        ),
        (
            "preprocessor_config.json",
            "crop_size",
            serde_json::json!({"height": 0, "width": 224}),
            "height is 0",
        ),
        (
            "preprocessor_config.json",
            "size",
            serde_json::json!(-3),
            "the size is -3",
        ),
        (
            "preprocessor_config.json",
            "rescale_factor",
            serde_json::json!(0),
            "rescale_factor is 0",
        ),
        (
            "preprocessor_config.json",
            "image_std",
            serde_json::json!([0.2, -0.1, 0.3]),
            "image_std",
        ),
        (
            "config.json",
            "vision_config.patch_size",
            serde_json::json!(0),
            "vision_config.patch_size is 0",
        ),
        (
            "config.json",
            "vision_config.image_size",
            serde_json::json!(0),
            "vision_config.image_size is 0",
        ),
        (
            "config.json",
            "vision_config.num_attention_heads",
            serde_json::json!(0),
            "vision_config.num_attention_heads is 0",
        ),
        (
            "config.json",
            "text_config.hidden_size",
            serde_json::json!(0),
            "text_config.hidden_size is 0",
        ),
        (
            "config.json",
            "text_config.num_hidden_layers",
            serde_json::json!(100000),
            "text_config.num_hidden_layers is 100000",
        ),
        (
            "config.json",
            "text_config.max_position_embeddings",
            serde_json::json!(0),
            "text_config.max_position_embeddings is 0",
        ),
        (
            "config.json",
            "text_config.eos_token_id",
            serde_json::json!(99999999),
            "text_config.eos_token_id",
        ),
        (
            "config.json",
            "text_config.vocab_size",
            serde_json::json!(-1),
            "text_config.vocab_size",
        ),
        (
            "config.json",
            "projection_dim",
            serde_json::json!(0),
            "projection_dim is 0",
        ),
        (
            "config.json",
            "vision_config.layer_norm_eps",
            serde_json::json!(0.0),
            "vision_config.layer_norm_eps",
        ),
        (
            "config.json",
            "vision_config.image_size",
            serde_json::json!(1e30),
            "vision_config.image_size",
        ),
    ];
    for (i, (file, field, value, needle)) in cases.iter().enumerate() {
        let model = dir.path().join(format!("case-{i}"));
        copy_checkpoint("tiny-openai", &model);
        let config = model.join(file);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        let mut slot = &mut json;
        for key in field.split('.') {
            slot = &mut slot[key];
        }
        *slot = value.clone();
        std::fs::write(&config, serde_json::to_string(&json).unwrap()).unwrap();
        let o = run(&[
            "--model",
            path(&model),
            "classify",
            "--labels",
            path(&labels),
            path(&img),
        ]);
        assert_config_error(&o, needle);
        assert_config_error(&o, file);
        assert!(o.stdout.is_empty(), "{field}: no result");
    }
}

#[test]
fn a_tensor_of_the_wrong_shape_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("wrong-shape");
    copy_checkpoint("tiny-gelu", &model);
    let weights = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let name = "vision_model.encoder.layers.1.mlp.fc2.weight";
    let t = tensors.remove(name).unwrap();
    let (out, inp) = t.dims2().unwrap();
    tensors.insert(name.to_string(), t.narrow(1, 0, inp - 1).unwrap());
    assert_eq!(tensors[name].dims(), [out, inp - 1]);
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let o = run(&[
        "--model",
        path(&model),
        "embed",
        path(&fixtures().join("images/baseline.jpg")),
    ]);
    assert_config_error(
        &o,
        "shape mismatch for vision_model.encoder.layers.1.mlp.fc2.weight",
    );
}

/// A failure after the run has started (here the output device is full) ends the run with
/// exit 2 and says what failed; it is not a per-photo error.
#[cfg(target_os = "linux")]
#[test]
fn a_failure_after_the_run_started_says_what_failed_and_exits_2() {
    let o = run(&[
        "--model",
        path(&fixtures().join("tiny-openai")),
        "embed",
        "--output",
        "/dev/full",
        path(&fixtures().join("images/baseline.jpg")),
    ]);
    assert_config_error(&o, "cannot write output");
}
