//! `foodclip index`: embed an archive into its SQLite index, incrementally (see
//! [`crate::index`]), or export the index for numpy and faiss.

use super::context::Context;
use super::flags::IndexArgs;
use super::job::{embedder, run_photos};
use super::Outcome;
use crate::fsutil::{write_atomically, PathJson};
use crate::inputs::collect_inputs;
use crate::pipeline::embedding_rows;
use crate::store::{content_hash, is_postgres, npy, FileState, Kind};
use crate::text::count;
use anyhow::{bail, Context as _, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub(super) fn run(cx: &Context, args: &IndexArgs) -> Result<Outcome> {
    if let Some(dir) = &args.export {
        return export(cx, args, dir);
    }
    if let Some(url) = &args.copy_to {
        return copy_to(cx, args, url);
    }
    // Absolute paths: the index means the same from any working directory.
    let roots: Vec<PathBuf> = args
        .dirs
        .iter()
        .map(|d| std::fs::canonicalize(d).with_context(|| format!("cannot read {}", d.display())))
        .collect::<Result<_>>()?;
    let db = database(args, &roots)?;
    // Listed before the store opens: a folder that cannot be read leaves no store behind.
    let paths = collect_inputs(&roots, false, std::io::empty())?
        .complete()?
        .paths;
    let mut index = cx.store(&db, true)?;
    let regions = args.regions.load()?;
    let ckpt = cx.model(false)?;
    let kind = cx.index_kind(&ckpt, &args.regions)?;
    index.prepare(&kind, ckpt.config.projection_dim)?;

    // What each photo needs: nothing (unchanged), its file row (moved, or touched), or the model.
    let (mut unchanged, mut reused, mut failed_reads) = (0, 0, 0);
    let mut moved = Vec::new();
    let mut todo: Vec<(PathBuf, FileState, Vec<u8>)> = Vec::new();
    for path in &paths {
        let found = FileState::of(path).and_then(|state| {
            let (hash, same) = match index.file(path)? {
                Some((known, hash)) if known == state => (hash, true),
                _ => (content_hash(path)?, false),
            };
            Ok((state, hash, same))
        });
        let (state, hash, same) = match found {
            Ok(f) => f,
            Err(e) => {
                eprintln!("foodclip: {}: {e:#}", path.display());
                failed_reads += 1;
                continue;
            }
        };
        match (index.has(&hash, &kind)?, same) {
            (true, true) => unchanged += 1,
            (true, false) => {
                reused += 1;
                moved.push((path.clone(), state, hash));
            }
            (false, _) => todo.push((path.clone(), state, hash)),
        }
    }
    index.batch(|b| {
        moved
            .iter()
            .try_for_each(|(p, state, hash)| b.file(p, state, hash))
    })?;
    // Files gone from the folders indexed now.
    let present: HashSet<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let mut gone = Vec::new();
    for root in &roots {
        gone.extend(
            index
                .paths_under(root)?
                .into_iter()
                .filter(|p| !present.contains(p.as_path())),
        );
    }
    let removed = gone.len();
    index.batch(|b| {
        gone.iter().try_for_each(|p| b.remove(p))?;
        b.collect_garbage()
    })?;

    // The rest through the model, one transaction per batch.
    let todo_paths: Vec<PathBuf> = todo.iter().map(|(p, ..)| p.clone()).collect();
    let known: HashMap<&Path, (&FileState, &[u8])> = todo
        .iter()
        .map(|(p, s, h)| (p.as_path(), (s, h.as_slice())))
        .collect();
    let embedder = embedder(&ckpt, None, regions.as_ref(), &args.batch, cx.fidelity);
    let (stats, interrupted) = run_photos(
        embedder,
        &todo_paths,
        Some(todo_paths.len()),
        &cx.ui,
        None,
        |emb, chunk, items| {
            let mut rows = embedding_rows(emb)?;
            index.batch(|b| {
                for (path, photo) in chunk.iter().zip(items) {
                    let (state, hash) = known[path.as_path()];
                    b.file(path, state, hash)?;
                    for item in photo {
                        if item.result.is_ok() {
                            let row = rows.next().expect("one row per record");
                            let idx = item.region.as_ref().map_or(0, |r| r.index);
                            b.embedding(hash, &kind, idx, item.region.as_ref(), &row)?;
                        }
                    }
                }
                Ok(())
            })
        },
    )?;
    cx.ui.summary(&stats, 0, None, interrupted);
    cx.ui.note(&format!(
        "{}: {}: {unchanged} unchanged, {reused} reused by content (moved or touched), \
         {} embedded, {removed} removed{}",
        index.describe(),
        count(paths.len(), "photo", "photos"),
        stats.photos_done,
        if failed_reads > 0 {
            format!(", {failed_reads} unreadable")
        } else {
            String::new()
        }
    ));
    let mut outcome = Outcome::of(&stats, interrupted);
    if failed_reads > 0 && outcome == Outcome::Success {
        outcome = Outcome::SomeFailed;
    }
    Ok(outcome)
}

/// `--db`, or the single folder itself: its index is `DIR/.foodclip/index.sqlite` (made when the
/// store opens).
fn database(args: &IndexArgs, roots: &[PathBuf]) -> Result<PathBuf> {
    if let Some(db) = &args.db {
        return Ok(db.clone());
    }
    let [root] = roots else {
        bail!("several folders share one index: give --db FILE");
    };
    if !root.is_dir() {
        bail!("{} is not a folder: give --db FILE", root.display());
    }
    Ok(root.clone())
}

/// `--export DIR`: `img_emb/img_emb_0.npy`, `paths.txt` and `metadata.jsonl` (path, region).
fn export(cx: &Context, args: &IndexArgs, dir: &Path) -> Result<Outcome> {
    let db = args.db.as_ref().expect("clap: --export requires --db");
    let mut index = cx.store(db, false)?;
    let ckpt = cx.model(true)?;
    let kind: Kind = cx.index_kind(&ckpt, &args.regions)?;
    let rows = index.rows(&kind, cx.site.as_deref())?;
    if rows.is_empty() {
        bail!(
            "{} holds no embeddings of this model with these settings",
            index.describe()
        );
    }
    let dim = rows[0].vector.len();
    let values: Vec<f32> = rows.iter().flat_map(|r| r.vector.iter().copied()).collect();
    std::fs::create_dir_all(dir.join("img_emb"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join("img_emb/img_emb_0.npy");
    write_atomically(&file, &npy(&values, rows.len(), dim))
        .with_context(|| format!("cannot write {}", file.display()))?;
    let mut paths = String::new();
    let mut meta = String::new();
    for r in &rows {
        paths.push_str(&r.path.to_string_lossy());
        paths.push('\n');
        let mut line = serde_json::json!({ "path": PathJson(&r.path) });
        if let Some(region) = &r.region {
            line["region"] = serde_json::json!(region);
        }
        meta.push_str(&line.to_string());
        meta.push('\n');
    }
    write_atomically(&dir.join("paths.txt"), paths.as_bytes())?;
    write_atomically(&dir.join("metadata.jsonl"), meta.as_bytes())?;
    cx.ui.note(&format!(
        "wrote {} embeddings of {dim} values to {}",
        rows.len(),
        dir.display()
    ));
    Ok(Outcome::Success)
}

/// `--copy-to URL`: the SQLite index `--db` copied whole into a shared store.
fn copy_to(cx: &Context, args: &IndexArgs, url: &Path) -> Result<Outcome> {
    let db = args.db.as_ref().expect("clap: --copy-to requires --db");
    if is_postgres(db) || !is_postgres(url) {
        bail!("--copy-to copies a SQLite index (--db FILE) into a shared store: give --copy-to postgres://...");
    }
    let from = crate::store::sqlite::Index::open(db, false)?;
    let mut to = cx.store(url, true)?;
    let c = crate::store::copy(&from, &mut to)?;
    cx.ui.note(&format!(
        "copied {} files, {} embeddings and {} leftovers rows from {} to {} \
         (vector index built in {:.1} s)",
        c.files,
        c.embeddings,
        c.leftovers,
        db.display(),
        to.describe(),
        c.index_build.as_secs_f64()
    ));
    Ok(Outcome::Success)
}
