//! Where embeddings and leftovers are kept between runs: an embedded SQLite file per kitchen
//! ([`sqlite`], the default), or one PostgreSQL database with pgvector that many sites share
//! ([`postgres`]; `--db postgres://...`).
//!
//! Both keep the same things the same way: files by site and path with their size, mtime and
//! BLAKE3 content hash (a file unchanged since the last run is not read again); embeddings by
//! content hash, checkpoint fingerprint, preprocessing mode, region source and region (a moved
//! or renamed photo reuses its embedding, and one content is stored once for every site);
//! leftovers by day, tray and compartment. [`Store`] is the one seam the commands use.

pub mod postgres;
pub mod sqlite;
mod tls;

use crate::regions::Region;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// One row of `leftovers`: a tray's compartment on a day (empty strings where there is none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeftoverRow {
    /// `YYYY-MM-DD`, or empty.
    pub date: String,
    /// The tray's name.
    pub tray: String,
    /// The compartment's name, or empty for a tray that could not be measured at all.
    pub compartment: String,
    /// The dish.
    pub dish: Option<String>,
    /// Its group.
    pub group: Option<String>,
    /// Share left.
    pub leftover: Option<f64>,
    /// Grams per portion.
    pub portion_g: Option<f64>,
    /// The served photo.
    pub served: Option<String>,
    /// The returned photo.
    pub returned: Option<String>,
    /// Why it has no measurement.
    pub error: Option<String>,
}

/// What a set of embeddings was made with: they are only compared with their own kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kind {
    /// The checkpoint's fingerprint.
    pub checkpoint: String,
    /// Preprocessing and precision, such as `fast-f32`.
    pub mode: String,
    /// Where the regions came from (empty for whole photos).
    pub source: String,
}

/// A file as the index last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime: i64,
}

impl FileState {
    /// The state of the file at `path` now.
    pub fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).context("cannot read")?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64);
        Ok(Self {
            size: meta.len(),
            mtime,
        })
    }
}

/// One indexed embedding with its photo.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The site whose files hold the photo (a shared store's; `None` in SQLite).
    pub site: Option<String>,
    /// The photo.
    pub path: PathBuf,
    /// Its modification time (ns since the epoch).
    pub mtime: i64,
    /// The region, for region rows.
    pub region: Option<Region>,
    /// The embedding.
    pub vector: Vec<f32>,
}

/// Which photos a search keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only paths under this folder (a prefix, compared as bytes).
    pub under: Option<Vec<u8>>,
    /// Only photos modified at or after this time (ns since the epoch).
    pub since: Option<i64>,
    /// Only photos modified before this time.
    pub until: Option<i64>,
    /// Only this site's photos (a shared store).
    pub site: Option<String>,
}

impl Filter {
    /// Whether a photo at `path` (bytes), modified at `mtime`, is kept (the site aside).
    pub fn keeps(&self, path: &[u8], mtime: i64) -> bool {
        self.under.as_ref().is_none_or(|u| path.starts_with(u))
            && self.since.is_none_or(|s| mtime >= s)
            && self.until.is_none_or(|u| mtime < u)
    }
}

/// Whether `db` names a PostgreSQL database (`postgres://` or `postgresql://`) rather than a
/// SQLite file.
pub fn is_postgres(db: &Path) -> bool {
    db.to_str()
        .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// An open store.
pub enum Store {
    /// A SQLite file.
    Sqlite(sqlite::Index),
    /// A shared PostgreSQL database.
    Postgres(Box<postgres::Shared>),
}

/// The writes of one batch: committed whole or not at all.
pub enum Batch<'a> {
    /// To a SQLite file.
    Sqlite(sqlite::Batch<'a>),
    /// To PostgreSQL.
    Postgres(postgres::Batch<'a>),
}

impl Store {
    /// Opens the store `db` names (a SQLite file, or a `postgres://` URL): to write (`create`:
    /// a missing file or schema is made), or to read. `site` names this machine's files in a
    /// shared store (its host name when `None`; a SQLite file, one kitchen's, has no sites).
    pub fn open(db: &Path, create: bool, site: Option<&str>) -> Result<Self> {
        if is_postgres(db) {
            let url = db.to_str().expect("checked");
            return Ok(Self::Postgres(Box::new(postgres::Shared::open(
                url, create, site,
            )?)));
        }
        Ok(Self::Sqlite(sqlite::Index::open(db, create)?))
    }

    /// What messages call it: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(s) => s.path().display().to_string(),
            Self::Postgres(p) => p.describe(),
        }
    }

    /// The state and hash the store holds for `path` (this site's).
    pub fn file(&mut self, path: &Path) -> Result<Option<(FileState, Vec<u8>)>> {
        match self {
            Self::Sqlite(s) => s.file(path),
            Self::Postgres(p) => p.file(path),
        }
    }

    /// Whether embeddings of `kind` exist for the content `hash`.
    pub fn has(&mut self, hash: &[u8], kind: &Kind) -> Result<bool> {
        match self {
            Self::Sqlite(s) => s.has(hash, kind),
            Self::Postgres(p) => p.has(hash, kind),
        }
    }

    /// Makes ready to store embeddings of `kind`, `dim` wide (a shared store numbers the kind
    /// and gives it its vector index).
    pub fn prepare(&mut self, kind: &Kind, dim: usize) -> Result<()> {
        match self {
            Self::Sqlite(_) => Ok(()),
            Self::Postgres(p) => p.prepare(kind, dim),
        }
    }

    /// Runs `f` in one transaction (one batch: committed whole or not at all).
    pub fn batch<T>(&mut self, f: impl FnOnce(&mut Batch) -> Result<T>) -> Result<T> {
        match self {
            Self::Sqlite(s) => s.batch(|b| f(&mut Batch::Sqlite(b))),
            Self::Postgres(p) => p.batch(|b| f(&mut Batch::Postgres(b))),
        }
    }

    /// Calls `f` with every leftovers row, by day, tray and compartment, one at a time.
    pub fn leftovers(&mut self, f: impl FnMut(LeftoverRow) -> Result<()>) -> Result<()> {
        match self {
            Self::Sqlite(s) => s.leftovers(f),
            Self::Postgres(p) => p.leftovers(f),
        }
    }

    /// This site's stored paths under `root` (a folder prefix, compared as bytes).
    pub fn paths_under(&mut self, root: &Path) -> Result<Vec<PathBuf>> {
        match self {
            Self::Sqlite(s) => s.paths_under(root),
            Self::Postgres(p) => p.paths_under(root),
        }
    }

    /// Calls `f` with every embedding of `kind` and its photo (of `site` only, when given), in
    /// site, path and region order, one at a time; a content stored under several paths is a
    /// row per path.
    pub fn each_row(
        &mut self,
        kind: &Kind,
        site: Option<&str>,
        f: impl FnMut(Row) -> Result<()>,
    ) -> Result<()> {
        match self {
            Self::Sqlite(s) => s.each_row(kind, f),
            Self::Postgres(p) => p.each_row(kind, site, f),
        }
    }

    /// Every embedding of `kind` with its photo (see [`Self::each_row`]).
    pub fn rows(&mut self, kind: &Kind, site: Option<&str>) -> Result<Vec<Row>> {
        let mut out = Vec::new();
        self.each_row(kind, site, |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    /// The `n` rows of `kind` most similar to `query` (cosine: rows and query are unit length)
    /// among the photos `filter` keeps, best first (ties: by site, path and region). Exact on
    /// both backends: a shared store's vector index only proposes candidates, which are then
    /// scored on the stored f32 values.
    pub fn top(
        &mut self,
        kind: &Kind,
        query: &[f32],
        filter: &Filter,
        n: usize,
    ) -> Result<Vec<(f32, Row)>> {
        match self {
            Self::Sqlite(s) => s.top(kind, query, filter, n),
            Self::Postgres(p) => p.top(kind, query, filter, n),
        }
    }

    /// Sets how many rows a shared store's search takes from its vector index before scoring
    /// them exactly (0: every row; see [`postgres::CANDIDATES`]). SQLite always scans exactly.
    pub fn set_candidates(&mut self, candidates: usize) {
        if let Self::Postgres(p) = self {
            p.set_candidates(candidates);
        }
    }

    /// Whether the store holds any row of `kind`.
    pub fn holds(&mut self, kind: &Kind) -> Result<bool> {
        match self {
            Self::Sqlite(s) => s.holds(kind),
            Self::Postgres(p) => p.holds(kind),
        }
    }
}

/// What [`copy`] copied.
#[derive(Debug, Clone, Copy, Default)]
pub struct Copied {
    /// File rows.
    pub files: usize,
    /// Embeddings.
    pub embeddings: usize,
    /// Leftovers rows.
    pub leftovers: usize,
    /// Time spent building the vector indexes, after the rows were in.
    pub index_build: std::time::Duration,
}

/// Rows per transaction of [`copy`].
const COPY_BATCH: usize = 1000;

/// Copies a SQLite index whole into `to` (a shared store): its files (as `to`'s site), every
/// kind's embeddings (each kind's vector index built once its rows are in), and its leftovers;
/// in transactions of `COPY_BATCH` rows, upserted, so a copy cut short can be run again.
pub fn copy(from: &sqlite::Index, to: &mut Store) -> Result<Copied> {
    let mut copied = Copied::default();
    let mut files = Vec::with_capacity(COPY_BATCH);
    let flush_files = |to: &mut Store, files: &mut Vec<(PathBuf, FileState, Vec<u8>)>| {
        to.batch(|b| files.iter().try_for_each(|(p, s, h)| b.file(p, s, h)))?;
        files.clear();
        anyhow::Ok(())
    };
    from.each_file(|path, state, hash| {
        files.push((path, state, hash));
        copied.files += 1;
        if files.len() == COPY_BATCH {
            flush_files(to, &mut files)?;
        }
        Ok(())
    })?;
    flush_files(to, &mut files)?;
    type Embedding = (Vec<u8>, usize, String, Vec<f32>);
    let mut kinds: Vec<Kind> = Vec::new();
    let mut rows: Vec<Embedding> = Vec::with_capacity(COPY_BATCH);
    let flush = |to: &mut Store, kind: &Kind, rows: &mut Vec<Embedding>| {
        to.batch(|b| {
            rows.iter().try_for_each(|(hash, idx, region, vector)| {
                b.embedding_json(hash, kind, *idx, region, vector)
            })
        })?;
        rows.clear();
        anyhow::Ok(())
    };
    from.each_embedding(|hash, kind, idx, region, vector| {
        if kinds.last() != Some(&kind) {
            if let Some(last) = kinds.last().cloned() {
                flush(to, &last, &mut rows)?;
            }
            if let Store::Postgres(p) = to {
                p.register(&kind, vector.len())?;
            }
            kinds.push(kind.clone());
        }
        rows.push((hash, idx, region, vector));
        copied.embeddings += 1;
        if rows.len() == COPY_BATCH {
            flush(to, &kind, &mut rows)?;
        }
        Ok(())
    })?;
    if let Some(last) = kinds.last().cloned() {
        flush(to, &last, &mut rows)?;
    }
    let mut leftovers = Vec::new();
    from.leftovers(|row| {
        leftovers.push(row);
        copied.leftovers += 1;
        if leftovers.len() == COPY_BATCH {
            to.batch(|b| leftovers.iter().try_for_each(|r| b.leftover(r)))?;
            leftovers.clear();
        }
        Ok(())
    })?;
    to.batch(|b| leftovers.iter().try_for_each(|r| b.leftover(r)))?;
    let start = std::time::Instant::now();
    for kind in &kinds {
        if let Store::Postgres(p) = to {
            let dim = p.width(kind)?;
            p.prepare(kind, dim)?;
        }
    }
    copied.index_build = start.elapsed();
    Ok(copied)
}

impl Batch<'_> {
    /// Records `path` as it is now, with its content hash.
    pub fn file(&mut self, path: &Path, state: &FileState, hash: &[u8]) -> Result<()> {
        match self {
            Self::Sqlite(b) => b.file(path, state, hash),
            Self::Postgres(b) => b.file(path, state, hash),
        }
    }

    /// Stores the embedding of region `idx` (or the whole photo, `region` `None`) of the content
    /// `hash`, replacing one stored before.
    pub fn embedding(
        &mut self,
        hash: &[u8],
        kind: &Kind,
        idx: usize,
        region: Option<&Region>,
        vector: &[f32],
    ) -> Result<()> {
        let region = match region {
            Some(r) => serde_json::to_string(r)?,
            None => String::new(),
        };
        self.embedding_json(hash, kind, idx, &region, vector)
    }

    /// [`Self::embedding`] with the region as its stored JSON (empty for a whole photo).
    pub fn embedding_json(
        &mut self,
        hash: &[u8],
        kind: &Kind,
        idx: usize,
        region: &str,
        vector: &[f32],
    ) -> Result<()> {
        match self {
            Self::Sqlite(b) => b.embedding(hash, kind, idx, region, vector),
            Self::Postgres(b) => b.embedding(hash, kind, idx, region, vector),
        }
    }

    /// Stores a leftovers row, replacing the one of the same day, tray and compartment.
    pub fn leftover(&mut self, row: &LeftoverRow) -> Result<()> {
        match self {
            Self::Sqlite(b) => b.leftover(row),
            Self::Postgres(b) => b.leftover(row),
        }
    }

    /// Forgets `path` (deleted from the archive).
    pub fn remove(&mut self, path: &Path) -> Result<()> {
        match self {
            Self::Sqlite(b) => b.remove(path),
            Self::Postgres(b) => b.remove(path),
        }
    }

    /// Drops the embeddings of contents no file (of any site) has any more.
    pub fn collect_garbage(&mut self) -> Result<()> {
        match self {
            Self::Sqlite(b) => b.collect_garbage().map(|_| ()),
            Self::Postgres(b) => b.collect_garbage(),
        }
    }
}

/// A stored region's JSON (empty for a whole photo) as the region.
fn region_of(json: &str) -> Result<Option<Region>> {
    if json.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        serde_json::from_str(json).context("a damaged region in the store")?,
    ))
}

/// The best `n` of scored candidates, best first: by score, then site, path and region.
fn best(mut scored: Vec<(f32, Row)>, n: usize) -> Vec<(f32, Row)> {
    let key = |r: &Row| {
        (
            r.site.clone(),
            r.path.clone(),
            r.region.as_ref().map(|g| g.index),
        )
    };
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| key(&a.1).cmp(&key(&b.1))));
    scored.truncate(n);
    scored
}

/// The dot product of `query` with little-endian f32 bytes.
fn dot_le(bytes: &[u8], query: &[f32]) -> f32 {
    bytes
        .chunks_exact(4)
        .zip(query)
        .map(|(c, q)| f32::from_le_bytes(c.try_into().expect("4 bytes")) * q)
        .sum()
}

/// The BLAKE3 hash of the file at `path`.
pub fn content_hash(path: &Path) -> Result<Vec<u8>> {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path).context("cannot read")?;
    std::io::copy(&mut file, &mut hasher).context("cannot read")?;
    Ok(hasher.finalize().as_bytes().to_vec())
}

/// `values` (`rows x dim`, f32) as a NumPy `.npy` file's bytes (format 1.0, little-endian).
pub fn npy(values: &[f32], rows: usize, dim: usize) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64 bytes.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned() {
        let bytes = npy(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + len + 24);
    }
}
