//! A photo archive's embedding index: one SQLite database (WAL mode) that grows with the
//! archive, reused across runs and checkpoints.
//!
//! - `files`: one row per indexed file: the path (lossless bytes), size, mtime and BLAKE3
//!   content hash. A file whose size and mtime are unchanged is not read again.
//! - `embeddings`: one row per (content hash, checkpoint fingerprint, preprocessing mode, region
//!   source, region): the region's JSON (empty for a whole photo) and the embedding (f32 LE).
//!   Keyed by content, so a moved or renamed file reuses its embedding.
//! - `leftovers` (layout 2): what `leftovers --db` measured, one row per day, tray and
//!   compartment, replaced when measured again; `forecast` reads its history from it.
//!
//! The database says what it is with `PRAGMA application_id` and its layout with
//! `PRAGMA user_version`; any other file is refused untouched.

use super::{dot_le, region_of, FileState, Filter, Kind, LeftoverRow, Row};
use crate::fsutil::{path_bytes, path_from_bytes};
use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `PRAGMA application_id` of a foodclip index ("fclp").
const APPLICATION_ID: i64 = 0x6663_6c70;
/// The layout this foodclip writes (`PRAGMA user_version`): 2 added `leftovers`.
const VERSION: i64 = 2;

// One line per statement: SQLite quotes a statement in some of its errors, which stay one line.
const SCHEMA: &str = concat!(
    "CREATE TABLE files(path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime INTEGER NOT NULL, ",
    "hash BLOB NOT NULL);\n",
    "CREATE INDEX files_hash ON files(hash);\n",
    "CREATE TABLE embeddings(hash BLOB NOT NULL, checkpoint TEXT NOT NULL, mode TEXT NOT NULL, ",
    "source TEXT NOT NULL, idx INTEGER NOT NULL, region TEXT NOT NULL, vector BLOB NOT NULL, ",
    "PRIMARY KEY(hash, checkpoint, mode, source, idx));\n",
);

/// The table layout 2 added: part of a new index's schema, and made when a layout-1 index is
/// opened to write.
const LEFTOVERS: &str = concat!(
    "CREATE TABLE IF NOT EXISTS leftovers(date TEXT NOT NULL, tray TEXT NOT NULL, ",
    "compartment TEXT NOT NULL, dish TEXT, dish_group TEXT, leftover REAL, portion_g REAL, ",
    "served TEXT, returned TEXT, error TEXT, PRIMARY KEY(date, tray, compartment));"
);

/// How much of the file searches read through a memory map.
const MMAP_SIZE: i64 = 1 << 32;

/// Where a folder's own index lives, below the folder (`foodclip index DIR` makes it there).
pub const IN_FOLDER: &str = ".foodclip/index.sqlite";

/// The file `path` names: itself, or for a folder its [`IN_FOLDER`] index, whose own folder is
/// made to write (`create`).
fn file_of(path: &Path, create: bool) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let file = path.join(IN_FOLDER);
    let dir = file.parent().expect("IN_FOLDER is in a folder");
    if create {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {} (a folder that cannot be written?): give --db FILE elsewhere",
                dir.display()
            )
        })?;
    }
    Ok(file)
}

/// An open index.
pub struct Index {
    conn: Connection,
    path: PathBuf,
}

impl Index {
    /// Opens the index at `path`: to write (`index`; created if missing, and first checked
    /// whole by SQLite, so that a damaged file is refused before anything is written), or to
    /// read (`create` false; damage then fails the query that meets it). A file that is not a
    /// foodclip index, or one written by a newer foodclip, is refused without being changed.
    /// A folder stands for the index `foodclip index DIR` keeps in it, [`IN_FOLDER`].
    pub fn open(path: &Path, create: bool) -> Result<Self> {
        let path = &file_of(path, create)?;
        let exists = path.exists();
        if !exists && !create {
            bail!(
                "{} does not exist: make it with foodclip index",
                path.display()
            );
        }
        let flags = if exists {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::default()
        };
        let conn = Connection::open_with_flags(path, flags)
            .with_context(|| format!("cannot open {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Reads through the page cache's mapping rather than a copy per page: a search's scan
        // takes 35% less time. Streaming every row turns it off (see `each_row`).
        conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
        let index = Self {
            conn,
            path: path.to_path_buf(),
        };
        // A writer that finds no table (a new file, or one another run created a moment ago and
        // has not filled yet) makes the schema, under SQLite's write lock so that two runs do
        // not both make it; anything else is checked.
        let made = create && index.create_if_empty()?;
        if !made {
            index.check(create).map_err(|e| {
                // SQLite's messages may span lines (a damaged schema's text): one line here.
                let msg = format!("{e:#}");
                anyhow::anyhow!(
                    "{} is not a foodclip index (or is damaged); nothing was changed: {}",
                    path.display(),
                    msg.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            })?;
        }
        Ok(index)
    }

    /// Refuses anything but a foodclip index of a layout this foodclip knows; `whole` also has
    /// SQLite check every page.
    fn check(&self, whole: bool) -> Result<()> {
        let id: i64 = self
            .conn
            .pragma_query_value(None, "application_id", |r| r.get(0))?;
        if id != APPLICATION_ID {
            bail!("no foodclip mark (application_id)");
        }
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > VERSION {
            bail!("it was written by a newer foodclip (layout {version}); update foodclip");
        }
        if whole {
            let ok: String = self
                .conn
                .pragma_query_value(None, "quick_check", |r| r.get(0))?;
            if ok != "ok" {
                let first: Vec<&str> = ok.lines().take(3).collect();
                bail!("SQLite's check says: {}", first.join("; "));
            }
        }
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        if whole && version < 2 {
            self.conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {LEFTOVERS} PRAGMA user_version = 2; COMMIT;"
            ))?;
        }
        Ok(())
    }

    /// Makes the schema if the database has no table; whether it did. A file that is not an
    /// SQLite database fails here, unchanged.
    fn create_if_empty(&self) -> Result<bool> {
        let empty = |conn: &Connection| -> rusqlite::Result<bool> {
            conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n == 0)
        };
        // A quick look first, without a lock: an existing index is left to `check`.
        if !empty(&self.conn).unwrap_or(false) {
            return Ok(false);
        }
        // Pages large enough that a row (a 512-d embedding is 2 KiB) needs no overflow page.
        self.conn.pragma_update(None, "page_size", 16384)?;
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        if !empty(&self.conn)? {
            self.conn.execute_batch("COMMIT")?;
            return Ok(false);
        }
        self.conn.execute_batch(&format!(
            "{SCHEMA} {LEFTOVERS} PRAGMA application_id = {APPLICATION_ID}; \
             PRAGMA user_version = {VERSION}; COMMIT;"
        ))?;
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        Ok(true)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state and hash the index holds for `path`.
    pub fn file(&self, path: &Path) -> Result<Option<(FileState, Vec<u8>)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT size, mtime, hash FROM files WHERE path = ?1",
                params![path_bytes(path).as_ref()],
                |r| {
                    Ok((
                        FileState {
                            size: r.get::<_, i64>(0)? as u64,
                            mtime: r.get(1)?,
                        },
                        r.get(2)?,
                    ))
                },
            )
            .optional()?)
    }

    /// Whether embeddings of `kind` exist for the content `hash`.
    pub fn has(&self, hash: &[u8], kind: &Kind) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM embeddings WHERE hash = ?1 AND checkpoint = ?2 AND mode = ?3 \
                 AND source = ?4 LIMIT 1",
                params![hash, kind.checkpoint, kind.mode, kind.source],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Runs `f` in one transaction (one batch: committed whole or not at all).
    pub fn batch<T>(&mut self, f: impl FnOnce(Batch) -> Result<T>) -> Result<T> {
        let tx = self.conn.transaction()?;
        let out = f(Batch { tx: &tx })?;
        tx.commit()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(out)
    }

    /// Calls `f` with every row of `leftovers`, by day, tray and compartment, reading them one
    /// at a time. An index without the table (written before it existed) has none.
    pub fn leftovers(&self, mut f: impl FnMut(LeftoverRow) -> Result<()>) -> Result<()> {
        let has: bool = self.conn.query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'leftovers'",
            [],
            |r| r.get(0),
        )?;
        if !has {
            return Ok(());
        }
        let mut stmt = self.conn.prepare(
            "SELECT date, tray, compartment, dish, dish_group, leftover, portion_g, served, \
             returned, error FROM leftovers ORDER BY date, tray, compartment",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            f(LeftoverRow {
                date: r.get(0)?,
                tray: r.get(1)?,
                compartment: r.get(2)?,
                dish: r.get(3)?,
                group: r.get(4)?,
                leftover: r.get(5)?,
                portion_g: r.get(6)?,
                served: r.get(7)?,
                returned: r.get(8)?,
                error: r.get(9)?,
            })?;
        }
        Ok(())
    }

    /// The indexed paths under `root` (a folder prefix, compared as bytes).
    pub fn paths_under(&self, root: &Path) -> Result<Vec<PathBuf>> {
        let mut stmt = self.conn.prepare("SELECT path FROM files")?;
        let prefix = path_bytes(root).into_owned();
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for p in rows {
            let p = p?;
            if p.starts_with(&prefix) {
                out.push(path_from_bytes(p));
            }
        }
        Ok(out)
    }

    /// Calls `f` with every embedding of `kind` with its photo, in path order (a content
    /// indexed under several paths is a row per path).
    ///
    /// Read without the memory map: pages mapped once stay counted as the process's own, so a
    /// run over every row (`classify --db`) would seem to grow with the file.
    pub fn each_row(&self, kind: &Kind, f: impl FnMut(Row) -> Result<()>) -> Result<()> {
        self.conn.pragma_update(None, "mmap_size", 0)?;
        let read = self.each_row_read(kind, f);
        self.conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
        read
    }

    fn each_row_read(&self, kind: &Kind, mut f: impl FnMut(Row) -> Result<()>) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT f.path, f.mtime, e.region, e.vector FROM embeddings e \
             JOIN files f ON f.hash = e.hash \
             WHERE e.checkpoint = ?1 AND e.mode = ?2 AND e.source = ?3 ORDER BY f.path, e.idx",
        )?;
        let mut rows = stmt.query(params![kind.checkpoint, kind.mode, kind.source])?;
        while let Some(r) = rows.next()? {
            f(Row {
                site: None,
                path: path_from_bytes(r.get::<_, Vec<u8>>(0)?),
                mtime: r.get(1)?,
                region: region_of(r.get_ref(2)?.as_str()?)?,
                vector: crate::embeddings::le_values(r.get_ref(3)?.as_blob()?, f32::from_le_bytes),
            })?;
        }
        Ok(())
    }

    /// The `n` rows of `kind` most similar to `query` among the photos `filter` keeps, best
    /// first (see [`super::Store::top`]). Rows are streamed: memory holds only the best `n`.
    pub fn top(
        &self,
        kind: &Kind,
        query: &[f32],
        filter: &Filter,
        n: usize,
    ) -> Result<Vec<(f32, Row)>> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut stmt = self.conn.prepare(
            "SELECT f.path, f.mtime, e.region, e.vector, e.idx FROM embeddings e \
             JOIN files f ON f.hash = e.hash \
             WHERE e.checkpoint = ?1 AND e.mode = ?2 AND e.source = ?3",
        )?;
        let mut rows = stmt.query(params![kind.checkpoint, kind.mode, kind.source])?;
        let mut best: BinaryHeap<Reverse<Candidate>> = BinaryHeap::new();
        while let Some(r) = rows.next()? {
            let path = r.get_ref(0)?.as_blob()?;
            let mtime: i64 = r.get(1)?;
            if n == 0 || !filter.keeps(path, mtime) {
                continue;
            }
            let candidate = Candidate {
                score: dot_le(r.get_ref(3)?.as_blob()?, query),
                path: path.to_vec(),
                idx: r.get(4)?,
                mtime,
                region: String::new(),
            };
            if best.len() < n || best.peek().is_some_and(|Reverse(w)| candidate > *w) {
                best.push(Reverse(Candidate {
                    region: r.get(2)?,
                    ..candidate
                }));
                if best.len() > n {
                    best.pop();
                }
            }
        }
        let mut out: Vec<Candidate> = best.into_iter().map(|Reverse(c)| c).collect();
        out.sort_by(|a, b| b.cmp(a));
        out.into_iter()
            .map(|c| {
                let row = Row {
                    site: None,
                    path: path_from_bytes(c.path),
                    mtime: c.mtime,
                    region: region_of(&c.region)?,
                    vector: Vec::new(),
                };
                Ok((c.score, row))
            })
            .collect()
    }

    /// Calls `f` with every file row: path, state and hash.
    pub fn each_file(
        &self,
        mut f: impl FnMut(PathBuf, FileState, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, size, mtime, hash FROM files")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let state = FileState {
                size: r.get::<_, i64>(1)? as u64,
                mtime: r.get(2)?,
            };
            f(path_from_bytes(r.get::<_, Vec<u8>>(0)?), state, r.get(3)?)?;
        }
        Ok(())
    }

    /// Calls `f` with every embedding as stored: content hash, kind, region index, region
    /// JSON and vector.
    pub fn each_embedding(
        &self,
        mut f: impl FnMut(Vec<u8>, Kind, usize, String, Vec<f32>) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT hash, checkpoint, mode, source, idx, region, vector FROM embeddings \
             ORDER BY checkpoint, mode, source",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let kind = Kind {
                checkpoint: r.get(1)?,
                mode: r.get(2)?,
                source: r.get(3)?,
            };
            let vector = crate::embeddings::le_values(r.get_ref(6)?.as_blob()?, f32::from_le_bytes);
            f(
                r.get(0)?,
                kind,
                r.get::<_, i64>(4)? as usize,
                r.get(5)?,
                vector,
            )?;
        }
        Ok(())
    }

    /// Whether the index holds any row of `kind` (stops at the first: no count of them all).
    pub fn holds(&self, kind: &Kind) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM embeddings WHERE checkpoint = ?1 AND mode = ?2 AND source = ?3 \
                 LIMIT 1",
                params![kind.checkpoint, kind.mode, kind.source],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

/// A row in the running best of [`Index::top`]: ordered by score, then (better) the smaller
/// path and region index.
struct Candidate {
    score: f32,
    path: Vec<u8>,
    idx: i64,
    mtime: i64,
    region: String,
}

impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.path.cmp(&self.path))
            .then(o.idx.cmp(&self.idx))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}

impl Eq for Candidate {}

/// The writes of one batch.
pub struct Batch<'a> {
    tx: &'a rusqlite::Transaction<'a>,
}

impl Batch<'_> {
    /// Records `path` as it is now, with its content hash.
    pub fn file(&self, path: &Path, state: &FileState, hash: &[u8]) -> Result<()> {
        self.tx.execute(
            "INSERT OR REPLACE INTO files(path, size, mtime, hash) VALUES (?1, ?2, ?3, ?4)",
            params![
                path_bytes(path).as_ref(),
                state.size as i64,
                state.mtime,
                hash
            ],
        )?;
        Ok(())
    }

    /// Stores the embedding of region `idx` of the content `hash`, the region as JSON (empty
    /// for a whole photo).
    pub fn embedding(
        &self,
        hash: &[u8],
        kind: &Kind,
        idx: usize,
        region: &str,
        vector: &[f32],
    ) -> Result<()> {
        let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tx.execute(
            "INSERT OR REPLACE INTO embeddings(hash, checkpoint, mode, source, idx, region, vector) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![hash, kind.checkpoint, kind.mode, kind.source, idx as i64, region, bytes],
        )?;
        Ok(())
    }

    /// Stores a leftovers row, replacing the one of the same day, tray and compartment.
    pub fn leftover(&self, row: &LeftoverRow) -> Result<()> {
        self.tx.execute(
            "INSERT OR REPLACE INTO leftovers(date, tray, compartment, dish, dish_group, leftover, \
             portion_g, served, returned, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                row.date,
                row.tray,
                row.compartment,
                row.dish,
                row.group,
                row.leftover,
                row.portion_g,
                row.served,
                row.returned,
                row.error
            ],
        )?;
        Ok(())
    }

    /// Forgets `path` (deleted from the archive).
    pub fn remove(&self, path: &Path) -> Result<()> {
        self.tx.execute(
            "DELETE FROM files WHERE path = ?1",
            params![path_bytes(path).as_ref()],
        )?;
        Ok(())
    }

    /// Drops the embeddings of contents no file has any more.
    pub fn collect_garbage(&self) -> Result<usize> {
        Ok(self.tx.execute(
            "DELETE FROM embeddings WHERE hash NOT IN (SELECT hash FROM files)",
            [],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind() -> Kind {
        Kind {
            checkpoint: "blake3:x".into(),
            mode: "fast-f32".into(),
            source: String::new(),
        }
    }

    #[test]
    fn rows_follow_files_by_content_and_garbage_goes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("i.sqlite");
        let mut index = Index::open(&db, true).unwrap();
        let state = FileState { size: 3, mtime: 7 };
        index
            .batch(|b| {
                b.file(Path::new("/a/x.jpg"), &state, b"h1")?;
                b.file(Path::new("/a/y.jpg"), &state, b"h1")?;
                b.embedding(b"h1", &kind(), 0, "", &[0.6, 0.8])
            })
            .unwrap();
        assert!(index.has(b"h1", &kind()).unwrap());
        let mut rows = Vec::new();
        index
            .each_row(&kind(), |r| {
                rows.push(r);
                Ok(())
            })
            .unwrap();
        assert_eq!(rows.len(), 2, "one content, two paths");
        assert_eq!(rows[1].vector, vec![0.6, 0.8]);
        index.batch(|b| b.remove(Path::new("/a/x.jpg"))).unwrap();
        assert_eq!(index.batch(|b| b.collect_garbage()).unwrap(), 0);
        index.batch(|b| b.remove(Path::new("/a/y.jpg"))).unwrap();
        assert_eq!(index.batch(|b| b.collect_garbage()).unwrap(), 1);
        drop(index);
        // Reopened; a newer layout and a foreign file are refused untouched.
        Index::open(&db, false).unwrap();
        let other = dir.path().join("other.sqlite");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t(x); PRAGMA user_version = 3;")
            .unwrap();
        let before = std::fs::read(&other).unwrap();
        let e = format!("{:#}", Index::open(&other, true).err().unwrap());
        assert!(e.contains("is not a foodclip index"), "{e}");
        assert_eq!(std::fs::read(&other).unwrap(), before);
    }

    #[test]
    fn leftovers_are_replaced_by_day_tray_and_compartment_and_old_indexes_gain_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("i.sqlite");
        let mut index = Index::open(&db, true).unwrap();
        let row = |tray: &str, leftover: f64| LeftoverRow {
            date: "2026-12-07".into(),
            tray: tray.into(),
            compartment: "rice".into(),
            dish: Some("쌀밥".into()),
            leftover: Some(leftover),
            ..LeftoverRow::default()
        };
        index
            .batch(|b| {
                b.leftover(&row("t1", 0.2))?;
                b.leftover(&row("t2", 0.4))
            })
            .unwrap();
        index.batch(|b| b.leftover(&row("t1", 0.3))).unwrap();
        let mut seen = Vec::new();
        index
            .leftovers(|r| {
                seen.push((r.tray, r.leftover));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, [("t1".into(), Some(0.3)), ("t2".into(), Some(0.4))]);
        drop(index);
        // A layout-1 index: read, it has no leftovers; written, it gains the table.
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("DROP TABLE leftovers; PRAGMA user_version = 1;")
            .unwrap();
        drop(conn);
        let index = Index::open(&db, false).unwrap();
        index.leftovers(|_| panic!("no rows")).unwrap();
        drop(index);
        let mut index = Index::open(&db, true).unwrap();
        index.batch(|b| b.leftover(&row("t3", 0.5))).unwrap();
        let version: i64 = index
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
    }
}
