//! The command line: flags parsed once by clap, then each subcommand run against the library.

mod eval;
mod labels;

use crate::cache::{default_root, TextCache};
use crate::checkpoint::{load_preprocess, Checkpoint};
use crate::classify::{Classifier, OpenSet};
use crate::embeddings::StoredEmbeddings;
use crate::labels::{check, LabelSet, Severity, Templates};
use crate::model::Precision;
use crate::output::{write_atomically, Format, Printer};
use crate::pipeline::{
    collect_inputs, recorded_paths, run_batches, BatchOptions, Embedder, InputResult, Shard, Stats,
};
use crate::preprocess::{Fidelity, DEFAULT_MAX_PIXELS};
use crate::registry::Registry;
use crate::source::{offline_from_env, HubOptions, ModelSource};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Zero-shot food photo classification with CLIP models, Korean and English labels.
#[derive(Debug, Parser)]
#[command(name = "foodclip", version, about, max_term_width = 100)]
pub struct Cli {
    /// Model: a registry name (`foodclip models list`), a hub id `owner/name[@revision]`, or a
    /// local directory with config.json, weights, tokenizer.json and preprocessor_config.json.
    /// Default: the registry's default (Korean + English).
    #[arg(long, global = true, env = "FOODCLIP_MODEL")]
    pub model: Option<String>,
    /// Never touch the network: use only files already in the Hugging Face cache
    /// (also HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    pub offline: bool,
    /// No warnings or download progress on stderr (errors are still shown).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Where to run the model.
    #[arg(long, global = true, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Number format of the model: f32 (as the reference); bf16, twice as fast on CPUs with
    /// Intel AMX; or bf16 / f16 on GPUs. Embeddings stay within cosine 0.999 of f32.
    #[arg(long, global = true, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Decode and resize exactly as the reference (full JPEG decode, Pillow's resampling)
    /// instead of the fast path (JPEG DCT scaling, SIMD resize).
    #[arg(long, global = true)]
    pub exact_preprocess: bool,
    /// Worker threads for decoding and the model (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Where label-prompt embeddings are cached (default: the platform cache directory, such as
    /// ~/.cache/foodclip).
    #[arg(long, global = true, env = "FOODCLIP_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write the prompt-embedding cache.
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    /// The CPU (always available).
    Cpu,
    /// The first CUDA GPU (builds with `--features cuda`).
    Cuda,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rank the classes of a label file for each photo.
    Classify(ClassifyArgs),
    /// Measure accuracy on labelled photos: top-1/top-5, per-class scores, confusions.
    Eval(EvalArgs),
    /// Print L2-normalised image embeddings.
    Embed(EmbedArgs),
    /// Write the exact picture the model sees (resized and centre-cropped) for one photo.
    Preview(PreviewArgs),
    /// The registry of known checkpoints.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Inspect and check label files.
    #[command(subcommand)]
    Labels(LabelsCommand),
}

/// Photos to read.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// Photos or folders (searched recursively); `-` reads paths from stdin, one per line.
    pub inputs: Vec<PathBuf>,
    /// Paths on stdin are separated by NUL bytes (as `find -print0` writes them).
    #[arg(long, short = '0')]
    pub null: bool,
    /// Batching and decoding.
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Process only the K-th of N deterministic parts of the input (K from 0), for splitting an
    /// archive across machines.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Write records to this file instead of stdout, each one flushed as it is finished.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// With --output: skip photos already recorded in that file and append the rest.
    #[arg(long, requires = "output")]
    pub resume: bool,
}

/// How photos are batched and decoded.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Photos per model call.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub batch_size: u64,
    /// Refuse images with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

/// `foodclip classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Photos to classify.
    #[command(flatten)]
    pub input: InputArgs,
    /// Label file: one class per line, synonyms after `|`, `#` comments, `[group]` headers.
    #[arg(long, short)]
    pub labels: PathBuf,
    /// Prompt templates.
    #[command(flatten)]
    pub templates: TemplateArgs,
    /// Predictions per photo; 0 for all classes.
    #[arg(long, short = 'k', default_value_t = 5)]
    pub top_k: usize,
    /// Add group probabilities (the sum over each group's classes) to every record; the label
    /// file needs `[group]` headers.
    #[arg(long)]
    pub group_scores: bool,
    /// Answer `unknown` when the best class's probability is below P (see `eval --calibrate`).
    #[arg(long, value_name = "P")]
    pub threshold: Option<f32>,
    /// Answer `unknown` when the best two classes' probabilities are less than M apart.
    #[arg(long, value_name = "M")]
    pub min_margin: Option<f32>,
    /// Embeddings.
    #[command(flatten)]
    pub stored: StoredArgs,
    /// Output format (default: table on a terminal, jsonl otherwise).
    #[arg(long, short, value_enum)]
    pub format: Option<Format>,
}

/// Stored image embeddings, for `classify` and `eval`.
#[derive(Debug, Args)]
pub struct StoredArgs {
    /// Also store the image embeddings, with their paths and the checkpoint's fingerprint, in
    /// FILE (safetensors), to re-score them later with --embeddings.
    #[arg(long, value_name = "FILE")]
    pub save_embeddings: Option<PathBuf>,
    /// Re-score the image embeddings stored in FILE instead of reading photos; refused when
    /// they come from another checkpoint.
    #[arg(long, value_name = "FILE", conflicts_with = "save_embeddings")]
    pub embeddings: Option<PathBuf>,
}

/// `foodclip eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The data set: a folder of class folders (each named by any name of a class; `unknown` for
    /// dishes not in the list), or a CSV/TSV file of `path,label` rows.
    pub dataset: PathBuf,
    /// Label file.
    #[arg(long, short)]
    pub labels: PathBuf,
    /// Prompt templates.
    #[command(flatten)]
    pub templates: TemplateArgs,
    /// Batching and decoding.
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Embeddings.
    #[command(flatten)]
    pub stored: StoredArgs,
    /// Output format: table, json, or csv (one row per class).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write a self-contained HTML report with pictures to DIR/index.html.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print the precision/coverage trade-off of an `unknown` threshold, using the photos in the
    /// data set's `unknown` folder as dishes that are not in the list.
    #[arg(long)]
    pub calibrate: bool,
    /// The precision --calibrate finds a threshold for.
    #[arg(long, default_value_t = 0.9, value_name = "P")]
    pub target_precision: f64,
    /// How many of the most-confused class pairs to list.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub confusions: usize,
}

/// `--template`, shared by the commands that build prompts.
#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// Prompt template with `{}` for the class name, or a file of them (one per line);
    /// repeatable. `'{}'` alone uses the name as written. Default: labels/templates/food.ko.txt
    /// for Hangul names, food.en.txt for the others (built in).
    #[arg(long = "template", short = 't', value_name = "TEMPLATE|FILE")]
    pub templates: Vec<String>,
}

/// `foodclip embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Photos to embed.
    #[command(flatten)]
    pub input: InputArgs,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
}

/// `foodclip preview`.
#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// The photo.
    pub image: PathBuf,
    /// Where to write the picture (PNG, or another format by extension).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

/// `foodclip models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List registered models with their languages and licences.
    List {
        /// Output format (table or json).
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// `foodclip labels ...`.
#[derive(Debug, Subcommand)]
pub enum LabelsCommand {
    /// Report problems in a label file: duplicates, empty names, names the tokenizer cuts, names
    /// in a language the model does not know, and classes the model can hardly tell apart.
    /// Exits 1 when the file has errors.
    Check(LabelsCheckArgs),
    /// Print a label file's groups, classes, names and the final prompts.
    Show(LabelsShowArgs),
}

/// `foodclip labels check`.
#[derive(Debug, Args)]
pub struct LabelsCheckArgs {
    /// The label file.
    pub file: PathBuf,
    /// Prompt templates.
    #[command(flatten)]
    pub templates: TemplateArgs,
    /// How many of the most similar class pairs to list.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Check the file alone, without loading a model (no truncation, language or similarity
    /// checks).
    #[arg(long)]
    pub no_model: bool,
    /// Output format (table or json).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `foodclip labels show`.
#[derive(Debug, Args)]
pub struct LabelsShowArgs {
    /// The label file.
    pub file: PathBuf,
    /// Prompt templates.
    #[command(flatten)]
    pub templates: TemplateArgs,
    /// Output format (table or json).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every input succeeded.
    Success,
    /// Some inputs failed (reported and skipped).
    SomeFailed,
    /// Stopped by Ctrl-C after the records in flight were written.
    Interrupted,
}

/// Stderr messages, honouring `--quiet`.
struct Ui {
    quiet: bool,
}

impl Ui {
    fn warn(&self, msg: &str) {
        if !self.quiet {
            eprintln!("foodclip: warning: {msg}");
        }
    }

    fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("foodclip: {msg}");
        }
    }
}

/// Set by Ctrl-C: finish the batch in flight, then stop.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // A second Ctrl-C stops at once. Failing to install the handler only loses the clean stop.
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    flag
}

/// Runs a parsed command line. An `Err` is a usage or configuration error (exit code 2).
pub fn run(cli: Cli) -> Result<Outcome> {
    let ui = Ui { quiet: cli.quiet };
    let hub = HubOptions {
        offline: cli.offline || offline_from_env(),
        progress: !cli.quiet && io::stderr().is_terminal(),
    };
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // candle's matmuls read RAYON_NUM_THREADS; decoding runs on the same global pool.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot start worker threads")?;
    }
    let registry = Registry::builtin();
    let fidelity = if cli.exact_preprocess {
        Fidelity::Exact
    } else {
        Fidelity::Fast
    };
    // `open_only`: build no tower up front (re-scoring stored embeddings needs none).
    let model = |open_only: bool| -> Result<Checkpoint> {
        let source = ModelSource::resolve(cli.model.as_deref(), &registry)?;
        let device = match cli.device {
            DeviceKind::Cpu => candle_core::Device::Cpu,
            DeviceKind::Cuda => candle_core::Device::new_cuda(0)
                .context("--device cuda: no usable GPU (build with `--features cuda`)")?,
        };
        let loaded = if open_only {
            Checkpoint::open(&source, &hub, &device, cli.precision)
        } else {
            Checkpoint::load_with(&source, &hub, &device, cli.precision)
        };
        loaded.with_context(|| format!("cannot load model {}", source.identity()))
    };
    match &cli.command {
        Command::Classify(args) => {
            let labels = LabelSet::load(&args.labels)?;
            let templates = Templates::from_args(&args.templates.templates)?;
            if args.group_scores && labels.groups.is_empty() {
                bail!(
                    "--group-scores: {} has no [group] header lines",
                    labels.path.display()
                );
            }
            let open_set = open_set(args.threshold, args.min_margin)?;
            let stored = args.stored.load()?;
            let default_format = if args.input.output.is_none() && io::stdout().is_terminal() {
                Format::Table
            } else {
                Format::Jsonl
            };
            let format = args.format.unwrap_or(default_format);
            let listed = stored.as_ref().map(|s| s.paths.clone());
            let mut job = Job::prepare(&args.input, format, listed)?;
            if !labels.groups.is_empty() {
                job.printer = job.printer.with_groups();
            }
            if open_set.is_active() {
                job.printer = job.printer.with_decision();
            }
            let ckpt = model(stored.is_some())?;
            let sink = args.stored.prepare(&cli, stored.as_ref(), &ckpt)?;
            warn_language(&ui, &registry, &ckpt, &labels);
            let classifier = build_classifier(&cli, &ui, &ckpt, &labels, &templates)?;
            let (top_k, group_scores) = (args.top_k, args.group_scores);
            let rows = |e: &candle_core::Tensor| -> Result<Vec<_>> {
                let mut rankings = classifier.predict(e)?;
                for r in &mut rankings {
                    open_set.decide(r);
                    if top_k > 0 {
                        r.predictions.truncate(top_k);
                    }
                    if !group_scores {
                        r.groups.clear();
                    }
                }
                Ok(rankings)
            };
            let embedder = embedder(&ckpt, stored.as_ref(), &args.input.batch, fidelity);
            job.run(embedder, &ui, sink, rows, |printer, path, record| {
                printer.predictions(path, &record)
            })
        }
        Command::Eval(args) => {
            let labels = LabelSet::load(&args.labels)?;
            let templates = Templates::from_args(&args.templates.templates)?;
            let samples = crate::eval::load_dataset(&args.dataset, &labels)?;
            let stored = args.stored.load()?;
            let ckpt = model(stored.is_some())?;
            let sink = args.stored.prepare(&cli, stored.as_ref(), &ckpt)?;
            warn_language(&ui, &registry, &ckpt, &labels);
            let classifier = build_classifier(&cli, &ui, &ckpt, &labels, &templates)?;
            let embedder = embedder(&ckpt, stored.as_ref(), &args.batch, fidelity);
            eval::run(args, &ui, &labels, &classifier, &samples, embedder, sink)
        }
        Command::Embed(args) => {
            let job = Job::prepare(&args.input, args.format, None)?;
            let ckpt = model(false)?;
            let rows = |e: &candle_core::Tensor| Ok(e.to_vec2::<f32>()?);
            let embedder = embedder(&ckpt, None, &args.input.batch, fidelity);
            job.run(embedder, &ui, None, rows, |printer, path, record| {
                printer.embedding(path, &record)
            })
        }
        Command::Preview(args) => {
            let source = ModelSource::resolve(cli.model.as_deref(), &registry)?;
            let preprocess = load_preprocess(&source, &hub)?;
            let seen = match preprocess.load(&args.image, args.max_pixels, fidelity) {
                Ok(img) => img,
                Err(e) => {
                    eprintln!("foodclip: {}: {e:#}", args.image.display());
                    return Ok(Outcome::SomeFailed);
                }
            };
            let format =
                image::ImageFormat::from_path(&args.output).unwrap_or(image::ImageFormat::Png);
            let mut bytes = io::Cursor::new(Vec::new());
            seen.write_to(&mut bytes, format).with_context(|| {
                format!("cannot encode {} as {format:?}", args.output.display())
            })?;
            write_atomically(&args.output, bytes.get_ref())
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            Ok(Outcome::Success)
        }
        Command::Models(ModelsCommand::List { format }) => {
            list_models(&registry, *format)?;
            Ok(Outcome::Success)
        }
        Command::Labels(LabelsCommand::Show(args)) => {
            let set = LabelSet::load(&args.file)?;
            let templates = Templates::from_args(&args.templates.templates)?;
            labels::show(&set, &templates, args.format)?;
            Ok(Outcome::Success)
        }
        Command::Labels(LabelsCommand::Check(args)) => {
            let (set, mut findings) = LabelSet::load_all(&args.file)?;
            let templates = Templates::from_args(&args.templates.templates)?;
            let mut pairs = Vec::new();
            if !args.no_model {
                let ckpt = model(true).map_err(|e| {
                    e.context("the model checks need a model; --no-model checks the file alone")
                })?;
                findings.extend(check::truncated_names(&set, &templates, &ckpt.tokenizer)?);
                if let Some(entry) = registry.for_source(&ckpt.source) {
                    findings.extend(check::language_mismatch(&set, entry, &registry));
                }
                if set.classes.len() > 1 {
                    let classifier = build_classifier(&cli, &ui, &ckpt, &set, &templates)?;
                    pairs = check::confusable_pairs(&classifier, args.pairs)?;
                    findings.extend(check::confusable_findings(&set, &pairs));
                }
            }
            findings.sort_by_key(|f| f.line.unwrap_or(usize::MAX));
            labels::report(&set, &findings, &pairs, args.format)?;
            Ok(if findings.iter().any(|f| f.severity == Severity::Error) {
                Outcome::SomeFailed
            } else {
                Outcome::Success
            })
        }
    }
}

/// The prompt-embedding cache for `ckpt`, unless `--no-cache`.
fn prompt_cache(cli: &Cli, ckpt: &Checkpoint, ui: &Ui) -> Result<Option<TextCache>> {
    if cli.no_cache {
        return Ok(None);
    }
    let Some(root) = cli.cache_dir.clone().or_else(default_root) else {
        ui.warn("this platform has no cache directory; set FOODCLIP_CACHE_DIR to cache label embeddings");
        return Ok(None);
    };
    Ok(Some(TextCache::new(
        &root,
        &ckpt.fingerprint_cached(&root)?,
        ckpt.precision,
    )))
}

/// The checkpoint's fingerprint, remembered in the cache directory unless `--no-cache`.
fn fingerprint(cli: &Cli, ckpt: &Checkpoint) -> Result<String> {
    match cli.cache_dir.clone().or_else(default_root) {
        Some(root) if !cli.no_cache => ckpt.fingerprint_cached(&root),
        _ => ckpt.fingerprint(),
    }
}

/// Embeds the classes of `labels` through the prompt cache, telling the user when prompts had
/// to be encoded.
fn build_classifier(
    cli: &Cli,
    ui: &Ui,
    ckpt: &Checkpoint,
    labels: &LabelSet,
    templates: &Templates,
) -> Result<Classifier> {
    let cache = prompt_cache(cli, ckpt, ui)?;
    let start = Instant::now();
    let classifier = Classifier::new(ckpt, labels, templates, cache.as_ref(), |w| ui.warn(&w))?;
    let stats = classifier.prompt_stats();
    if stats.corrupt > 0 {
        ui.warn(&format!(
            "{} damaged entries in the prompt cache were recomputed and replaced",
            stats.corrupt
        ));
    }
    if let Some(e) = &stats.write_error {
        ui.warn(e);
    }
    if stats.encoded > 0 {
        let kept = cache.map_or(String::new(), |c| {
            format!("; cached in {}", c.dir().display())
        });
        ui.note(&format!(
            "encoded {} label prompts in {:.1} s{kept}",
            stats.encoded,
            start.elapsed().as_secs_f64()
        ));
    }
    Ok(classifier)
}

/// The photos of one classify or embed run and where their records go.
struct Job {
    paths: Vec<String>,
    /// Left out: non-image files in folders and, with --resume, photos already recorded.
    skipped: usize,
    printer: Printer<Box<dyn Write>>,
}

impl Job {
    /// Gathers inputs (or takes the `listed` paths of stored embeddings), applies --shard and
    /// --resume, and opens the output.
    fn prepare(args: &InputArgs, format: Format, listed: Option<Vec<String>>) -> Result<Self> {
        let inputs = match listed {
            Some(paths) if args.inputs.is_empty() => crate::pipeline::Inputs {
                paths,
                not_images: 0,
            },
            Some(_) => bail!("give either photos or --embeddings, not both"),
            None if args.inputs.is_empty() => {
                bail!("no photos given (files, folders, or - for a list on stdin)")
            }
            None => collect_inputs(&args.inputs, args.null, io::stdin().lock())?,
        };
        let mut paths = inputs.paths;
        if let Some(shard) = args.shard {
            paths.retain(|p| shard.contains(p));
        }
        let mut skipped = inputs.not_images;
        let mut continuing = false;
        let out: Box<dyn Write> = match &args.output {
            None => Box::new(io::stdout().lock()),
            Some(file) => {
                if args.resume {
                    let separator = match format {
                        Format::Jsonl => None,
                        Format::Csv => Some(','),
                        Format::Tsv => Some('\t'),
                        _ => bail!("--resume needs a line format: --format jsonl, csv or tsv"),
                    };
                    let done = recorded_paths(file, separator)?;
                    let before = paths.len();
                    paths.retain(|p| !done.contains(p));
                    skipped += before - paths.len();
                    continuing = !done.is_empty();
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(args.resume)
                    .write(true)
                    .truncate(!args.resume)
                    .open(file)
                    .with_context(|| format!("cannot open --output {}", file.display()))?;
                Box::new(io::BufWriter::new(f))
            }
        };
        let printer = if continuing {
            Printer::continuing(out, format)
        } else {
            Printer::new(out, format)
        };
        Ok(Self {
            paths,
            skipped,
            printer,
        })
    }

    /// Runs the batches: `rows` turns a batch's embeddings into one result per decoded photo,
    /// `print` writes each photo's record in input order; then the summary. Returns the outcome.
    fn run<T>(
        mut self,
        embedder: Embedder,
        ui: &Ui,
        mut sink: Option<EmbeddingSink>,
        rows: impl Fn(&candle_core::Tensor) -> Result<Vec<T>>,
        mut print: impl FnMut(&mut Printer<Box<dyn Write>>, &str, Result<T, String>) -> io::Result<()>,
    ) -> Result<Outcome> {
        let interrupted = interrupt_flag();
        let progress = progress_bar(ui, self.paths.len());
        let printer = &mut self.printer;
        let stats = run_batches(
            embedder,
            &self.paths,
            &interrupted,
            |emb, paths, results| {
                report_failures(&progress, paths, &results);
                if let Some(sink) = &mut sink {
                    sink.add(emb, paths, &results)?;
                }
                let mut rows = match emb {
                    Some(e) => rows(e)?,
                    None => Vec::new(),
                }
                .into_iter();
                for (path, r) in paths.iter().zip(results) {
                    let record = r.map(|()| rows.next().expect("one row per decoded photo"));
                    print(printer, path, record)?;
                }
                progress.inc(paths.len() as u64);
                Ok(())
            },
        )?;
        progress.finish_and_clear();
        if let Some(sink) = sink {
            sink.save()?;
        }
        match printer.finish() {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                return Err(anyhow::Error::new(e).context("cannot write output"))
            }
            _ => {}
        }
        let interrupted = interrupted.load(Ordering::SeqCst);
        // A closed pipe is a normal end, as in ripgrep: nothing more to say.
        if !ui.quiet && !stats.output_closed {
            summary(&stats, self.skipped, interrupted);
        }
        Ok(if interrupted {
            Outcome::Interrupted
        } else if stats.failed > 0 {
            Outcome::SomeFailed
        } else {
            Outcome::Success
        })
    }
}

/// A progress bar over `len` photos on stderr, when stderr is a terminal and not `--quiet`.
fn progress_bar(ui: &Ui, len: usize) -> ProgressBar {
    if ui.quiet || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} photos  {per_sec}  ETA {eta}")
            .expect("valid template"),
    );
    bar
}

/// `foodclip: PATH: error` on stderr for each failed photo of a batch.
fn report_failures(progress: &ProgressBar, paths: &[String], results: &[InputResult]) {
    for (path, r) in paths.iter().zip(results) {
        if let Err(e) = r {
            progress.suspend(|| eprintln!("foodclip: {path}: {e}"));
        }
    }
}

/// Image embeddings gathered as they are made, for `--save-embeddings`.
struct EmbeddingSink {
    file: PathBuf,
    stored: StoredEmbeddings,
}

impl EmbeddingSink {
    fn new(file: &Path, ckpt: &Checkpoint, fingerprint: String) -> Self {
        Self {
            file: file.to_path_buf(),
            stored: StoredEmbeddings {
                checkpoint: fingerprint,
                paths: Vec::new(),
                dim: ckpt.config.projection_dim,
                values: Vec::new(),
            },
        }
    }

    /// Keeps the rows of one batch.
    fn add(
        &mut self,
        emb: Option<&candle_core::Tensor>,
        paths: &[String],
        results: &[InputResult],
    ) -> Result<()> {
        if let Some(e) = emb {
            self.stored
                .values
                .extend(e.flatten_all()?.to_vec1::<f32>()?);
        }
        let ok = paths.iter().zip(results).filter(|(_, r)| r.is_ok());
        self.stored.paths.extend(ok.map(|(p, _)| p.clone()));
        Ok(())
    }

    /// Writes the file (atomically), even after Ctrl-C: every finished photo is kept.
    fn save(self) -> Result<()> {
        self.stored.save(&self.file)
    }
}

/// Checks `--threshold` and `--min-margin` (probabilities, in [0, 1]).
fn open_set(threshold: Option<f32>, min_margin: Option<f32>) -> Result<OpenSet> {
    for (flag, v) in [("--threshold", threshold), ("--min-margin", min_margin)] {
        if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
            bail!("{flag} is a probability: give a value from 0 to 1");
        }
    }
    Ok(OpenSet {
        threshold,
        min_margin,
    })
}

/// Where image embeddings come from: stored ones, or photos run through `ckpt`.
fn embedder<'a>(
    ckpt: &'a Checkpoint,
    stored: Option<&'a StoredEmbeddings>,
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
        },
    }
}

impl StoredArgs {
    /// The embeddings of `--embeddings`, if given.
    fn load(&self) -> Result<Option<StoredEmbeddings>> {
        self.embeddings
            .as_deref()
            .map(StoredEmbeddings::load)
            .transpose()
    }

    /// Refuses `stored` embeddings made by another checkpoint than `ckpt`, and opens the
    /// `--save-embeddings` sink.
    fn prepare(
        &self,
        cli: &Cli,
        stored: Option<&StoredEmbeddings>,
        ckpt: &Checkpoint,
    ) -> Result<Option<EmbeddingSink>> {
        if let (Some(stored), Some(file)) = (stored, &self.embeddings) {
            let ours = fingerprint(cli, ckpt)?;
            if stored.checkpoint != ours {
                bail!(
                    "{} holds embeddings from checkpoint {}, but the model is {} ({ours}); pass the --model that made them, or embed the photos again",
                    file.display(),
                    stored.checkpoint,
                    ckpt.identity
                );
            }
        }
        Ok(match &self.save_embeddings {
            Some(file) => Some(EmbeddingSink::new(file, ckpt, fingerprint(cli, ckpt)?)),
            None => None,
        })
    }
}

/// Warns once when the labels use a language the model's registry entry lacks.
fn warn_language(ui: &Ui, registry: &Registry, ckpt: &Checkpoint, labels: &LabelSet) {
    let entry = registry.for_source(&ckpt.source);
    if let Some(f) = entry.and_then(|e| check::language_mismatch(labels, e, registry)) {
        ui.warn(&f.located(&labels.path));
    }
}

fn summary(stats: &Stats, skipped: usize, interrupted: bool) {
    let secs = stats.elapsed.as_secs_f64();
    let rate = (stats.done + stats.failed) as f64 / secs.max(1e-9);
    let stopped = if interrupted { ", interrupted" } else { "" };
    eprintln!(
        "foodclip: {} done, {} failed, {} skipped in {secs:.1} s ({rate:.2} photos/s){stopped}",
        stats.done, stats.failed, skipped
    );
}

fn list_models(registry: &Registry, format: Format) -> Result<()> {
    let mut out = io::stdout().lock();
    let r = match format {
        Format::Json | Format::Jsonl => write_json(&mut out, &registry.entries),
        _ => (|| {
            writeln!(
                out,
                "{:<28} {:<36} {:<8} {:<8} NOTES",
                "NAME", "HUB ID", "LANGS", "LICENSE"
            )?;
            for e in &registry.entries {
                let name = if e.default {
                    format!("{} (default)", e.name)
                } else {
                    e.name.clone()
                };
                writeln!(
                    out,
                    "{:<28} {:<36} {:<8} {:<8} {}",
                    name,
                    e.hub_id,
                    e.languages.join(","),
                    e.license,
                    e.notes
                )?;
            }
            Ok(())
        })(),
    };
    quiet_on_closed_pipe(r)
}

/// Pretty-printed JSON and a newline.
fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// A closed pipe (`| head`) is a normal end, as in ripgrep; other write errors are errors.
fn quiet_on_closed_pipe(r: io::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Entry point for the binary: parses arguments, runs, prints one-line errors, and returns the
/// exit code (0 all good, 1 some inputs failed, 2 usage or configuration error).
pub fn main() -> std::process::ExitCode {
    // candle attaches a backtrace to its errors whenever RUST_BACKTRACE is set; errors here are
    // one line. Panics keep their backtraces, and RUST_LIB_BACKTRACE=1 restores the rest.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(Outcome::Success) => std::process::ExitCode::SUCCESS,
        Ok(Outcome::SomeFailed) => std::process::ExitCode::from(1),
        Ok(Outcome::Interrupted) => std::process::ExitCode::from(130),
        Err(e) => {
            eprintln!("foodclip: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn model_flag_is_global() {
        let cli = Cli::try_parse_from([
            "foodclip", "preview", "a.jpg", "-o", "b.png", "--model", "x/y",
        ])
        .unwrap();
        assert_eq!(cli.model.as_deref(), Some("x/y"));
        let cli = Cli::try_parse_from(["foodclip", "--model", "x/y", "models", "list"]).unwrap();
        assert_eq!(cli.model.as_deref(), Some("x/y"));
    }
}
