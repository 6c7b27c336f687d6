//! The shared store: one PostgreSQL database with the pgvector extension, written by many
//! sites at once (`--db postgres://...`).
//!
//! Tables (made on first write, under an advisory lock so that two writers starting together
//! do not race to make them):
//!
//! - `files(site, path, size, mtime, hash)`: each site's files, keyed by site and path (bytes).
//! - `kinds(id, checkpoint, mode, source, dim)`: what embeddings were made with, numbered.
//! - `embeddings(hash, kind, idx, region, vector)`: keyed by content, kind and region; `vector`
//!   is pgvector's `vector` (f32). Each kind has its own HNSW index on the vector cast to
//!   `halfvec` (half the memory; cosine), a partial index `WHERE kind = id`.
//! - `leftovers(site, date, tray, compartment, ...)`: what `leftovers --db` measured.
//! - `foodclip_layout(version)`: the layout, so that an older foodclip refuses a newer one.
//!
//! A batch is collected first and then written in one transaction, sorted by key (two writers
//! then take row locks in the same order) and retried when PostgreSQL reports a deadlock or a
//! serialization failure; every write is a keyed upsert, so a batch written twice, or a writer
//! killed mid-batch (its transaction rolls back), leaves no duplicate and loses nothing that
//! was committed.
//!
//! Search asks the HNSW index for candidates ([`CANDIDATES`], or as many as set, with
//! pgvector's iterative scan so that filters do not starve it) and scores them on the stored
//! f32 values; when the index returns fewer candidates than the filters allow, the search falls
//! back to an exact scan. Results therefore equal an exact scan whenever the true best rows are
//! among the candidates.

use super::{best, region_of, FileState, Filter, Kind, LeftoverRow, Row};
use crate::fsutil::{path_bytes, path_from_bytes};
use anyhow::{bail, Result};
use pgvector::Vector;
use postgres::error::SqlState;
use postgres::Client;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The advisory lock key taken while the schema or a kind's index is made ("fclp").
const LOCK: i64 = 0x6663_6c70;
/// The layout this foodclip writes.
const VERSION: i32 = 1;

const SCHEMA: &str = "
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS foodclip_layout(version integer NOT NULL);
CREATE TABLE IF NOT EXISTS files(site text NOT NULL, path bytea NOT NULL, size bigint NOT NULL,
  mtime bigint NOT NULL, hash bytea NOT NULL, PRIMARY KEY(site, path));
CREATE INDEX IF NOT EXISTS files_hash ON files(hash);
CREATE TABLE IF NOT EXISTS kinds(id serial PRIMARY KEY, checkpoint text NOT NULL,
  mode text NOT NULL, source text NOT NULL, dim integer NOT NULL,
  UNIQUE(checkpoint, mode, source));
CREATE TABLE IF NOT EXISTS embeddings(hash bytea NOT NULL, kind integer NOT NULL
  REFERENCES kinds(id), idx integer NOT NULL, region text NOT NULL, vector vector NOT NULL,
  PRIMARY KEY(hash, kind, idx));
CREATE TABLE IF NOT EXISTS leftovers(site text NOT NULL, date text NOT NULL, tray text NOT NULL,
  compartment text NOT NULL, dish text, dish_group text, leftover double precision,
  portion_g double precision, served text, returned text, error text,
  PRIMARY KEY(site, date, tray, compartment));
";

/// An open shared store.
pub struct Shared {
    client: Client,
    /// The URL without its password.
    shown: String,
    /// This machine's site.
    site: String,
    /// Kinds seen so far: id and width.
    kinds: HashMap<Kind, (i32, usize)>,
    /// Rows a search takes from the vector index before scoring them exactly (0: scan).
    candidates: usize,
}

/// The rows a search takes from the vector index by default: on a million clustered
/// embeddings (`benches/store.rs`) enough for the exact top 10 in nearly every query.
pub const CANDIDATES: usize = 1000;

/// One batch's writes, collected, then written in one transaction by [`Shared::batch`].
pub struct Batch<'a> {
    ops: &'a mut Vec<Op>,
    kinds: &'a HashMap<Kind, (i32, usize)>,
}

/// A write of a batch.
enum Op {
    Remove(Vec<u8>),
    File(Vec<u8>, FileState, Vec<u8>),
    Embedding(Vec<u8>, i32, i32, String, Vec<f32>),
    Leftover(Box<LeftoverRow>),
    Garbage,
}

impl Op {
    /// The order writes are made in: removals, files, embeddings, leftovers, then garbage,
    /// each by key.
    fn key(&self) -> (u8, &[u8], i32, i32) {
        match self {
            Op::Remove(p) => (0, p, 0, 0),
            Op::File(p, ..) => (1, p, 0, 0),
            Op::Embedding(h, k, i, ..) => (2, h, *k, *i),
            Op::Leftover(_) => (3, &[], 0, 0),
            Op::Garbage => (4, &[], 0, 0),
        }
    }
}

/// The site a machine writes as when none is given: its host name.
pub fn default_site() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "local".to_string())
}

/// `url` with its password replaced by `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:***@{host}")
        }
        _ => url.to_string(),
    }
}

/// Whether an error is one a transaction is retried after.
fn retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

impl Shared {
    /// Connects to `url`; `create` makes the tables when missing. `site` names this machine's
    /// files (its host name when `None`).
    pub fn open(url: &str, create: bool, site: Option<&str>) -> Result<Self> {
        let shown = without_password(url);
        let (config, tls) =
            super::tls::config(url).map_err(|e| anyhow::anyhow!("{shown}: {e:#}"))?;
        let mut client = config.connect(tls).map_err(|e| {
            let why = one_line(&e);
            let hint = if why.contains("TLS") || why.contains("certificate") {
                "check the URL's sslmode and sslrootcert (the server's certificate authority)"
            } else {
                "is the server running, and the URL postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE?"
            };
            anyhow::anyhow!("cannot connect to {shown}: {why}; {hint}")
        })?;
        if create {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])?;
            tx.batch_execute(SCHEMA).map_err(|e| {
                anyhow::anyhow!("cannot make foodclip's tables in {shown}: {}", one_line(&e))
            })?;
            tx.execute(
                "INSERT INTO foodclip_layout(version) SELECT $1 \
                 WHERE NOT EXISTS (SELECT 1 FROM foodclip_layout)",
                &[&VERSION],
            )?;
            tx.commit()?;
        }
        let version: Option<i32> = client
            .query_opt("SELECT max(version) FROM foodclip_layout", &[])
            .map_err(|e| {
                anyhow::anyhow!(
                    "{shown} holds no foodclip store ({}): make it with foodclip index --db URL",
                    one_line(&e)
                )
            })?
            .and_then(|r| r.get(0));
        match version {
            None => bail!("{shown} holds no foodclip store: make it with foodclip index --db URL"),
            Some(v) if v > VERSION => {
                bail!("{shown} was written by a newer foodclip (layout {v}); update foodclip")
            }
            Some(_) => {}
        }
        Ok(Self {
            client,
            shown,
            site: site.map_or_else(default_site, str::to_string),
            kinds: HashMap::new(),
            candidates: CANDIDATES,
        })
    }

    /// The URL without its password.
    pub fn describe(&self) -> String {
        self.shown.clone()
    }

    /// Sets how many rows a search takes from the vector index (at least the rows wanted)
    /// before scoring them exactly; 0 scores every row the filters keep.
    pub fn set_candidates(&mut self, candidates: usize) {
        self.candidates = candidates;
    }

    /// The site this machine writes as.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The id and width of `kind`, if the store has it.
    fn kind(&mut self, kind: &Kind) -> Result<Option<(i32, usize)>> {
        if let Some(k) = self.kinds.get(kind) {
            return Ok(Some(*k));
        }
        let row = self.client.query_opt(
            "SELECT id, dim FROM kinds WHERE checkpoint = $1 AND mode = $2 AND source = $3",
            &[&kind.checkpoint, &kind.mode, &kind.source],
        )?;
        let found = row.map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1) as usize));
        if let Some(k) = found {
            self.kinds.insert(kind.clone(), k);
        }
        Ok(found)
    }

    /// The state and hash stored for this site's `path`.
    pub fn file(&mut self, path: &Path) -> Result<Option<(FileState, Vec<u8>)>> {
        let row = self.client.query_opt(
            "SELECT size, mtime, hash FROM files WHERE site = $1 AND path = $2",
            &[&self.site, &path_bytes(path).as_ref()],
        )?;
        Ok(row.map(|r| {
            let state = FileState {
                size: r.get::<_, i64>(0) as u64,
                mtime: r.get(1),
            };
            (state, r.get(2))
        }))
    }

    /// Whether embeddings of `kind` exist for the content `hash`.
    pub fn has(&mut self, hash: &[u8], kind: &Kind) -> Result<bool> {
        let Some((id, _)) = self.kind(kind)? else {
            return Ok(false);
        };
        Ok(self
            .client
            .query_opt(
                "SELECT 1 FROM embeddings WHERE hash = $1 AND kind = $2 LIMIT 1",
                &[&hash, &id],
            )?
            .is_some())
    }

    /// The width of `kind`'s embeddings (0 when the store has none).
    pub fn width(&mut self, kind: &Kind) -> Result<usize> {
        Ok(self.kind(kind)?.map_or(0, |(_, dim)| dim))
    }

    /// Numbers `kind` (`dim` wide) and gives it its HNSW index, once for the store. An index
    /// built over rows already stored (after a copy) gets the memory its graph needs
    /// ([`build_memory`]) for this transaction, where the server allows less.
    pub fn prepare(&mut self, kind: &Kind, dim: usize) -> Result<()> {
        self.register(kind, dim)?;
        let (id, dim) = self.kinds[kind];
        let rows = self.rows_of(kind)?;
        let mut tx = self.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])?;
        let have: i64 = tx
            .query_one(
                "SELECT setting::bigint * 1024 FROM pg_settings WHERE name = 'maintenance_work_mem'",
                &[],
            )?
            .get(0);
        let want = build_memory(rows, dim);
        if want > have as u64 {
            tx.batch_execute(&format!(
                "SET LOCAL maintenance_work_mem = '{}kB'",
                want / 1024
            ))?;
        }
        tx.batch_execute(&format!(
            "CREATE INDEX IF NOT EXISTS embeddings_hnsw_{id} ON embeddings USING hnsw \
             ((vector::halfvec({dim})) halfvec_cosine_ops) WHERE kind = {id}"
        ))?;
        tx.commit()?;
        Ok(())
    }

    /// Numbers `kind`, `dim` wide, without making its index (a bulk copy builds it after).
    pub fn register(&mut self, kind: &Kind, dim: usize) -> Result<()> {
        self.client.execute(
            "INSERT INTO kinds(checkpoint, mode, source, dim) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            &[&kind.checkpoint, &kind.mode, &kind.source, &(dim as i32)],
        )?;
        let (_, width) = self.kind(kind)?.expect("just made");
        if width != dim {
            bail!(
                "{} holds embeddings of this model {width} wide, not {dim}",
                self.shown
            );
        }
        Ok(())
    }

    /// Collects the writes of `f`, then writes them in one transaction (see the module's notes).
    pub fn batch<T>(&mut self, f: impl FnOnce(Batch) -> Result<T>) -> Result<T> {
        let mut ops = Vec::new();
        let out = f(Batch {
            ops: &mut ops,
            kinds: &self.kinds,
        })?;
        ops.sort_by(|a, b| a.key().cmp(&b.key()));
        let mut tries = 0;
        loop {
            match self.write(&ops) {
                Ok(()) => return Ok(out),
                Err(e) if retryable(&e) && tries < 8 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20 << tries));
                }
                Err(e) => bail!("cannot write to {}: {}", self.shown, one_line(&e)),
            }
        }
    }

    /// Writes `ops` in one transaction.
    fn write(&mut self, ops: &[Op]) -> Result<(), postgres::Error> {
        let site = self.site.clone();
        let mut tx = self.client.transaction()?;
        let file = tx.prepare(
            "INSERT INTO files(site, path, size, mtime, hash) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (site, path) DO UPDATE SET size = EXCLUDED.size, \
             mtime = EXCLUDED.mtime, hash = EXCLUDED.hash",
        )?;
        let embedding = tx.prepare(
            "INSERT INTO embeddings(hash, kind, idx, region, vector) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (hash, kind, idx) DO UPDATE SET region = EXCLUDED.region, \
             vector = EXCLUDED.vector",
        )?;
        for op in ops {
            match op {
                Op::Remove(path) => {
                    tx.execute(
                        "DELETE FROM files WHERE site = $1 AND path = $2",
                        &[&site, path],
                    )?;
                }
                Op::File(path, state, hash) => {
                    tx.execute(
                        &file,
                        &[&site, path, &(state.size as i64), &state.mtime, hash],
                    )?;
                }
                Op::Embedding(hash, kind, idx, region, vector) => {
                    let v = Vector::from(vector.clone());
                    tx.execute(&embedding, &[hash, kind, idx, region, &v])?;
                }
                Op::Leftover(row) => {
                    tx.execute(
                        "INSERT INTO leftovers(site, date, tray, compartment, dish, dish_group, \
                         leftover, portion_g, served, returned, error) VALUES ($1, $2, $3, $4, \
                         $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (site, date, tray, compartment) \
                         DO UPDATE SET dish = EXCLUDED.dish, dish_group = EXCLUDED.dish_group, \
                         leftover = EXCLUDED.leftover, portion_g = EXCLUDED.portion_g, \
                         served = EXCLUDED.served, returned = EXCLUDED.returned, \
                         error = EXCLUDED.error",
                        &[
                            &site,
                            &row.date,
                            &row.tray,
                            &row.compartment,
                            &row.dish,
                            &row.group,
                            &row.leftover,
                            &row.portion_g,
                            &row.served,
                            &row.returned,
                            &row.error,
                        ],
                    )?;
                }
                Op::Garbage => {
                    tx.execute(
                        "DELETE FROM embeddings e WHERE NOT EXISTS \
                         (SELECT 1 FROM files f WHERE f.hash = e.hash)",
                        &[],
                    )?;
                }
            }
        }
        tx.commit()
    }

    /// Calls `f` with this site's leftovers rows, by day, tray and compartment.
    pub fn leftovers(&mut self, mut f: impl FnMut(LeftoverRow) -> Result<()>) -> Result<()> {
        let rows = self.client.query(
            "SELECT date, tray, compartment, dish, dish_group, leftover, portion_g, served, \
             returned, error FROM leftovers WHERE site = $1 ORDER BY date, tray, compartment",
            &[&self.site],
        )?;
        for r in rows {
            f(LeftoverRow {
                date: r.get(0),
                tray: r.get(1),
                compartment: r.get(2),
                dish: r.get(3),
                group: r.get(4),
                leftover: r.get(5),
                portion_g: r.get(6),
                served: r.get(7),
                returned: r.get(8),
                error: r.get(9),
            })?;
        }
        Ok(())
    }

    /// This site's stored paths under `root`.
    pub fn paths_under(&mut self, root: &Path) -> Result<Vec<PathBuf>> {
        let prefix = path_bytes(root).into_owned();
        let rows = self.client.query(
            "SELECT path FROM files WHERE site = $1 AND substring(path from 1 for $2) = $3",
            &[&self.site, &(prefix.len() as i32), &prefix],
        )?;
        Ok(rows
            .into_iter()
            .map(|r| path_from_bytes(r.get::<_, Vec<u8>>(0)))
            .collect())
    }

    /// Calls `f` with every embedding of `kind` (of `site`'s files only, when given), by site,
    /// path and region, streamed from the server.
    pub fn each_row(
        &mut self,
        kind: &Kind,
        site: Option<&str>,
        mut f: impl FnMut(Row) -> Result<()>,
    ) -> Result<()> {
        use postgres::fallible_iterator::FallibleIterator;
        let Some((id, _)) = self.kind(kind)? else {
            return Ok(());
        };
        let site = site.map(str::to_string);
        let params: [&(dyn postgres::types::ToSql + Sync); 2] = [&id, &site];
        let mut rows = self.client.query_raw(
            "SELECT f.site, f.path, f.mtime, e.region, e.vector FROM embeddings e \
             JOIN files f ON f.hash = e.hash WHERE e.kind = $1 \
             AND ($2::text IS NULL OR f.site = $2) ORDER BY f.site, f.path, e.idx",
            params,
        )?;
        while let Some(r) = rows.next()? {
            f(row(&r)?)?;
        }
        Ok(())
    }

    /// The `n` best rows of `kind` for `query` among the photos `filter` keeps (see the
    /// module's notes).
    pub fn top(
        &mut self,
        kind: &Kind,
        query: &[f32],
        filter: &Filter,
        n: usize,
    ) -> Result<Vec<(f32, Row)>> {
        let Some((id, dim)) = self.kind(kind)? else {
            return Ok(Vec::new());
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        let wanted = self.candidates.max(n);
        let q = Vector::from(query.to_vec());
        let under = filter.under.clone().unwrap_or_default();
        let limits: [&(dyn postgres::types::ToSql + Sync); 5] = [
            &filter.site,
            &(under.len() as i32),
            &under,
            &filter.since,
            &filter.until,
        ];
        // The filters, their parameters numbered from `$first`.
        let filters = |first: usize| {
            let [a, b, c, d, e] = [0, 1, 2, 3, 4].map(|i| format!("${}", first + i));
            format!(
                "({a}::text IS NULL OR f.site = {a}) \
                 AND ({b} = 0 OR substring(f.path from 1 for {b}) = {c}) \
                 AND ({d}::bigint IS NULL OR f.mtime >= {d}) AND ({e}::bigint IS NULL OR f.mtime < {e})"
            )
        };
        let from = format!(
            "SELECT f.site, f.path, f.mtime, e.region, e.vector FROM embeddings e \
             JOIN files f ON f.hash = e.hash WHERE e.kind = {id}"
        );
        let mut with_query: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&q];
        with_query.extend(limits);
        let mut tx = self.client.transaction()?;
        tx.batch_execute(&format!(
            "SET LOCAL hnsw.ef_search = {}; SET LOCAL hnsw.iterative_scan = relaxed_order",
            wanted.min(1000)
        ))?;
        let candidates = if self.candidates == 0 {
            Vec::new()
        } else {
            tx.query(
                &format!(
                "{from} AND {} ORDER BY e.vector::halfvec({dim}) <=> $1::vector::halfvec({dim}) \
                 LIMIT {wanted}",
                filters(2)
            ),
                &with_query,
            )?
        };
        let rows = if candidates.len() < wanted {
            // Fewer than asked: all that the filters allow, or the index stopped early; an
            // exact scan when those differ.
            let count = format!(
                "SELECT count(*) FROM embeddings e JOIN files f ON f.hash = e.hash \
                 WHERE e.kind = {id} AND {}",
                filters(1)
            );
            let all: i64 = tx.query_one(&count, &limits)?.get(0);
            if all as usize > candidates.len() {
                tx.query(&format!("{from} AND {}", filters(1)), &limits)?
            } else {
                candidates
            }
        } else {
            candidates
        };
        tx.commit()?;
        let mut scored = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut row = row(r)?;
            let score = row.vector.iter().zip(query).map(|(a, b)| a * b).sum();
            row.vector = Vec::new();
            scored.push((score, row));
        }
        Ok(best(scored, n))
    }

    /// Whether the store holds any row of `kind`.
    pub fn holds(&mut self, kind: &Kind) -> Result<bool> {
        let Some((id, _)) = self.kind(kind)? else {
            return Ok(false);
        };
        let row = self
            .client
            .query_opt("SELECT 1 FROM embeddings WHERE kind = $1 LIMIT 1", &[&id])?;
        Ok(row.is_some())
    }

    /// How many rows of `kind` the store holds.
    fn rows_of(&mut self, kind: &Kind) -> Result<usize> {
        let Some((id, _)) = self.kind(kind)? else {
            return Ok(0);
        };
        let n: i64 = self
            .client
            .query_one("SELECT count(*) FROM embeddings WHERE kind = $1", &[&id])?
            .get(0);
        Ok(n as usize)
    }
}

/// The most memory an index build is given: beyond it the graph is built on disk, slowly.
const MAX_BUILD_MEMORY: u64 = 4 << 30;

/// The memory pgvector needs to build the HNSW graph of `rows` embeddings `dim` wide in one
/// piece (each element: its half-precision vector, its neighbour lists at m = 16, and its
/// bookkeeping), with a quarter to spare; at most `MAX_BUILD_MEMORY`.
pub fn build_memory(rows: usize, dim: usize) -> u64 {
    let element = 2 * dim as u64 + 2 * 16 * 10 + 300;
    (rows as u64 * element * 5 / 4).min(MAX_BUILD_MEMORY)
}

/// A row of `site, path, mtime, region, vector`.
fn row(r: &postgres::Row) -> Result<Row> {
    let vector: Vector = r.get(4);
    Ok(Row {
        site: Some(r.get(0)),
        path: path_from_bytes(r.get::<_, Vec<u8>>(1)),
        mtime: r.get(2),
        region: region_of(r.get::<_, &str>(3))?,
        vector: vector.to_vec(),
    })
}

/// A PostgreSQL error on one line: its message (and detail), without the driver's wrapping.
fn one_line(e: &postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{}: {d}", db.message()),
            None => db.message().to_string(),
        },
        None => {
            // The driver's own words, then what caused them (a TLS handshake's reason).
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                text = format!("{text}: {c}");
                cause = c.source();
            }
            text
        }
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Batch<'_> {
    /// Records this site's `path` as it is now, with its content hash.
    pub fn file(&mut self, path: &Path, state: &FileState, hash: &[u8]) -> Result<()> {
        let path = path_bytes(path).into_owned();
        self.ops.push(Op::File(path, state.clone(), hash.to_vec()));
        Ok(())
    }

    /// Stores an embedding (`region` as JSON, empty for a whole photo).
    pub fn embedding(
        &mut self,
        hash: &[u8],
        kind: &Kind,
        idx: usize,
        region: &str,
        vector: &[f32],
    ) -> Result<()> {
        let Some((id, dim)) = self.kinds.get(kind) else {
            bail!("embeddings of a kind the store was not prepared for");
        };
        if vector.len() != *dim {
            bail!(
                "an embedding {} wide where the store holds {dim}",
                vector.len()
            );
        }
        self.ops.push(Op::Embedding(
            hash.to_vec(),
            *id,
            idx as i32,
            region.to_string(),
            vector.to_vec(),
        ));
        Ok(())
    }

    /// Stores a leftovers row of this site.
    pub fn leftover(&mut self, row: &LeftoverRow) -> Result<()> {
        self.ops.push(Op::Leftover(Box::new(row.clone())));
        Ok(())
    }

    /// Forgets this site's `path`.
    pub fn remove(&mut self, path: &Path) -> Result<()> {
        self.ops.push(Op::Remove(path_bytes(path).into_owned()));
        Ok(())
    }

    /// Drops the embeddings no site's file has any more (when the batch is written).
    pub fn collect_garbage(&mut self) -> Result<()> {
        self.ops.push(Op::Garbage);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_build_gets_room_for_its_graph_up_to_a_cap() {
        // A million 512-wide rows: a graph of about 1.5 GB, more than a default server's 64 MB.
        let million = build_memory(1_000_000, 512);
        assert!((1 << 30..2 << 30).contains(&million), "{million}");
        assert!(build_memory(2_000_000, 512) > million);
        assert!(build_memory(1_000_000, 768) > million);
        assert_eq!(build_memory(100_000_000, 512), MAX_BUILD_MEMORY);
        assert_eq!(build_memory(0, 512), 0);
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            without_password("postgres://me:secret@db.example:5432/food"),
            "postgres://me:***@db.example:5432/food"
        );
        assert_eq!(
            without_password("postgres://me@db/food"),
            "postgres://me@db/food"
        );
    }
}
