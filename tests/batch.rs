//! Batch runs of the binary: shards, resume after a killed run, Ctrl-C, and the fast
//! preprocessing path's drift from the exact one.

mod common;

use common::photos::{synthetic, write_jpeg};
use common::*;
use foodclip::classify::embed_pictures;
use foodclip::preprocess::{Fidelity, DEFAULT_MAX_PIXELS};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `foodclip --model tiny-openai`.
fn tiny() -> Command {
    let mut cmd = foodclip();
    cmd.arg("--model").arg(fixtures().join("tiny-openai"));
    cmd
}

/// `n` small photos in `dir`, named in order.
fn photo_folder(dir: &Path, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("tray-{i:04}.jpg"));
            write_jpeg(&synthetic(64, 48, i), &p);
            p
        })
        .collect()
}

fn records(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn paths_of(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn shards_split_a_folder_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let all: HashSet<String> = photo_folder(dir.path(), 30)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut seen = Vec::new();
    for k in 0..3 {
        let o = tiny()
            .args(["embed", "--quiet", "--shard", &format!("{k}/3")])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success());
        let shard: Vec<String> = jsonl_paths(&o.stdout);
        assert!(
            !shard.is_empty() && shard.len() < 30,
            "shard {k}: {}",
            shard.len()
        );
        seen.extend(shard);
    }
    assert_eq!(seen.len(), 30, "no path in two shards");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), all);
    let o = tiny()
        .args(["embed", "--shard", "3/3"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn resume_after_a_killed_run_completes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photo_folder(&dir.path().join("trays").tap_mkdir(), 120);
    let out = dir.path().join("out.jsonl");
    let labels = fixtures().join("labels/mixed.txt");
    let classify = || {
        let mut cmd = tiny();
        cmd.args(["classify", "--quiet", "--batch-size", "1", "--labels"])
            .arg(&labels);
        cmd.arg("--output").arg(&out).arg(dir.path().join("trays"));
        cmd
    };
    let mut child = classify().stdout(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) < 5
        && start.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    // Whatever the kill left, make sure the file ends in a half-written record.
    let text = std::fs::read_to_string(&out).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .take(text.lines().count().min(40) - 1)
        .collect();
    std::fs::write(
        &out,
        format!(
            "{}\n{{\"path\": \"{}\", \"predic",
            kept.join("\n"),
            photos[99].display()
        ),
    )
    .unwrap();

    let o = classify().arg("--resume").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = records(&out);
    let paths = paths_of(&recs);
    assert_eq!(paths.len(), 120, "one record per photo");
    assert_eq!(
        paths.iter().collect::<HashSet<_>>().len(),
        120,
        "no duplicates"
    );
    assert!(recs
        .iter()
        .all(|r| r["predictions"].as_array().is_some_and(|p| p.len() == 5)));
    // The first records are the ones written before the kill, in input order.
    let expected: Vec<String> = photos
        .iter()
        .take(kept.len())
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(&paths[..kept.len()], &expected[..]);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn ctrl_c_finishes_the_record_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    // Enough photos that the run is still going when the signal arrives.
    let photos = dir.path().join("trays").tap_mkdir();
    write_jpeg(&synthetic(320, 240, 7), &photos.join("0000.jpg"));
    for i in 1..2000 {
        std::fs::copy(photos.join("0000.jpg"), photos.join(format!("{i:04}.jpg"))).unwrap();
    }
    let out = dir.path().join("embeddings.jsonl");
    let child = tiny()
        .args(["embed", "--batch-size", "1", "--output"])
        .arg(&out)
        .arg(&photos)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) < 3
        && start.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.ends_with('\n'), "the last record is whole");
    let n = records(&out).len();
    assert!(
        o.status.code() == Some(130) && n < 400,
        "exit {:?} after {n} records",
        o.status.code()
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("interrupted") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn fast_preprocessing_drifts_within_the_documented_bound() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint("tiny-openai");
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // Large JPEGs, so that DCT scaling (1/2, 1/4, 1/8) takes part.
    for (i, (w, h)) in [(2400u32, 1800u32), (1000, 1500), (4000, 3000)]
        .into_iter()
        .enumerate()
    {
        let p = dir.path().join(format!("large-{i}.jpg"));
        write_jpeg(&synthetic(w, h, i as u32), &p);
        files.push(p);
    }
    let mut worst = 0f64;
    for f in &files {
        let exact = ckpt
            .preprocess
            .load(f, DEFAULT_MAX_PIXELS, Fidelity::Exact)
            .unwrap();
        let fast = ckpt
            .preprocess
            .load(f, DEFAULT_MAX_PIXELS, Fidelity::Fast)
            .unwrap();
        assert_eq!(exact.dimensions(), fast.dimensions());
        let diff: f64 = exact
            .as_raw()
            .iter()
            .zip(fast.as_raw())
            .map(|(a, b)| a.abs_diff(*b) as f64)
            .sum::<f64>()
            / exact.as_raw().len() as f64;
        // README: the fast path stays within 1.5/255 mean absolute difference of the exact one.
        assert!(diff <= 1.5, "{}: {diff:.2}/255", f.display());
        worst = worst.max(diff);
        let e = embed_pictures(&ckpt, &[exact, fast])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(cosine(&e[0], &e[1]) >= 0.999, "{}", f.display());
    }
    eprintln!("worst fast-path drift: {worst:.3}/255");
}

#[test]
fn resume_refuses_a_file_it_did_not_write_and_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photo_folder(dir.path(), 2);
    let labels = fixtures().join("labels/mixed.txt");
    let notes = dir.path().join("notes.txt");
    let classify = |format: &str| {
        let mut cmd = tiny();
        cmd.args(["classify", "--quiet", "--format", format, "--labels"])
            .arg(&labels)
            .arg("--output")
            .arg(&notes)
            .arg("--resume")
            .args(&photos);
        cmd.output().unwrap()
    };
    // Notes whose last line has no newline: nothing may be cut.
    let foreign: [&[u8]; 4] = [
        b"shopping list\nrice, kimchi",
        b"{\"path\": \"a.jpg\", \"note\": \"mine\"}\nlast line",
        b"path,rank,label,score,prob,error\nnot,a,row\npartial",
        b"only one unfinished line",
    ];
    for (body, format) in foreign.iter().zip(["jsonl", "jsonl", "csv", "csv"]) {
        std::fs::write(&notes, body).unwrap();
        let o = classify(format);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("not a file of this command's records"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&notes).unwrap(),
            *body,
            "the file is untouched"
        );
    }
    // Records of `embed` are not records of `classify`.
    let o = tiny()
        .args(["embed", "--quiet", "--output"])
        .arg(&notes)
        .args(&photos)
        .output()
        .unwrap();
    assert!(o.status.success());
    let embedded = std::fs::read(&notes).unwrap();
    assert_eq!(classify("jsonl").status.code(), Some(2));
    assert_eq!(std::fs::read(&notes).unwrap(), embedded);
}

/// A photo whose name is not UTF-8 (EUC-KR, as old Korean archives hold): read, written
/// losslessly, and recognised again by --resume and stored embeddings.
#[cfg(unix)]
#[test]
fn non_utf8_file_names_are_read_and_round_trip() {
    use base64::Engine;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let dir = tempfile::tempdir().unwrap();
    // "김치찌개.jpg" in EUC-KR.
    let name = std::ffi::OsString::from_vec(b"\xb1\xe8\xc4\xa1\xc2\xee\xb0\xb3.jpg".to_vec());
    let trays = dir.path().join("trays").tap_mkdir();
    let photo = trays.join(&name);
    write_jpeg(&synthetic(64, 48, 7), &photo);
    let labels = fixtures().join("labels/mixed.txt");
    let out = dir.path().join("out.jsonl");
    let store = dir.path().join("emb.safetensors");
    let classify = |extra: &[&str]| {
        let format = if extra.contains(&"--format") {
            &[][..]
        } else {
            &["--format", "jsonl"][..]
        };
        tiny()
            .args(["classify", "--labels"])
            .arg(&labels)
            .args(format)
            .args(extra)
            .arg(&trays)
            .output()
            .unwrap()
    };
    let o = classify(&[
        "--output",
        out.to_str().unwrap(),
        "--save-embeddings",
        store.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = records(&out);
    assert_eq!(recs.len(), 1);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(recs[0]["path"]["bytes"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, photo.as_os_str().as_bytes());
    assert_eq!(recs[0]["predictions"].as_array().unwrap().len(), 5);
    // --resume finds it recorded: nothing is added.
    let o = classify(&["--output", out.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 done, 0 failed, 1 skipped"));
    assert_eq!(records(&out).len(), 1);
    // Stored embeddings keep the name: re-scoring gives the same record.
    let o = tiny()
        .args(["classify", "--format", "jsonl", "--labels"])
        .arg(&labels)
        .arg("--embeddings")
        .arg(&store)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = jsonl_records(&o.stdout);
    assert_eq!(again[0]["path"], recs[0]["path"]);
    assert_eq!(again[0]["predictions"], recs[0]["predictions"]);
    // CSV holds the raw bytes, and --resume reads them back.
    let csv = dir.path().join("out.csv");
    for _ in 0..2 {
        let o = classify(&[
            "--format",
            "csv",
            "--output",
            csv.to_str().unwrap(),
            "--resume",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let text = std::fs::read(&csv).unwrap();
    let rows: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 6, "a header and five predictions, once");
    assert!(rows[1].starts_with(photo.as_os_str().as_bytes()));
}

#[test]
fn resume_onto_a_bare_csv_header_writes_no_second_header() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photo_folder(dir.path(), 2);
    let out = dir.path().join("out.csv");
    std::fs::write(&out, "path,rank,label,score,prob,error\n").unwrap();
    let o = tiny()
        .args([
            "classify", "--quiet", "--format", "csv", "-k", "1", "--labels",
        ])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg("--output")
        .arg(&out)
        .arg("--resume")
        .args(&photos)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.matches("path,rank").count(), 1, "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
}
