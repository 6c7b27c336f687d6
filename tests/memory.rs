//! Memory stays bounded however many photos a run reads: its own test binary, so that the peak
//! resident size of the children it measures is not mixed with other tests' children.

mod common;

use common::photos::{synthetic, write_jpeg};
use common::{children_peak_kib, fixtures, foodclip};

/// Embeds the photos of `dir`, whole and as the six regions of a 2x3 grid.
fn classify_folder(dir: &std::path::Path) {
    for regions in [&[][..], &["--grid", "2x3"]] {
        let o = foodclip()
            .args(["--quiet", "--exact-preprocess", "--model"])
            .arg(fixtures().join("tiny-openai"))
            .args(["embed", "--batch-size", "4", "--format", "jsonl"])
            .args(regions)
            .arg(dir)
            .output()
            .unwrap();
        assert!(o.status.success());
    }
}

#[test]
fn peak_memory_does_not_grow_with_the_folder_for_photos_or_regions() {
    // 1600x1200 photos: 5.8 MB each decoded, so holding a folder of 96 would take 550 MB.
    let small = tempfile::tempdir().unwrap();
    let large = tempfile::tempdir().unwrap();
    let photo = synthetic(1600, 1200, 1);
    for i in 0..8 {
        write_jpeg(&photo, &small.path().join(format!("{i:03}.jpg")));
    }
    for i in 0..96 {
        std::fs::copy(
            small.path().join("000.jpg"),
            large.path().join(format!("{i:03}.jpg")),
        )
        .unwrap();
    }
    classify_folder(small.path());
    let peak_small = children_peak_kib();
    classify_folder(large.path());
    let peak_large = children_peak_kib();
    assert!(
        peak_large < peak_small + 64 * 1024,
        "peak grew from {peak_small} KiB to {peak_large} KiB with 12x the photos"
    );
}

/// Makes `db` (an index of one photo) hold `rows` photos: file rows under long paths, all
/// with the indexed photo's content (a content under many paths is a row per path).
fn grow_index(db: &std::path::Path, rows: usize) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let (size, mtime, hash): (i64, i64, Vec<u8>) = conn
        .query_row("SELECT size, mtime, hash FROM files", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT OR IGNORE INTO files(path, size, mtime, hash) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        let folder = "/archive/district-seven/middle-school-kitchen/lunch/returned-trays".repeat(2);
        for i in 0..rows {
            let path = format!("{folder}/tray-{i:07}.jpg");
            insert
                .execute(rusqlite::params![path.as_bytes(), size, mtime, hash])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// `classify --db` over `db`, its records thrown away; returns how many there were.
fn classify_db(dir: &std::path::Path) -> usize {
    let o = common::run_in(
        dir,
        &[
            "--quiet",
            "classify",
            "--db",
            "index.sqlite",
            "--labels",
            fixtures().join("labels/mixed.txt").to_str().unwrap(),
            "-k",
            "1",
            "-f",
            "csv",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout.iter().filter(|&&b| b == b'\n').count() - 1
}

#[test]
fn classify_db_streams_the_store_in_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_jpeg(&synthetic(120, 90, 1), &d.join("tray.jpg"));
    let o = common::run_in(d, &["--quiet", "index", "tray.jpg", "--db", "index.sqlite"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Held whole, 200,000 rows of 150-byte paths (and a region slot and a vector each)
    // take well over 64 MB.
    grow_index(&d.join("index.sqlite"), 20_000);
    assert_eq!(classify_db(d), 20_001);
    let peak_small = children_peak_kib();
    grow_index(&d.join("index.sqlite"), 200_000);
    assert_eq!(classify_db(d), 200_001);
    let peak_large = children_peak_kib();
    assert!(
        peak_large < peak_small + 24 * 1024,
        "peak grew from {peak_small} KiB to {peak_large} KiB with 10x the rows"
    );
}
