//! The shared store, `--db postgres://...`, against a real PostgreSQL with pgvector started
//! for each test (see `common::pgserver`): the same answers as the SQLite index, sites kept
//! apart, two writers at once with one killed mid-run losing and duplicating nothing, TLS as
//! libpq's `sslmode` asks, and clear one-line errors.

mod common;

use common::pgserver::PgServer;
use common::photos::{synthetic, write_jpeg};
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

fn run(dir: &Path, args: &[&str]) -> Output {
    run_in(dir, args)
}

/// `n` photos in `dir/name/a` and `dir/name/b`, made from seeds `seed..`.
fn photos(dir: &Path, name: &str, n: u32, seed: u32) {
    for i in 0..n {
        let folder = dir.join(name).join(if i % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&folder).unwrap();
        write_jpeg(
            &synthetic(120, 90, seed + i),
            &folder.join(format!("{i:03}.jpg")),
        );
    }
}

/// Search hits as (path, score, region).
fn hits(o: &Output) -> Vec<(String, f64, Value)> {
    jsonl_records(ok(o))
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["score"].as_f64().unwrap(),
                r["region"].clone(),
            )
        })
        .collect()
}

#[test]
fn postgres_answers_as_sqlite_does() {
    let Some(pg) = PgServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    photos(d, "arch", 12, 1);
    let sqlite = "index.sqlite";
    for db in [sqlite, pg.url.as_str()] {
        let o = run(d, &["index", "arch", "--db", db]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = run(d, &["index", "arch", "--db", db, "--grid", "1x2"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Again: nothing to do.
        let o = run(d, &["index", "arch", "--db", db]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("12 unchanged") && err.contains("0 embedded"),
            "{err}"
        );
    }
    assert_eq!(pg.count("SELECT count(*) FROM embeddings"), 12 * 3);
    assert_eq!(
        pg.count("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'embeddings_hnsw_%'"),
        2,
        "an HNSW index per kind"
    );
    let like = d.join("arch/b/005.jpg");
    let like = like.to_str().unwrap();
    let under = d.join("arch/a");
    let under = under.to_str().unwrap();
    let queries: Vec<Vec<&str>> = vec![
        vec!["--like", like, "--top", "12"],
        vec!["bibimbap", "-떡볶이", "--top", "5"],
        vec!["bibimbap", "--under", under],
        vec!["fried chicken", "--grid", "1x2", "--top", "24"],
        vec!["fried chicken", "--since", "2999-01-01"],
    ];
    for q in &queries {
        let search = |db: &str| {
            let mut args = vec!["search", "--db", db, "-f", "jsonl"];
            args.extend(q);
            hits(&run(d, &args))
        };
        let (want, got) = (search(sqlite), search(&pg.url));
        assert_eq!(got.len(), want.len(), "{q:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((&g.0, &g.2), (&w.0, &w.2), "{q:?}");
            assert!((g.1 - w.1).abs() < 1e-6, "{q:?}: {} vs {}", g.1, w.1);
        }
    }
    // classify --db streams the same records from both.
    let classify = |db: &str| {
        let o = run(
            d,
            &[
                "classify",
                "--db",
                db,
                "--labels",
                fixtures().join("labels/mixed.txt").to_str().unwrap(),
                "-f",
                "jsonl",
            ],
        );
        jsonl_records(ok(&o))
    };
    let (want, got) = (classify(sqlite), classify(&pg.url));
    assert_eq!(want.len(), 12);
    assert_eq!(got, want);
    // A site filter: this machine's site holds them all, another none.
    let o = run(
        d,
        &[
            "--site",
            "elsewhere",
            "search",
            "--db",
            &pg.url,
            "bibimbap",
            "-f",
            "jsonl",
        ],
    );
    assert!(hits(&o).is_empty());
}

#[test]
fn two_writers_one_killed_lose_and_duplicate_nothing() {
    let Some(pg) = PgServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    photos(d, "one", 40, 100);
    photos(d, "two", 40, 200);
    let writer = |site: &str, folder: &str| {
        foodclip()
            .current_dir(d)
            .arg("--model")
            .arg(fixtures().join("tiny-openai"))
            .args([
                "--site",
                site,
                "index",
                folder,
                "--batch-size",
                "2",
                "--db",
                &pg.url,
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Both start at once (both make the schema), then the first is killed mid-run.
    let (mut first, mut second) = (writer("school-1", "one"), writer("school-2", "two"));
    let start = Instant::now();
    // One connection, polled often: a loaded machine still catches the writer mid-run.
    let mut watch = loop {
        match postgres::Client::connect(&pg.url, postgres::NoTls) {
            Ok(c) => break c,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    loop {
        let done = watch
            .query_opt("SELECT count(*) FROM files WHERE site = 'school-1'", &[])
            .ok()
            .flatten()
            .map_or(0, |r| r.get::<_, i64>(0));
        if done >= 4 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the first writer wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(second.wait().unwrap().success());
    let killed_at = pg.count("SELECT count(*) FROM files WHERE site = 'school-1'");
    assert!(killed_at < 40, "killed after the end ({killed_at})");
    // Every committed photo is whole: its file row has its embedding.
    let orphans = "SELECT count(*) FROM files f WHERE NOT EXISTS \
                   (SELECT 1 FROM embeddings e WHERE e.hash = f.hash)";
    assert_eq!(pg.count(orphans), 0);
    // The next run goes on from there.
    let o = run(d, &["--site", "school-1", "index", "one", "--db", &pg.url]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("{} embedded", 40 - killed_at)),
        "{err}"
    );
    for site in ["school-1", "school-2"] {
        let n = pg.count(&format!("SELECT count(*) FROM files WHERE site = '{site}'"));
        assert_eq!(n, 40, "{site}");
    }
    assert_eq!(pg.count("SELECT count(*) FROM embeddings"), 80);
    assert_eq!(pg.count("SELECT count(DISTINCT hash) FROM files"), 80);
    assert_eq!(pg.count(orphans), 0);
}

#[test]
fn sites_keep_their_own_files_and_leftovers() {
    use foodclip::store::{FileState, LeftoverRow, Store};
    let Some(pg) = PgServer::start() else { return };
    let url = Path::new(&pg.url);
    let row = |tray: &str, leftover: f64| LeftoverRow {
        date: "2026-12-07".into(),
        tray: tray.into(),
        compartment: "rice".into(),
        dish: Some("쌀밥".into()),
        leftover: Some(leftover),
        ..LeftoverRow::default()
    };
    let state = FileState { size: 1, mtime: 2 };
    for (site, leftover) in [("east", 0.25), ("west", 0.5)] {
        let mut store = Store::open(url, true, Some(site)).unwrap();
        store
            .batch(|b| {
                b.file(Path::new("/trays/t1.jpg"), &state, site.as_bytes())?;
                b.leftover(&row("t1", leftover))?;
                b.leftover(&row("t2", leftover))
            })
            .unwrap();
        // Measured again: replaced, not added.
        store
            .batch(|b| b.leftover(&row("t1", leftover / 2.0)))
            .unwrap();
    }
    for (site, leftover) in [("east", 0.25), ("west", 0.5)] {
        let mut store = Store::open(url, false, Some(site)).unwrap();
        let mut seen = Vec::new();
        store
            .leftovers(|r| {
                seen.push((r.tray, r.leftover));
                Ok(())
            })
            .unwrap();
        assert_eq!(
            seen,
            [
                ("t1".into(), Some(leftover / 2.0)),
                ("t2".into(), Some(leftover))
            ]
        );
        let (_, hash) = store.file(Path::new("/trays/t1.jpg")).unwrap().unwrap();
        assert_eq!(hash, site.as_bytes());
        assert_eq!(store.paths_under(Path::new("/trays")).unwrap().len(), 1);
    }
    assert_eq!(pg.count("SELECT count(*) FROM leftovers"), 4);
    // Removing a file is this site's only.
    let mut east = Store::open(url, true, Some("east")).unwrap();
    east.batch(|b| b.remove(Path::new("/trays/t1.jpg")))
        .unwrap();
    assert_eq!(pg.count("SELECT count(*) FROM files"), 1);
}

#[test]
fn a_store_that_cannot_be_reached_or_read_is_one_line() {
    let Some(pg) = PgServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    photos(d, "arch", 2, 1);
    // A database without foodclip's tables, read.
    let o = run(d, &["search", "--db", &pg.url, "rice"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("holds no foodclip store") && err.trim().lines().count() == 1,
        "{err}"
    );
    // Nothing listening; a password is never printed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://me:secret@127.0.0.1:{closed}/food");
    let o = run(d, &["index", "arch", "--db", &url]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot connect to postgres://me:***@127.0.0.1"),
        "{err}"
    );
    assert!(
        !err.contains("secret") && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_sqlite_index_copies_into_the_shared_store() {
    let Some(pg) = PgServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    photos(d, "arch", 6, 7);
    ok(&run(d, &["index", "arch", "--db", "k.sqlite"]));
    ok(&run(
        d,
        &["index", "arch", "--db", "k.sqlite", "--grid", "2x1"],
    ));
    for _ in 0..2 {
        // Twice: a copy run again replaces, adds nothing.
        let o = run(
            d,
            &[
                "--site",
                "kitchen-7",
                "index",
                "--db",
                "k.sqlite",
                "--copy-to",
                &pg.url,
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("copied 6 files, 18 embeddings"), "{err}");
    }
    assert_eq!(
        pg.count("SELECT count(*) FROM files WHERE site = 'kitchen-7'"),
        6
    );
    assert_eq!(pg.count("SELECT count(*) FROM embeddings"), 18);
    assert_eq!(
        pg.count("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'embeddings_hnsw_%'"),
        2
    );
    // The copy answers as the original; indexing from the copy finds nothing to do.
    for extra in [&[][..], &["--grid", "2x1"][..]] {
        let search = |db: &str| {
            let mut args = vec!["search", "--db", db, "bibimbap", "-f", "jsonl"];
            args.extend(extra);
            hits(&run(d, &args))
        };
        assert_eq!(search("k.sqlite"), search(&pg.url));
    }
    let o = run(
        d,
        &["--site", "kitchen-7", "index", "arch", "--db", &pg.url],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("6 unchanged") && err.contains("0 embedded"),
        "{err}"
    );
}

/// A certificate authority, and a server certificate it signs for `names` (PEM: the chain, the
/// server's key, the authority's certificate).
fn certificates(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (cert.pem(), key.serialize_pem(), ca.pem())
}

#[test]
fn tls_connections_are_checked_as_libpq_checks_them() {
    let (cert, key, ca) = certificates(&["db.district.example"]);
    let Some(pg) = PgServer::start_tls(&cert, &key) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ca.pem"), &ca).unwrap();
    let (_, _, stranger) = certificates(&["db.district.example"]);
    std::fs::write(d.join("stranger.pem"), &stranger).unwrap();
    let with = |query: &str| format!("{}?{query}", pg.url);
    let one_line_error = |o: &Output, wanted: &str| {
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(wanted) && err.trim().lines().count() == 1,
            "{err}"
        );
    };
    // This server has no pgvector: a connection that got through reads that it holds no
    // foodclip store, and the server logs each connection's TLS.
    let search = |query: &str| {
        let url = if query.is_empty() {
            pg.url.clone()
        } else {
            with(query)
        };
        run(d, &["search", "rice", "--db", &url])
    };
    let encrypted = || pg.log().matches("SSL enabled").count();
    // The server takes TLS only: without it, refused.
    one_line_error(&search("sslmode=disable"), "cannot connect");
    assert_eq!(encrypted(), 0);
    // Encrypted, not checked (the default asks for TLS when offered; require insists); then
    // checked against the authority: the chain (verify-ca; the certificate names
    // db.district.example, not 127.0.0.1).
    let through = [
        "",
        "sslmode=require",
        "sslmode=verify-ca&sslrootcert=ca.pem",
    ];
    for (i, query) in through.into_iter().enumerate() {
        one_line_error(&search(query), "holds no foodclip store");
        assert_eq!(encrypted(), i + 1, "{query}: {}", pg.log());
    }
    // verify-full checks the name too; another authority's certificate is no proof.
    one_line_error(
        &search("sslmode=verify-full&sslrootcert=ca.pem"),
        "certificate",
    );
    one_line_error(
        &search("sslmode=verify-ca&sslrootcert=stranger.pem"),
        "certificate",
    );
    one_line_error(
        &search("sslmode=verify-ca&sslrootcert=missing.pem"),
        "missing.pem",
    );
    assert_eq!(encrypted(), through.len());
    // Named in the certificate, the host passes verify-full.
    let (cert, key, ca) = certificates(&["localhost", "127.0.0.1"]);
    let Some(pg) = PgServer::start_tls(&cert, &key) else {
        return;
    };
    std::fs::write(d.join("ca.pem"), &ca).unwrap();
    let url = format!("{}?sslmode=verify-full&sslrootcert=ca.pem", pg.url);
    one_line_error(
        &run(d, &["search", "rice", "--db", &url]),
        "holds no foodclip store",
    );
    assert_eq!(pg.log().matches("SSL enabled").count(), 1);
}
