//! One run over many photos, shared by `classify`, `embed` and `eval`: where the embeddings come
//! from, the inputs and their output file (with `--resume`), the one emit loop, and the
//! `--save-embeddings` sink.

use super::context::Context;
use super::flags::{BatchArgs, InputArgs, RegionArgs, StoredArgs};
use super::ui::{interrupt_flag, quiet_on_closed_pipe, Ui};
use super::Outcome;
use crate::checkpoint::Checkpoint;
use crate::embeddings::StoredEmbeddings;
use crate::fsutil::check_writable;
use crate::inputs::{collect_inputs, recorded_paths, Inputs, Shard, IMAGE_EXTENSIONS};
use crate::output::{Layout, Printer};
use crate::pipeline::{run_batches, BatchOptions, Embedder, Items, Stats};
use crate::preprocess::Fidelity;
use crate::regions::{Region, Regions};
use crate::store::{Kind, Row, Store};
use crate::text::count;
use anyhow::{bail, Context as _, Result};
use candle_core::Tensor;
use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// One record of a photo as a command sees it: its region (`None` for the whole photo) and its
/// row or error.
pub(super) type Record<T> = (Option<Region>, Result<T, String>);

/// Embeds (or looks up) `paths` batch by batch, with the progress bar, per-record error and
/// warning lines and the `--save-embeddings` sink, handing each batch to `on_batch`. The one
/// emit loop. `total`: how many photos the progress bar counts to, if known. Returns the run's
/// statistics and whether Ctrl-C stopped it.
pub(super) fn run_photos(
    embedder: Embedder,
    paths: &[PathBuf],
    total: Option<usize>,
    ui: &Ui,
    mut sink: Option<EmbeddingSink>,
    mut on_batch: impl FnMut(Option<&Tensor>, &[PathBuf], Items) -> Result<()>,
) -> Result<(Stats, bool)> {
    let interrupted = interrupt_flag();
    let progress = ui.progress_bar(total, "photos");
    let stats = run_batches(embedder, paths, &interrupted, |emb, chunk, items| {
        ui.report(&progress, chunk, &items);
        if let Some(sink) = &mut sink {
            sink.add(emb, chunk, &items)
                .context("cannot keep the embeddings for --save-embeddings")?;
        }
        // The bar steps aside while the batch's records print: they may go to the same terminal.
        progress.suspend(|| on_batch(emb, chunk, items))?;
        progress.inc(chunk.len() as u64);
        Ok(())
    })?;
    progress.finish_and_clear();
    if let Some(sink) = sink {
        sink.save()?;
    }
    Ok((stats, interrupted.load(Ordering::SeqCst)))
}

/// The photos of one classify or embed run and where their records go.
pub(super) struct Job {
    paths: Vec<PathBuf>,
    /// How many photos the run reads, if known before (not for a streamed store, whose
    /// photos `keep` picks as they come).
    total: Option<usize>,
    keep: Option<Keep>,
    /// Left out: non-image files in folders and, with --resume, photos already recorded.
    skipped: usize,
    /// With regions from a file: how many it lists for photos not given (ignored).
    ignored: Option<usize>,
    /// Folders that could not be read (reported already): failures of the run.
    unreadable: usize,
    printer: Printer<Box<dyn Write>>,
}

/// Where a run's photos come from.
pub(super) enum Listed {
    /// The files, folders or list given on the command line.
    Inputs,
    /// These photos (an `--embeddings` file's).
    Photos(Vec<PathBuf>),
    /// Every photo of a store, streamed (`--db`).
    Streamed,
}

/// Which photos of a streamed store a run takes: those of its `--shard`, less those that
/// `--resume` finds recorded.
#[derive(Default)]
pub(super) struct Keep {
    shard: Option<Shard>,
    done: HashSet<PathBuf>,
}

impl Keep {
    /// Whether the run takes the photo at `path`.
    pub fn keeps(&self, path: &Path) -> bool {
        self.shard.is_none_or(|s| s.contains(path)) && !self.done.contains(path)
    }
}

impl Job {
    /// Gathers inputs (or takes the `listed` paths of stored embeddings), applies --shard and
    /// --resume, and opens the output. `regions`: where the photos' regions come from. Inputs
    /// that hold no photo at all get a warning on `ui`.
    pub fn prepare(
        args: &InputArgs,
        layout: Layout,
        listed: Listed,
        regions: Option<&Regions>,
        ui: &Ui,
    ) -> Result<Self> {
        let streamed = matches!(listed, Listed::Streamed);
        let inputs = match listed {
            Listed::Inputs if args.inputs.is_empty() => {
                bail!("no photos given (files, folders, or - for a list on stdin)")
            }
            Listed::Inputs => {
                let found = collect_inputs(&args.inputs, args.null, io::stdin().lock())?;
                if found.paths.is_empty() && found.unreadable.is_empty() {
                    ui.warn(&no_photos(found.not_images));
                }
                found
            }
            _ if !args.inputs.is_empty() => {
                bail!("give either photos or stored embeddings (--embeddings, --db), not both")
            }
            Listed::Photos(paths) => Inputs {
                paths,
                ..Inputs::default()
            },
            Listed::Streamed => Inputs::default(),
        };
        // A folder that cannot be read is reported now and counted as failed; the rest run.
        for (dir, why) in &inputs.unreadable {
            eprintln!(
                "foodclip: {}: cannot read this folder: {why}",
                dir.display()
            );
        }
        let mut paths = inputs.paths;
        let ignored = regions.filter(|_| !streamed).map(|r| r.unmatched(&paths));
        if let Some(shard) = args.shard {
            paths.retain(|p| shard.contains(p));
        }
        let mut skipped = inputs.not_images;
        let mut continuing = false;
        let mut done = HashSet::new();
        let out: Box<dyn Write> = match &args.output {
            None => Box::new(io::stdout().lock()),
            Some(file) => {
                if args.resume {
                    done = recorded_paths(file, |whole, partial| layout.recorded(whole, partial))?;
                    let before = paths.len();
                    paths.retain(|p| !done.contains(p));
                    skipped += before - paths.len();
                    // What is left holds a CSV/TSV header already (checked), maybe no record.
                    continuing = std::fs::metadata(file).is_ok_and(|m| m.len() > 0);
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(args.resume)
                    .write(true)
                    .truncate(!args.resume)
                    .open(file)
                    .with_context(|| format!("cannot open --output {}", file.display()))?;
                // Room for a photo's records: they reach the file in one write (`--resume`).
                Box::new(io::BufWriter::with_capacity(1 << 20, f))
            }
        };
        let printer = if continuing {
            Printer::continuing(out, layout)
        } else {
            Printer::new(out, layout)
        };
        Ok(Self {
            total: (!streamed).then_some(paths.len()),
            paths,
            keep: streamed.then(|| Keep {
                shard: args.shard,
                done,
            }),
            skipped,
            ignored,
            unreadable: inputs.unreadable.len(),
            printer,
        })
    }

    /// Which of a streamed store's photos the run takes (once; see [`Listed::Streamed`]).
    pub fn keep(&mut self) -> Keep {
        self.keep.take().unwrap_or_default()
    }

    /// Sets each class's COCO category id, for `--format coco`.
    pub fn with_categories(self, categories: Vec<Option<u64>>) -> Self {
        Self {
            printer: self.printer.with_categories(categories),
            ..self
        }
    }

    /// Runs the batches: `rows` turns a batch's embeddings into one result per embedded
    /// record, `print` writes each photo's records in input order (then they are flushed
    /// together); then the summary. Returns the outcome.
    pub fn run<T>(
        mut self,
        embedder: Embedder,
        ui: &Ui,
        sink: Option<EmbeddingSink>,
        rows: impl Fn(&Tensor) -> Result<Vec<T>>,
        mut print: impl FnMut(&mut Printer<Box<dyn Write>>, &Path, Vec<Record<T>>) -> Result<()>,
    ) -> Result<Outcome> {
        let printer = &mut self.printer;
        let (mut stats, interrupted) = run_photos(
            embedder,
            &self.paths,
            self.total,
            ui,
            sink,
            |emb, paths, items| {
                let mut rows = match emb {
                    Some(e) => rows(e)?,
                    None => Vec::new(),
                }
                .into_iter();
                for (path, photo) in paths.iter().zip(items) {
                    let records = photo
                        .into_iter()
                        .map(|i| {
                            let row = i.result.map(|()| rows.next().expect("one row per record"));
                            (i.region, row)
                        })
                        .collect();
                    print(printer, path, records)?;
                    printer.flush().context("cannot write output")?;
                }
                Ok(())
            },
        )?;
        quiet_on_closed_pipe(self.printer.finish().map_err(anyhow::Error::new))?;
        let skipped = self.skipped + stats.skipped;
        stats.failed += self.unreadable;
        ui.summary(&stats, skipped, self.ignored, interrupted);
        Ok(Outcome::of(&stats, interrupted))
    }
}

/// The warning for inputs that hold no photo: which files folders are searched for.
fn no_photos(not_images: usize) -> String {
    let others = match not_images {
        0 => String::new(),
        n => format!(" ({} left out)", count(n, "other file", "other files")),
    };
    let extensions: Vec<String> = IMAGE_EXTENSIONS.iter().map(|e| format!(".{e}")).collect();
    format!(
        "no photos found{others}: folders are searched for files ending in {}",
        extensions.join(" ")
    )
}

impl RegionArgs {
    /// What the regions come from, for an index's rows: empty for whole photos, else the
    /// source's kind and a hash of its content (the same layout in another file is the same).
    pub(super) fn source_id(&self) -> Result<String> {
        let hash = |bytes: &[u8]| blake3::hash(bytes).to_hex()[..16].to_string();
        let read =
            |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        if self.is_auto() {
            let a = crate::regions::auto::AutoSettings::default();
            return Ok(format!(
                "auto:std{}-scale{}-min{}",
                a.std, a.scale, a.min_area
            ));
        }
        Ok(match (&self.regions, &self.layout, self.grid) {
            (Some(p), _, _) if p.is_dir() => {
                let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                files.sort();
                let mut all = Vec::new();
                for f in files {
                    all.extend(crate::fsutil::path_bytes(&f).iter());
                    all.extend(read(&f)?);
                }
                format!("yolo:{}", hash(&all))
            }
            (Some(p), _, _) => format!("regions:{}", hash(&read(p)?)),
            (_, Some(p), _) => format!("layout:{}", hash(&read(p)?)),
            (_, _, Some(g)) => format!("grid:{}x{}", g.rows, g.cols),
            _ => String::new(),
        })
    }

    /// Whether `--regions auto` was asked for.
    pub(super) fn is_auto(&self) -> bool {
        self.regions.as_deref() == Some(Path::new("auto"))
    }

    /// The regions asked for, if any; `--regions auto` is refused (see [`Self::load_auto`]).
    pub(super) fn load(&self) -> Result<Option<Regions>> {
        if self.is_auto() {
            bail!(
                "--regions auto finds dishes from a label file: classify, eval, adapt, leftovers, preview \
                 and serve take it; give this command a box file, --layout or --grid (a file named auto: ./auto)"
            );
        }
        self.load_files()
    }

    /// The regions asked for, `--regions auto` included (its finder is bound once the model
    /// is loaded: [`super::auto::bind`]).
    pub(super) fn load_auto(&self) -> Result<Option<Regions>> {
        if self.is_auto() {
            return Ok(Some(Regions::auto()));
        }
        self.load_files()
    }

    fn load_files(&self) -> Result<Option<Regions>> {
        Ok(match (&self.regions, &self.layout, self.grid) {
            (Some(file), _, _) => Some(Regions::from_file(file)?),
            (_, Some(file), _) => Some(Regions::layout(file)?),
            (_, _, Some(grid)) => Some(Regions::grid(grid)),
            _ => None,
        })
    }
}

/// Image embeddings gathered as they are made, for `--save-embeddings`.
pub(super) struct EmbeddingSink {
    file: PathBuf,
    stored: StoredEmbeddings,
}

impl EmbeddingSink {
    /// Keeps the rows of one batch, with their regions.
    fn add(&mut self, emb: Option<&Tensor>, paths: &[PathBuf], items: &Items) -> Result<()> {
        if let Some(e) = emb {
            self.stored
                .values
                .extend(e.flatten_all()?.to_vec1::<f32>()?);
        }
        for (path, photo) in paths.iter().zip(items) {
            for item in photo.iter().filter(|i| i.result.is_ok()) {
                self.stored.paths.push(path.clone());
                self.stored.regions.push(item.region.clone());
            }
        }
        Ok(())
    }

    /// Writes the file (atomically), even after Ctrl-C: every finished photo is kept.
    fn save(mut self) -> Result<()> {
        if self.stored.regions.iter().all(Option::is_none) {
            self.stored.regions.clear();
        }
        self.stored.save(&self.file)
    }
}

/// Where image embeddings come from: stored ones (with their regions), or photos (or their
/// `regions`) run through `ckpt`.
pub(super) fn embedder<'a>(
    ckpt: &'a Checkpoint,
    stored: Option<&'a StoredEmbeddings>,
    regions: Option<&'a Regions>,
    batch: &BatchArgs,
    fidelity: Fidelity,
) -> Embedder<'a> {
    let batch_size = batch.batch_size as usize;
    match stored {
        Some(stored) => Embedder::Stored {
            stored,
            batch_size,
            device: &ckpt.device,
        },
        None => Embedder::Photos {
            ckpt,
            options: BatchOptions {
                batch_size,
                max_pixels: batch.max_pixels,
                fidelity,
            },
            regions,
        },
    }
}

/// Stored image embeddings to score instead of photos.
pub(super) enum Stored {
    /// Those of an `--embeddings` file, read whole.
    File(StoredEmbeddings),
    /// The rows of one kind in a `--db` store, read as they are scored.
    Db(DbRows),
}

/// The rows of one kind (and site) in an open store.
pub(super) struct DbRows {
    store: Store,
    kind: Kind,
    site: Option<String>,
    dim: usize,
}

impl Stored {
    /// The fingerprint of the checkpoint that made them.
    pub fn checkpoint(&self) -> &str {
        match self {
            Self::File(s) => &s.checkpoint,
            Self::Db(db) => &db.kind.checkpoint,
        }
    }

    /// Whether they are regions' embeddings.
    pub fn by_regions(&self) -> bool {
        match self {
            Self::File(s) => !s.regions.is_empty(),
            Self::Db(db) => !db.kind.source.is_empty(),
        }
    }

    /// Those of the photos `wanted` takes, read whole (a data set's, for `eval`).
    pub fn of_photos(self, wanted: impl Fn(&Path) -> bool) -> Result<StoredEmbeddings> {
        let mut db = match self {
            Self::File(s) => return Ok(s),
            Self::Db(db) => db,
        };
        let mut stored = StoredEmbeddings {
            checkpoint: db.kind.checkpoint.clone(),
            paths: Vec::new(),
            regions: Vec::new(),
            dim: db.dim,
            values: Vec::new(),
        };
        db.each_row(&mut |row| {
            if wanted(&row.path) {
                stored.paths.push(row.path);
                stored.values.extend(row.vector);
                stored.regions.push(row.region);
            }
            Ok(())
        })?;
        if stored.regions.iter().all(Option::is_none) {
            stored.regions.clear();
        }
        Ok(stored)
    }
}

impl DbRows {
    /// Calls `f` with each row, in the store's order; a row of another width than the
    /// model's is an error.
    fn each_row(&mut self, f: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
        let name = self.store.describe();
        let dim = self.dim;
        self.store
            .each_row(&self.kind, self.site.as_deref(), |row| {
                if row.vector.len() != dim {
                    bail!(
                        "{name} holds embeddings of another width ({}, the model's: {dim})",
                        row.vector.len()
                    );
                }
                f(row)
            })
    }

    /// Every photo of the store that `keep` takes, streamed (`classify --db`).
    pub fn embedder<'a>(
        &'a mut self,
        ckpt: &'a Checkpoint,
        batch: &BatchArgs,
        keep: Keep,
    ) -> Embedder<'a> {
        Embedder::Streamed {
            rows: Box::new(move |f| self.each_row(f)),
            keep: Box::new(move |p| keep.keeps(p)),
            batch_size: batch.batch_size as usize,
            device: &ckpt.device,
        }
    }
}

impl StoredArgs {
    /// Whether stored embeddings are asked for (`--embeddings` or `--db`).
    pub(super) fn is_given(&self) -> bool {
        self.embeddings.is_some() || self.db.is_some()
    }

    /// The embeddings of `--embeddings` or `--db`, if given. Those of `--embeddings` bring
    /// their regions, so `regions` (asked for on the command line) must be `None` then; for
    /// `--db`, `asked` picks the index's rows (whole photos, or the regions of that source).
    pub(super) fn load(
        &self,
        cx: &Context,
        asked: &RegionArgs,
        regions: Option<&Regions>,
    ) -> Result<Option<Stored>> {
        if let Some(db) = &self.db {
            let ckpt = cx.model(true)?;
            let kind = cx.index_kind(&ckpt, asked)?;
            let mut store = cx.store(db, false)?;
            if !store.holds(&kind)? {
                bail!(
                    "{} holds no embeddings of this model with these settings ({}, regions: {}); \
                     run foodclip index with the same --model, --precision, --exact-preprocess \
                     and region flags",
                    db.display(),
                    kind.mode,
                    if kind.source.is_empty() {
                        "none"
                    } else {
                        &kind.source
                    }
                );
            }
            return Ok(Some(Stored::Db(DbRows {
                store,
                kind,
                site: cx.site.clone(),
                dim: ckpt.config.projection_dim,
            })));
        }
        if self.embeddings.is_some() && regions.is_some() {
            bail!("--embeddings brings the regions it was made with; leave out --regions, --layout and --grid");
        }
        let file = self.embeddings.as_deref().map(StoredEmbeddings::load);
        Ok(file.transpose()?.map(Stored::File))
    }

    /// Refuses stored embeddings made by another checkpoint (`made_by`, their fingerprint)
    /// than `ckpt`, and opens the `--save-embeddings` sink.
    pub(super) fn prepare(
        &self,
        cx: &Context,
        made_by: Option<&str>,
        ckpt: &Checkpoint,
    ) -> Result<Option<EmbeddingSink>> {
        if let (Some(made_by), Some(file)) =
            (made_by, self.embeddings.as_ref().or(self.db.as_ref()))
        {
            let ours = cx.fingerprint(ckpt)?;
            if made_by != ours {
                bail!(
                    "{} holds embeddings from checkpoint {made_by}, but the model is {} ({ours}); pass the --model that made them, or embed the photos again",
                    file.display(),
                    ckpt.identity
                );
            }
        }
        let Some(file) = &self.save_embeddings else {
            return Ok(None);
        };
        check_writable("--save-embeddings", file)?;
        Ok(Some(EmbeddingSink {
            file: file.clone(),
            stored: StoredEmbeddings {
                checkpoint: cx.fingerprint(ckpt)?,
                paths: Vec::new(),
                regions: Vec::new(),
                dim: ckpt.config.projection_dim,
                values: Vec::new(),
            },
        }))
    }
}

impl StoredEmbeddings {
    /// Each stored photo once, in the file's order (a photo has a row per region).
    pub(super) fn photos(&self) -> Vec<PathBuf> {
        let mut seen = std::collections::HashSet::new();
        let unique = self.paths.iter().filter(|p| seen.insert(p.as_path()));
        unique.cloned().collect()
    }
}
