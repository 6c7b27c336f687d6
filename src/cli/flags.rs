//! The command line's flags, parsed once by clap into plain structs. clap stays in `cli/`:
//! library types offered as choices implement `FromStr`, and `choice` turns them into parsers.

use crate::inputs::Shard;
use crate::model::Precision;
use crate::output::Format;
use crate::preprocess::DEFAULT_MAX_PIXELS;
use crate::regions::Grid;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::str::FromStr;

/// A parser for a library type that implements `FromStr`, offering `names` (shown in `--help`).
fn choice<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    PossibleValuesParser::new(names.iter().copied())
        .try_map(|s| s.parse::<T>().map_err(|e| e.to_string()))
}

/// The parser of `--format`.
fn formats() -> impl TypedValueParser<Value = Format> {
    choice::<Format>(&Format::NAMES)
}

/// Zero-shot food photo classification with CLIP models, Korean and English labels.
#[derive(Debug, Parser)]
#[command(
    name = "foodclip",
    version,
    about,
    max_term_width = 100,
    next_help_heading = "Global options"
)]
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
    /// No warnings, progress or server log on stderr (errors are still shown).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// With a shared PostgreSQL store (`--db postgres://...`): the site whose files this run
    /// writes (default: the host name), or, for search, classify and eval, the only site read.
    #[arg(long, global = true, value_name = "NAME", env = "FOODCLIP_SITE")]
    pub site: Option<String>,
    /// Where to run the model.
    #[arg(long, global = true, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Number format of the model: f32 (as the reference); bf16, on CPUs with bf16 arithmetic
    /// (AMX, AVX-512 BF16; elsewhere it runs f32), or on GPUs; int8, int8 products on the CPU
    /// (AMX, VNNI or AVX2), a speed choice whose embeddings drift further from f32's; auto:
    /// f32 or bf16, whichever this CPU runs faster, measured once and cached. Embeddings stay
    /// within cosine 0.999 of f32.
    #[arg(long, global = true, default_value = "f32", value_parser = choice::<Precision>(&["f32", "bf16", "f16", "int8", "auto"]))]
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
    /// Learn your dishes from a few labelled photos: an adapter for classify and eval.
    Adapt(AdaptArgs),
    /// How much of each dish comes back: served and returned photos of each tray, per dish and
    /// day.
    Leftovers(LeftoversArgs),
    /// Forecast what will come back of each dish of a planned menu, and how much to cook, from
    /// the history `leftovers` recorded; or backtest the forecast on that history.
    Forecast(ForecastArgs),
    /// Embed an archive into a SQLite index, incrementally.
    Index(IndexArgs),
    /// Search an index with text (Korean or English) and photos.
    Search(SearchArgs),
    /// Write the exact picture the model sees (resized and centre-cropped) for one photo.
    Preview(PreviewArgs),
    /// Answer classify and embed requests over HTTP with a warm model, and serve a page to drop
    /// photos on.
    Serve(ServeArgs),
    /// The registry of known checkpoints.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Inspect and check label files.
    #[command(subcommand)]
    Labels(LabelsCommand),
}

/// `foodclip leftovers`.
#[derive(Debug, Args)]
pub struct LeftoversArgs {
    /// A folder of photos of the trays as served, paired with --returned by path below each
    /// folder (the extension may differ) or by file name.
    #[arg(
        long,
        value_name = "DIR",
        requires = "returned",
        conflicts_with = "pairs"
    )]
    pub served: Option<PathBuf>,
    /// A folder of photos of the same trays as returned.
    #[arg(long, value_name = "DIR", requires = "served")]
    pub returned: Option<PathBuf>,
    /// A CSV of `tray,served,returned[,date]` rows instead of two folders (paths relative to
    /// the file).
    #[arg(long, value_name = "FILE", required_unless_present = "served")]
    pub pairs: Option<PathBuf>,
    /// The compartments (without: the whole photo is one).
    #[command(flatten)]
    pub regions: RegionArgs,
    /// The dishes to recognise.
    #[command(flatten)]
    pub classes: ClassArgs,
    /// The day's dish per compartment (TOML: name, dish, optional portion_g and date); the
    /// classifier's answer is still checked against it.
    #[arg(long, value_name = "FILE")]
    pub menu: Option<PathBuf>,
    /// Answer `unknown` for a dish whose probability is below P.
    #[arg(long, value_name = "P")]
    pub threshold: Option<f32>,
    /// A photo of the empty tray taken with the same camera: tells food from tray best.
    #[arg(long, value_name = "PHOTO")]
    pub empty_tray: Option<PathBuf>,
    /// Do not register the returned photo onto the served one (a fixed camera and tray stop).
    #[arg(long)]
    pub no_align: bool,
    /// Known leftover ratios (CSV `tray,compartment,leftover`): report MAE, bias, RMSE and
    /// Pearson r, overall and per dish.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Write the summary per dish and per day (and the accuracy, with --truth) to FILE
    /// (`.json`, `.csv` or `.tsv`).
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Write DIR/index.html: dishes by what comes back, the trend per day, the worst trays.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Also store every record in the store DB (the `index` database: a SQLite file, made if
    /// missing, a folder for its .foodclip/index.sqlite, or a postgres:// URL), one transaction
    /// per tray; measuring a tray again replaces its rows. `forecast --db DB` reads them.
    #[arg(long, value_name = "DB", env = "FOODCLIP_DB")]
    pub db: Option<PathBuf>,
    /// Write records to FILE instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Output format: table, jsonl, json, csv or tsv (default: the one --output's extension
    /// names, else table on a terminal, else jsonl).
    #[arg(long, short, value_parser = formats())]
    pub format: Option<Format>,
    /// Batching.
    #[command(flatten)]
    pub batch: BatchArgs,
}

/// `foodclip forecast`.
#[derive(Debug, Args)]
pub struct ForecastArgs {
    /// What came back before: records of `foodclip leftovers` (JSON Lines, JSON, CSV or TSV,
    /// or its --db store) or a CSV `date,dish,leftover[,trays][,served_g]`. Repeatable.
    #[arg(long, value_name = "FILE", required_unless_present = "db")]
    pub history: Vec<PathBuf>,
    /// The store `leftovers --db DB` keeps its records in (a SQLite file, a folder for its
    /// .foodclip/index.sqlite, or a postgres:// URL; this site's rows), as history (beside any
    /// --history).
    #[arg(long, value_name = "DB", env = "FOODCLIP_DB")]
    pub db: Option<PathBuf>,
    /// Label file: the dishes, their other names, and the `[group]` headers forecasts borrow
    /// strength from.
    #[arg(long, short)]
    pub labels: PathBuf,
    /// The planned menu: CSV `date,dish[,servings][,portion_g]`, several dishes per date.
    #[arg(long, value_name = "FILE", required_unless_present = "backtest")]
    pub menu: Option<PathBuf>,
    /// Cook so that what is eaten is covered on this share of days (with servings and
    /// portion_g in the menu).
    #[arg(long, value_name = "P", default_value_t = 0.9)]
    pub service_level: f64,
    /// Instead of a menu: forecast each of the history's last weeks from the days before it,
    /// and report the errors per dish beside three baselines.
    #[arg(long, conflicts_with = "menu")]
    pub backtest: bool,
    /// Weeks the backtest reports.
    #[arg(long, value_name = "N", default_value_t = 12, value_parser = clap::value_parser!(u16).range(1..))]
    pub weeks: u16,
    /// Write DIR/index.html: the plan's forecasts, and each planned dish's history with the
    /// forecast and its interval drawn after it.
    #[arg(long, value_name = "DIR", conflicts_with = "backtest")]
    pub report: Option<PathBuf>,
    /// Write the rows to FILE (atomically) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Output format: table, jsonl, json, csv or tsv (default: the one --output's extension
    /// names, else table on a terminal, else jsonl).
    #[arg(long, short, value_parser = formats())]
    pub format: Option<Format>,
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
    /// Regions of the photos (trays).
    #[command(flatten)]
    pub regions: RegionArgs,
}

/// Where the regions of each photo come from: one record per region instead of per photo.
#[derive(Debug, Args)]
pub struct RegionArgs {
    /// The boxes of each photo: COCO JSON, CSV/TSV rows `path,x1,y1,x2,y2[,label]` (paths
    /// relative to the file), or a folder of YOLO .txt files named after the photos. Pixels of
    /// the photo as displayed (after EXIF rotation), x2/y2 exclusive. `auto`: find the dishes
    /// on each photo from a class map of the labels, no boxes needed (eval and adapt pair them
    /// with the data set's labelled boxes; leftovers measures each dish inside its mask).
    #[arg(long, value_name = "FILE|DIR|auto")]
    pub regions: Option<PathBuf>,
    /// A tray layout: named compartments as fractions of the photo (TOML; an example in
    /// labels/trays/).
    #[arg(long, value_name = "FILE", conflicts_with = "regions")]
    pub layout: Option<PathBuf>,
    /// An even grid of ROWSxCOLS regions, named r1c1, r1c2, ...
    #[arg(long, value_name = "RxC", conflicts_with_all = ["regions", "layout"])]
    pub grid: Option<Grid>,
    /// With --regions auto: what is not a dish (a label file: one thing per line), instead of
    /// the built-in tray, table, empty plate or bowl, napkin, spoon and chopsticks.
    #[arg(long, value_name = "FILE", requires = "regions")]
    pub background: Option<PathBuf>,
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

/// The classes of a run: a label file, or an adapter that brings them, and the prompts.
#[derive(Debug, Args)]
pub struct ClassArgs {
    /// Label file: one class per line, synonyms after `|`, `#` comments, `[group]` headers.
    #[arg(long, short, required_unless_present = "adapter")]
    pub labels: Option<PathBuf>,
    /// An adapter made by `foodclip adapt`: its classes and its cache of your photos.
    #[arg(long, value_name = "FILE")]
    pub adapter: Option<PathBuf>,
    /// Prompt templates.
    #[command(flatten)]
    pub templates: TemplateArgs,
}

/// `foodclip classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Photos to classify.
    #[command(flatten)]
    pub input: InputArgs,
    /// The classes.
    #[command(flatten)]
    pub classes: ClassArgs,
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
    /// Output format (default: the one --output's extension names, .csv, .tsv, .json or .jsonl;
    /// else table on a terminal, jsonl otherwise); `coco` writes a COCO results array for
    /// regions read from COCO JSON or found by `--regions auto` (categories then numbered from 1
    /// in the label file's order, photos from 1 in the run's order).
    #[arg(long, short, value_parser = formats())]
    pub format: Option<Format>,
    /// Also draw each photo with its regions' boxes, best labels and probabilities as
    /// `DIR/<name>.svg`.
    #[arg(long, value_name = "DIR")]
    pub draw: Option<PathBuf>,
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
    /// Score the photos (or, with --layout/--grid/--regions, the regions) of this `foodclip
    /// index` store (a SQLite file, a folder `index DIR` indexed, or a postgres:// URL) instead
    /// of reading them.
    #[arg(long, value_name = "DB", conflicts_with_all = ["save_embeddings", "embeddings"])]
    pub db: Option<PathBuf>,
}

/// `foodclip index`.
#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Folders (or photos) of the archive.
    #[arg(required_unless_present_any = ["export", "copy_to"])]
    pub dirs: Vec<PathBuf>,
    /// The store: a SQLite file or a folder for its own DIR/.foodclip/index.sqlite (default: the
    /// single folder's), or a shared PostgreSQL database with pgvector,
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`.
    #[arg(long, value_name = "DB", env = "FOODCLIP_DB")]
    pub db: Option<PathBuf>,
    /// Write the index's embeddings (of this model, mode and regions) to DIR as
    /// img_emb/img_emb_0.npy with paths.txt and metadata.jsonl, for numpy, autofaiss or
    /// clip-retrieval, instead of indexing.
    #[arg(long, value_name = "DIR", requires = "db")]
    pub export: Option<PathBuf>,
    /// Copy the whole SQLite index --db (files as this --site's, every checkpoint's
    /// embeddings, the leftovers) into a shared store, postgres://..., instead of indexing.
    /// Rows already there are replaced, so a copy can be run again.
    #[arg(long, value_name = "URL", requires = "db", conflicts_with = "export")]
    pub copy_to: Option<PathBuf>,
    /// Batching and decoding.
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Index regions of the photos (trays).
    #[command(flatten)]
    pub regions: RegionArgs,
}

/// `foodclip search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Query terms, Korean or English: `잡채`, `+rice`, `-soup` (subtracted), `2:kimchi` (a
    /// weight).
    pub terms: Vec<String>,
    /// Photos whose looks to search for (a term of weight 1 each).
    #[arg(long, value_name = "PHOTO")]
    pub like: Vec<PathBuf>,
    /// The store: a SQLite file, a folder that `index DIR` indexed (its .foodclip/index.sqlite;
    /// default: the current folder's), or a postgres:// URL.
    #[arg(long, value_name = "DB", env = "FOODCLIP_DB")]
    pub db: Option<PathBuf>,
    /// How many results.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// A postgres:// store: rows its vector index proposes, then scored exactly; more is
    /// slower and nearer an exact scan, 0 scans every row. (SQLite always scans.)
    #[arg(long, default_value_t = crate::store::postgres::CANDIDATES, value_name = "N")]
    pub candidates: usize,
    /// Only photos under this folder.
    #[arg(long, value_name = "PATH")]
    pub under: Option<PathBuf>,
    /// Only photos modified on or after this day (YYYY-MM-DD, UTC).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Only photos modified before the end of this day (YYYY-MM-DD, UTC).
    #[arg(long, value_name = "DATE")]
    pub until: Option<String>,
    /// Prompt templates for the text terms.
    #[command(flatten)]
    pub templates: TemplateArgs,
    /// Search the regions indexed with these flags.
    #[command(flatten)]
    pub regions: RegionArgs,
    /// Output format (default: table on a terminal, jsonl otherwise).
    #[arg(long, short, value_parser = formats())]
    pub format: Option<Format>,
    /// Print only the paths, one per line (for pipes).
    #[arg(long, conflicts_with = "format")]
    pub paths: bool,
}

/// `foodclip eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The data set.
    #[command(flatten)]
    pub data: DataSetArgs,
    /// The classes.
    #[command(flatten)]
    pub classes: ClassArgs,
    /// Output format: table, json, or csv (one row per class).
    #[arg(long, short, default_value = "table", value_parser = formats())]
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
    /// Output format: jsonl, json, csv, tsv or table (default: the one --output's extension
    /// names, else jsonl).
    #[arg(long, short, value_parser = formats())]
    pub format: Option<Format>,
    /// Refuse to run unless the model is the one this adapter was made with (so that the
    /// embeddings can go into it).
    #[arg(long, value_name = "FILE")]
    pub adapter: Option<PathBuf>,
}

/// A labelled data set and how its photos are read, for `eval` and `adapt`.
#[derive(Debug, Args)]
pub struct DataSetArgs {
    /// The data set: a folder of class folders (each named by any name of a class; `unknown` for
    /// dishes not in the list), a CSV/TSV file of `path,label` rows, or regions with labels: a
    /// COCO JSON with categories, or CSV/TSV rows `path,x1,y1,x2,y2,label`.
    pub dataset: PathBuf,
    /// Batching and decoding.
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Regions of the photos (trays); a COCO JSON or CSV region file may also be the data set.
    #[command(flatten)]
    pub regions: RegionArgs,
    /// Embeddings.
    #[command(flatten)]
    pub stored: StoredArgs,
}

/// `foodclip adapt`.
#[derive(Debug, Args)]
pub struct AdaptArgs {
    /// The labelled photos, in any form `eval` reads.
    #[command(flatten)]
    pub data: DataSetArgs,
    /// Label file (with --update: the classes, old and new; default the adapter's).
    #[arg(long, short, required_unless_present = "update")]
    pub labels: Option<PathBuf>,
    /// Where to write the adapter (safetensors).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Add the photos (and new classes) to this adapter and choose again.
    #[arg(long, value_name = "ADAPTER")]
    pub update: Option<PathBuf>,
    /// Prompt templates.
    #[command(flatten)]
    pub templates: TemplateArgs,
    /// Average each photo's embedding over N augmented views (random resized crops of 50-100%,
    /// flips), drawn from --seed; 0 uses the photo as the model sees it.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=64))]
    pub augment: u32,
    /// Seed of the augmented views.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also try Tip-Adapter-F (the cache keys fine-tuned) in cross-validation.
    #[arg(long)]
    pub fit: bool,
    /// Fix alpha (the weight of the photos against the names) instead of choosing it.
    #[arg(long, requires = "beta")]
    pub alpha: Option<f32>,
    /// Fix beta (how sharply a photo's pull falls with distance) instead of choosing it.
    #[arg(long, requires = "alpha")]
    pub beta: Option<f32>,
    /// Output format of the report: table or json.
    #[arg(long, short, default_value = "table", value_parser = formats())]
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
    /// Draw these regions' boxes on the photo instead (to fit a layout to your trays); an
    /// .svg output also names them. With `--regions auto`: the class map, each dish tinted.
    #[command(flatten)]
    pub regions: RegionArgs,
    /// The dishes of `--regions auto`'s class map.
    #[arg(long, short)]
    pub labels: Option<PathBuf>,
}

/// `foodclip serve`. `--regions` is hidden: it lists photos by path, and uploads have none.
#[derive(Debug, Args)]
#[command(mut_arg("regions", |a| a.hide(true)))]
pub struct ServeArgs {
    /// The classes every request is ranked against.
    #[command(flatten)]
    pub classes: ClassArgs,
    /// Address to listen on; 0.0.0.0 opens the API to the network (use --token then).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer TOKEN` on every /v1 request.
    #[arg(long, env = "FOODCLIP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Let browser pages from ORIGIN call the API (CORS): `http://kitchen.local:3000`, or * for
    /// any; repeatable.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Largest request body (bytes, or with a unit: 500KB, 32MB, 1GiB); larger ones get 413.
    #[arg(long, default_value = "32MB", value_name = "SIZE", value_parser = parse_size)]
    pub max_body: u64,
    /// Most photos decoding or waiting for the model at once; beyond it, 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_queue: u64,
    /// How long a model call may wait for photos still being decoded, to share the call.
    #[arg(long, default_value_t = 5, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub batch_wait: u64,
    /// Batching and decoding.
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Regions of every photo (trays), unless a request gives its own `regions`.
    #[command(flatten)]
    pub regions: RegionArgs,
    /// History for `POST /v1/forecast`: records of `foodclip leftovers` or a CSV
    /// `date,dish,leftover[,trays]`, as `forecast --history` takes them; repeatable.
    #[arg(long, value_name = "FILE")]
    pub history: Vec<PathBuf>,
}

/// A size in bytes: a number with an optional unit (KB, MB, GB; KiB, MiB, GiB).
fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: give bytes, or a size such as 500KB, 32MB or 1GiB"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: give bytes, or a size such as 500KB, 32MB or 1GiB"))?;
    Ok((value * scale as f64) as u64)
}

/// `foodclip models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List registered models with their languages and licences.
    List {
        /// Output format (table or json).
        #[arg(long, short, default_value = "table", value_parser = formats())]
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
    #[arg(long, short, default_value = "table", value_parser = formats())]
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
    #[arg(long, short, default_value = "table", value_parser = formats())]
    pub format: Format,
}

impl Cli {
    /// Parses `args`. `search` takes `-term` (a term to subtract), which clap would read as a
    /// flag: any token of a search that is not one of its flags (or their values) and starts
    /// with `-` is moved behind a `--`, where it is a term.
    pub fn try_parse_args(
        args: impl IntoIterator<Item = std::ffi::OsString>,
    ) -> Result<Self, clap::Error> {
        use clap::CommandFactory;
        let args: Vec<std::ffi::OsString> = args.into_iter().collect();
        let Some(at) = args.iter().position(|a| a == "search") else {
            return Self::try_parse_from(args);
        };
        let mut cmd = Self::command();
        cmd.build();
        let search = cmd.find_subcommand("search").expect("a search command");
        let mut flags = std::collections::HashMap::new();
        for arg in search.get_arguments().filter(|a| !a.is_positional()) {
            let takes = arg.get_action().takes_values();
            for long in arg.get_long_and_visible_aliases().into_iter().flatten() {
                flags.insert(format!("--{long}"), takes);
            }
            for short in arg.get_short_and_visible_aliases().into_iter().flatten() {
                flags.insert(format!("-{short}"), takes);
            }
        }
        let (mut kept, mut terms) = (args[..=at].to_vec(), Vec::new());
        let mut rest = args[at + 1..].iter();
        while let Some(a) = rest.next() {
            let text = a.to_string_lossy();
            if text == "--" {
                terms.extend(rest.by_ref().cloned());
                break;
            }
            match flags.get(text.split('=').next().unwrap_or_default()) {
                Some(&takes) => {
                    kept.push(a.clone());
                    if takes && !text.contains('=') {
                        kept.extend(rest.next().cloned());
                    }
                }
                // `-soup` is a term; `--top-k`, a flag that does not exist, stays a flag for
                // clap to refuse (naming `--top`), not a term that quietly changes the query.
                None if text.starts_with('-') && !text.starts_with("--") && text.len() > 1 => {
                    terms.push(a.clone())
                }
                None => kept.push(a.clone()),
            }
        }
        if !terms.is_empty() {
            kept.push("--".into());
            kept.extend(terms);
        }
        Self::try_parse_from(kept)
    }
}
