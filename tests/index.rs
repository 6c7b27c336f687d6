//! `foodclip index` and `search`: an archive's SQLite index grows incrementally (unchanged files
//! skipped, moved ones reused by content, deleted ones removed, counted by model calls),
//! survives a kill, refuses foreign files untouched, and answers searches in the order a
//! brute-force cosine ranking gives; `classify --db` equals `classify`; `--export` reads back.

mod common;

use common::photos::{synthetic, write_jpeg};
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

fn run(dir: &Path, args: &[&str]) -> Output {
    run_in(dir, args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An archive of `n` photos in two folders, `a/` and `b/`.
fn archive(n: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        let folder = dir
            .path()
            .join("arch")
            .join(if i % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&folder).unwrap();
        write_jpeg(
            &synthetic(120, 90, i + 1),
            &folder.join(format!("{i:03}.jpg")),
        );
    }
    dir
}

/// The counts of an index run's closing note.
fn counts(o: &Output) -> HashMap<String, usize> {
    let err = stderr(o);
    let line = err
        .lines()
        .find(|l| l.contains("unchanged"))
        .unwrap_or_else(|| panic!("{err}"));
    let after = line.split([':']).nth(3).unwrap().trim_start();
    after
        .split(", ")
        .map(|part| {
            let (n, what) = part.split_once(' ').unwrap();
            (
                what.split_whitespace().next().unwrap().to_string(),
                n.parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_index_grows_incrementally() {
    let dir = archive(6);
    let d = dir.path();
    let c = counts(&run(d, &["index", "arch"]));
    assert_eq!((c["embedded"], c["unchanged"]), (6, 0));
    assert!(d.join("arch/.foodclip/index.sqlite").is_file());
    let c = counts(&run(d, &["index", "arch"]));
    assert_eq!(
        (c["embedded"], c["unchanged"]),
        (0, 6),
        "unchanged files are skipped"
    );
    // Modified: re-embedded. Renamed: reused by content. Deleted: removed.
    write_jpeg(&synthetic(120, 90, 99), &d.join("arch/a/000.jpg"));
    std::fs::rename(d.join("arch/b/001.jpg"), d.join("arch/a/renamed.jpg")).unwrap();
    std::fs::remove_file(d.join("arch/b/003.jpg")).unwrap();
    std::fs::write(d.join("arch/b/broken.jpg"), b"").unwrap();
    let o = run(d, &["index", "arch"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let c = counts(&o);
    assert_eq!(c["embedded"], 1, "the broken photo is not: {c:?}");
    assert_eq!(c["reused"], 1, "{c:?}");
    assert_eq!(
        c["removed"], 2,
        "the deleted file and the renamed one's old path: {c:?}"
    );
    assert_eq!(c["unchanged"], 3, "{c:?}");
    // A folder given as --db stands for its own index.
    let all = run(
        d,
        &[
            "search", "--db", "arch", "bibimbap", "--top", "100", "--paths",
        ],
    );
    let listed = String::from_utf8(ok(&all).to_vec()).unwrap();
    assert_eq!(listed.lines().count(), 5);
    assert!(listed.contains("renamed.jpg") && !listed.contains("003.jpg"));
}

/// `(path, score)` of JSON-lines search results.
fn hits(o: &Output) -> Vec<(String, f64)> {
    jsonl_records(ok(o))
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn search_ranks_as_brute_force_cosine_with_weights_and_filters() {
    let dir = archive(8);
    let d = dir.path();
    ok(&run(d, &["index", "arch"]));
    let db = "arch/.foodclip/index.sqlite";
    // --like: the query is that photo's embedding; brute force with `foodclip embed`.
    let embedded = jsonl_records(ok(&run(d, &["embed", "arch", "--format", "jsonl"])));
    let vectors: Vec<(PathBuf, Vec<f32>)> = embedded
        .iter()
        .map(|r| {
            let p = std::fs::canonicalize(d.join(r["path"].as_str().unwrap())).unwrap();
            (p, serde_json::from_value(r["embedding"].clone()).unwrap())
        })
        .collect();
    let like = d.join("arch/b/005.jpg");
    let q = &vectors
        .iter()
        .find(|(p, _)| p.ends_with("b/005.jpg"))
        .unwrap()
        .1;
    let mut want: Vec<(PathBuf, f64)> = vectors
        .iter()
        .map(|(p, v)| (p.clone(), cosine(v, q)))
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    let got = hits(&run(
        d,
        &[
            "search",
            "--db",
            db,
            "--like",
            like.to_str().unwrap(),
            "--top",
            "8",
            "-f",
            "jsonl",
        ],
    ));
    assert_eq!(got.len(), 8);
    for ((gp, gs), (wp, ws)) in got.iter().zip(&want) {
        assert_eq!(Path::new(gp), wp);
        assert!((gs - ws).abs() < 1e-4, "{gs} vs {ws}");
    }
    // Weights: `x -y` ranks by score(x) - score(y); `3:x` as `x`.
    let scores = |term: &str| -> HashMap<String, f64> {
        hits(&run(
            d,
            &["search", "--db", db, term, "--top", "100", "-f", "jsonl"],
        ))
        .into_iter()
        .collect()
    };
    let (x, y) = (scores("bibimbap"), scores("떡볶이"));
    let mut diff: Vec<(&String, f64)> = x.iter().map(|(p, s)| (p, s - y[p])).collect();
    diff.sort_by(|a, b| b.1.total_cmp(&a.1));
    let both = hits(&run(
        d,
        &[
            "search",
            "--db",
            db,
            "bibimbap",
            "-떡볶이",
            "--top",
            "100",
            "-f",
            "jsonl",
        ],
    ));
    let order: Vec<&String> = both.iter().map(|(p, _)| p).collect();
    assert_eq!(order, diff.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    let tripled = hits(&run(
        d,
        &[
            "search",
            "--db",
            db,
            "3:bibimbap",
            "--top",
            "100",
            "-f",
            "jsonl",
        ],
    ));
    for (p, s) in &tripled {
        assert!((s - x[p]).abs() < 1e-5, "a weight alone changes no score");
    }
    // Filters: --under a folder, --since/--until by mtime.
    let under = hits(&run(
        d,
        &[
            "search", "--db", db, "bibimbap", "--under", "arch/b", "-f", "jsonl",
        ],
    ));
    assert_eq!(under.len(), 4);
    assert!(under.iter().all(|(p, _)| p.contains("/arch/b/")));
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800); // 2020-01-01
    for i in [0, 2] {
        let f = std::fs::File::options()
            .write(true)
            .open(d.join(format!("arch/a/{i:03}.jpg")))
            .unwrap();
        f.set_modified(old).unwrap();
    }
    ok(&run(d, &["index", "arch"]));
    let in_2020 = hits(&run(
        d,
        &[
            "search",
            "--db",
            db,
            "bibimbap",
            "--since",
            "2019-12-31",
            "--until",
            "2020-01-01",
            "-f",
            "jsonl",
        ],
    ));
    assert_eq!(in_2020.len(), 2, "{in_2020:?}");
    let later = hits(&run(
        d,
        &[
            "search",
            "--db",
            db,
            "bibimbap",
            "--since",
            "2020-01-02",
            "--top",
            "100",
            "-f",
            "jsonl",
        ],
    ));
    assert_eq!(later.len(), 6);
    // A filter that leaves nothing: no hits, exit 0, and a note that says why.
    let none = run(
        d,
        &["search", "--db", db, "bibimbap", "--until", "2019-01-01"],
    );
    assert!(ok(&none).is_empty());
    assert!(stderr(&none).contains("no photo of"), "{}", stderr(&none));
}

#[test]
fn classify_db_equals_classify_and_export_reads_back() {
    let dir = archive(4);
    let d = dir.path();
    ok(&run(d, &["index", "arch"]));
    let labels = fixtures().join("labels/mixed.txt");
    let l = labels.to_str().unwrap();
    let from_db = jsonl_records(ok(&run(
        d,
        &[
            "classify",
            "--db",
            "arch/.foodclip/index.sqlite",
            "--labels",
            l,
            "-k",
            "0",
            "-f",
            "jsonl",
        ],
    )));
    let photos = jsonl_records(ok(&run(
        d,
        &["classify", "arch", "--labels", l, "-k", "0", "-f", "jsonl"],
    )));
    assert_eq!(from_db.len(), 4);
    let by_path: HashMap<PathBuf, &Value> = photos
        .iter()
        .map(|r| {
            (
                std::fs::canonicalize(d.join(r["path"].as_str().unwrap())).unwrap(),
                r,
            )
        })
        .collect();
    for r in &from_db {
        let p = &by_path[Path::new(r["path"].as_str().unwrap())];
        for (a, b) in r["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(p["predictions"].as_array().unwrap())
        {
            assert_eq!(a["label"], b["label"]);
            assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-6);
        }
    }
    // eval --db: the folders `a` and `b` as classes; the same figures as from the photos.
    std::fs::write(d.join("ab.txt"), "a\nb\n").unwrap();
    let eval = |extra: &[&str]| -> Value {
        let args = [
            &["eval", "arch", "--labels", "ab.txt", "-f", "json"][..],
            extra,
        ]
        .concat();
        serde_json::from_slice(ok(&run(d, &args))).unwrap()
    };
    let (from_photos, from_index) = (eval(&[]), eval(&["--db", "arch/.foodclip/index.sqlite"]));
    assert_eq!(from_index["n"], 4);
    assert_eq!(from_index["top1"], from_photos["top1"]);
    assert_eq!(
        from_index["confusion_matrix"],
        from_photos["confusion_matrix"]
    );
    // Regions: indexed beside the whole photos, searched and scored by the same flags.
    ok(&run(d, &["index", "arch", "--grid", "1x2"]));
    let grid = ["--db", "arch/.foodclip/index.sqlite", "--grid", "1x2"];
    let regions = jsonl_records(ok(&run(
        d,
        &[
            &["search", "rice", "--top", "100", "-f", "jsonl"][..],
            &grid,
        ]
        .concat(),
    )));
    assert_eq!(regions.len(), 8);
    assert!(regions.iter().all(|r| r["region"]["name"].is_string()));
    let scored = jsonl_records(ok(&run(
        d,
        &[&["classify", "--labels", l, "-f", "jsonl"][..], &grid].concat(),
    )));
    assert_eq!(scored.len(), 8);
    assert_eq!(scored[1]["region"]["name"], "r1c2");
    // The store is streamed batch by batch: batches that end inside a photo's regions,
    // --shard and --resume give the same records.
    let classify = |extra: &[&str]| {
        let args = [
            &["classify", "--labels", l, "-f", "jsonl"][..],
            &grid,
            extra,
        ]
        .concat();
        jsonl_records(ok(&run(d, &args)))
    };
    assert_eq!(classify(&["--batch-size", "3"]), scored);
    let key = |r: &Value| format!("{}#{}", r["path"], r["region"]["name"]);
    let mut all = scored.clone();
    all.sort_by_key(key);
    // Shards by path hash (temporary paths differ per run; similar names hash alike in the
    // low bits): each count's shards together are every record, and the first shard that holds
    // some but not all of them is the one resumed from.
    let mut partial = None;
    for count in 2..8 {
        let mut shards = Vec::new();
        for k in 0..count {
            let part = classify(&["--shard", &format!("{k}/{count}")]);
            if partial.is_none() && !part.is_empty() && part.len() < all.len() {
                partial = Some(format!("{k}/{count}"));
            }
            shards.extend(part);
        }
        shards.sort_by_key(key);
        assert_eq!(shards, all);
        if partial.is_some() {
            break;
        }
    }
    let shard = partial.expect("a shard with some of the photos");
    assert!(classify(&["--shard", &shard, "-o", "part.jsonl"]).is_empty());
    let first = jsonl_records(&std::fs::read(d.join("part.jsonl")).unwrap());
    let photos: std::collections::HashSet<_> = first.iter().map(|r| r["path"].clone()).collect();
    let o = run(
        d,
        &[
            &[
                "classify",
                "--labels",
                l,
                "-f",
                "jsonl",
                "--resume",
                "-o",
                "part.jsonl",
            ][..],
            &grid,
        ]
        .concat(),
    );
    ok(&o);
    let resumed = std::fs::read(d.join("part.jsonl")).unwrap();
    let mut resumed = jsonl_records(&resumed);
    resumed.sort_by_key(key);
    assert_eq!(resumed, all);
    let skipped = format!("{} skipped", photos.len());
    assert!(stderr(&o).contains(&skipped), "{}", stderr(&o));
    // Export: img_emb/img_emb_0.npy (f32, rows x dim) and paths.txt in the same order.
    ok(&run(
        d,
        &[
            "index",
            "--db",
            "arch/.foodclip/index.sqlite",
            "--export",
            "out",
        ],
    ));
    let npy = std::fs::read(d.join("out/img_emb/img_emb_0.npy")).unwrap();
    let len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = std::str::from_utf8(&npy[10..10 + len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'shape': (4, 24)"),
        "{header}"
    );
    let values: Vec<f32> = npy[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let paths = std::fs::read_to_string(d.join("out/paths.txt")).unwrap();
    for (row, path) in values.chunks(24).zip(paths.lines()) {
        let want = &by_path[Path::new(path)];
        let embedded = jsonl_records(ok(&run(d, &["embed", path, "-f", "jsonl"])));
        let e: Vec<f32> = serde_json::from_value(embedded[0]["embedding"].clone()).unwrap();
        assert!(cosine(row, &e) > 0.99999, "{path}");
        assert!(want["predictions"].is_array());
    }
}

#[test]
fn foreign_newer_and_damaged_databases_are_refused_untouched() {
    let dir = archive(2);
    let d = dir.path();
    let check = |file: &str, what: &str| {
        let before = std::fs::read(d.join(file)).unwrap();
        let o = run(d, &["index", "arch", "--db", file]);
        assert_eq!(o.status.code(), Some(2), "{file}");
        let err = stderr(&o);
        assert!(
            err.contains(what) && err.lines().count() == 1,
            "{file}: {err}"
        );
        assert_eq!(
            std::fs::read(d.join(file)).unwrap(),
            before,
            "{file} changed"
        );
    };
    std::fs::write(d.join("notes.txt"), "my kitchen notes\n".repeat(100)).unwrap();
    check("notes.txt", "is not a foodclip index");
    ok(&run(d, &["index", "arch", "--db", "good.sqlite"]));
    // A newer layout: the same file with user_version raised (offset 60, big-endian).
    let mut newer = std::fs::read(d.join("good.sqlite")).unwrap();
    newer[60..64].copy_from_slice(&9u32.to_be_bytes());
    std::fs::write(d.join("newer.sqlite"), &newer).unwrap();
    check("newer.sqlite", "newer foodclip");
    let mut damaged = std::fs::read(d.join("good.sqlite")).unwrap();
    let half = damaged.len() / 2;
    damaged.truncate(half);
    damaged.extend(std::iter::repeat_n(0x5a, half));
    std::fs::write(d.join("damaged.sqlite"), &damaged).unwrap();
    check("damaged.sqlite", "foodclip index");
}

#[test]
fn a_run_killed_mid_way_resumes_without_losing_or_duplicating_rows() {
    let dir = archive(24);
    let d = dir.path();
    let mut child = foodclip()
        .current_dir(d)
        .arg("--model")
        .arg(fixtures().join("tiny-openai"))
        .args(["index", "arch", "--db", "i.sqlite", "--batch-size", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once some batches are committed (the WAL holds them), or when it is done.
    let wal = d.join("i.sqlite-wal");
    for _ in 0..400 {
        if wal.metadata().is_ok_and(|m| m.len() > 20_000) || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let c = counts(&run(d, &["index", "arch", "--db", "i.sqlite"]));
    assert_eq!(c["embedded"] + c["unchanged"], 24, "{c:?}");
    let all = run(
        d,
        &[
            "search", "--db", "i.sqlite", "rice", "--top", "1000", "-f", "jsonl",
        ],
    );
    let found = hits(&all);
    assert_eq!(found.len(), 24, "every photo once");
    let mut paths: Vec<&String> = found.iter().map(|(p, _)| p).collect();
    paths.dedup();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 24);
}

#[test]
fn two_runs_on_one_database_cooperate() {
    let dir = archive(12);
    let d = dir.path();
    let spawn = || {
        foodclip()
            .current_dir(d)
            .arg("--model")
            .arg(fixtures().join("tiny-openai"))
            .args(["index", "arch", "--db", "i.sqlite", "--batch-size", "1"])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    // Both finish (or one says the database is locked); neither corrupts it.
    for o in [&a, &b] {
        let err = stderr(o);
        assert!(o.status.success() || err.contains("locked"), "{err}");
    }
    let c = counts(&run(d, &["index", "arch", "--db", "i.sqlite"]));
    assert_eq!((c["unchanged"], c["embedded"]), (12, 0), "{c:?}");
    let found = hits(&run(
        d,
        &[
            "search", "--db", "i.sqlite", "rice", "--top", "100", "-f", "jsonl",
        ],
    ));
    assert_eq!(found.len(), 12, "every photo once");
}
