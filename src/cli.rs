//! The command line: flags parsed once by clap, then each subcommand run against the library.

use crate::checkpoint::{load_preprocess, Checkpoint};
use crate::classify::{embed_pictures, prepare_photo, Classifier};
use crate::labels::{LabelSet, Templates};
use crate::output::{write_atomically, Format, Printer};
use crate::preprocess::{load_rgb, DEFAULT_MAX_PIXELS};
use crate::registry::Registry;
use crate::source::{offline_from_env, HubOptions, ModelSource};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rayon::prelude::*;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

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
    /// Print L2-normalised image embeddings.
    Embed(EmbedArgs),
    /// Write the exact picture the model sees (resized and centre-cropped) for one photo.
    Preview(PreviewArgs),
    /// The registry of known checkpoints.
    #[command(subcommand)]
    Models(ModelsCommand),
}

/// Photos to read.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// Photos or folders (searched recursively); `-` reads paths from stdin, one per line.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Paths on stdin are separated by NUL bytes (as `find -print0` writes them).
    #[arg(long, short = '0')]
    pub null: bool,
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
    /// Label file: one class per line, synonyms after `|`, `#` comments.
    #[arg(long, short)]
    pub labels: PathBuf,
    /// Prompt template, `{}` standing for the class name; repeatable. `'{}'` alone uses the name
    /// as written. Default: a Korean set for Hangul names, an English set for the others.
    #[arg(long = "template", short = 't')]
    pub templates: Vec<String>,
    /// Predictions per photo; 0 for all classes.
    #[arg(long, short = 'k', default_value_t = 5)]
    pub top_k: usize,
    /// Output format (default: table on a terminal, jsonl otherwise).
    #[arg(long, short, value_enum)]
    pub format: Option<Format>,
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

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every input succeeded.
    Success,
    /// Some inputs failed (reported and skipped).
    SomeFailed,
}

/// Shared run state: messages to stderr, honouring `--quiet`.
struct Ui {
    quiet: bool,
}

impl Ui {
    fn warn(&self, msg: &str) {
        if !self.quiet {
            eprintln!("foodclip: warning: {msg}");
        }
    }

    fn input_error(&self, path: &str, msg: &str) {
        eprintln!("foodclip: {path}: {msg}");
    }
}

/// Runs a parsed command line. An `Err` is a usage or configuration error (exit code 2).
pub fn run(cli: Cli) -> Result<Outcome> {
    let ui = Ui { quiet: cli.quiet };
    let hub = HubOptions {
        offline: cli.offline || offline_from_env(),
        progress: !cli.quiet && io::stderr().is_terminal(),
    };
    let registry = Registry::builtin();
    let model = || -> Result<Checkpoint> {
        let source = ModelSource::resolve(cli.model.as_deref(), &registry)?;
        let device = match cli.device {
            DeviceKind::Cpu => candle_core::Device::Cpu,
            DeviceKind::Cuda => candle_core::Device::new_cuda(0)
                .context("--device cuda: no usable GPU (build with `--features cuda`)")?,
        };
        Checkpoint::load(&source, &hub, &device)
            .with_context(|| format!("cannot load model {}", source.identity()))
    };
    match &cli.command {
        Command::Classify(args) => {
            let labels = LabelSet::load(&args.labels)?;
            let templates = if args.templates.is_empty() {
                Templates::Default
            } else {
                Templates::custom(args.templates.clone())?
            };
            let inputs = collect_inputs(&args.input)?;
            let ckpt = model()?;
            let classifier = Classifier::new(&ckpt, &labels, &templates, |w| ui.warn(&w))?;
            let format = args.format.unwrap_or(if io::stdout().is_terminal() {
                Format::Table
            } else {
                Format::Jsonl
            });
            let mut printer = Printer::new(io::stdout().lock(), format);
            let top_k = args.top_k;
            let outcome =
                for_each_batch(&ckpt, &args.input, &inputs, &ui, |emb, paths, results| {
                    let preds = match emb {
                        Some(e) => classifier.predict(e)?,
                        None => Vec::new(),
                    };
                    let mut preds = preds.into_iter();
                    for (path, r) in paths.iter().zip(results) {
                        let record = r.map(|()| {
                            let mut p = preds.next().expect("one row per decoded photo");
                            if top_k > 0 {
                                p.truncate(top_k);
                            }
                            p
                        });
                        printer.predictions(path, &record)?;
                    }
                    Ok(())
                })?;
            finish(&mut printer)?;
            Ok(outcome)
        }
        Command::Embed(args) => {
            let inputs = collect_inputs(&args.input)?;
            let ckpt = model()?;
            let mut printer = Printer::new(io::stdout().lock(), args.format);
            let outcome =
                for_each_batch(&ckpt, &args.input, &inputs, &ui, |emb, paths, results| {
                    let rows = match emb {
                        Some(e) => e.to_vec2::<f32>()?,
                        None => Vec::new(),
                    };
                    let mut rows = rows.into_iter();
                    for (path, r) in paths.iter().zip(results) {
                        let record = r.map(|()| rows.next().expect("one row per decoded photo"));
                        printer.embedding(path, &record)?;
                    }
                    Ok(())
                })?;
            finish(&mut printer)?;
            Ok(outcome)
        }
        Command::Preview(args) => {
            let source = ModelSource::resolve(cli.model.as_deref(), &registry)?;
            let preprocess = load_preprocess(&source, &hub)?;
            let img = match load_rgb(&args.image, args.max_pixels) {
                Ok(img) => img,
                Err(e) => {
                    ui.input_error(&args.image.display().to_string(), &format!("{e:#}"));
                    return Ok(Outcome::SomeFailed);
                }
            };
            let seen = preprocess.prepare(&img);
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
    }
}

/// The result of one input in a batch: `Ok(())` if it has a row in the batch's embeddings.
type InputResult = Result<(), String>;

/// Decodes `inputs` in batches (in parallel), embeds the photos that decoded, and hands each
/// batch to `emit` in input order. Per-photo failures are reported and skipped.
fn for_each_batch(
    ckpt: &Checkpoint,
    args: &InputArgs,
    inputs: &[String],
    ui: &Ui,
    mut emit: impl FnMut(Option<&candle_core::Tensor>, &[String], Vec<InputResult>) -> Result<()>,
) -> Result<Outcome> {
    let mut failed = 0usize;
    for chunk in inputs.chunks(args.batch_size as usize) {
        let decoded: Vec<Result<image::RgbImage, String>> = chunk
            .par_iter()
            .map(|p| {
                prepare_photo(ckpt, Path::new(p), args.max_pixels).map_err(|e| format!("{e:#}"))
            })
            .collect();
        let mut pictures = Vec::new();
        let mut results = Vec::with_capacity(chunk.len());
        for (path, d) in chunk.iter().zip(decoded) {
            match d {
                Ok(pic) => {
                    pictures.push(pic);
                    results.push(Ok(()));
                }
                Err(e) => {
                    ui.input_error(path, &e);
                    failed += 1;
                    results.push(Err(e));
                }
            }
        }
        let emb = if pictures.is_empty() {
            None
        } else {
            Some(embed_pictures(ckpt, &pictures)?)
        };
        if let Err(e) = emit(emb.as_ref(), chunk, results) {
            return match e.downcast_ref::<io::Error>() {
                Some(io) if io.kind() == io::ErrorKind::BrokenPipe => Ok(if failed > 0 {
                    Outcome::SomeFailed
                } else {
                    Outcome::Success
                }),
                _ => Err(e.context("cannot write output")),
            };
        }
    }
    Ok(if failed > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

fn finish<W: Write>(printer: &mut Printer<W>) -> Result<()> {
    match printer.finish() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write output"))
        }
        _ => Ok(()),
    }
}

/// File extensions read when walking folders.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Expands the inputs: files as given, folders recursively (image extensions only, sorted), and
/// `-` as a list of paths on stdin.
fn collect_inputs(args: &InputArgs) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for input in &args.inputs {
        if input.as_os_str() == "-" {
            let mut buf = Vec::new();
            io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .context("cannot read paths from stdin")?;
            let sep = if args.null { b'\0' } else { b'\n' };
            for raw in buf.split(|&b| b == sep) {
                let line = String::from_utf8_lossy(raw);
                let line = if args.null {
                    line.as_ref()
                } else {
                    line.trim_end_matches('\r')
                };
                if !line.is_empty() {
                    out.push(line.to_string());
                }
            }
        } else if input.is_dir() {
            walk(input, &mut out)
                .with_context(|| format!("cannot read folder {}", input.display()))?;
        } else {
            out.push(input.display().to_string());
        }
    }
    if out.is_empty() {
        bail!("no photos to read (check the paths, or the list on stdin)");
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        {
            out.push(path.display().to_string());
        }
    }
    Ok(())
}

fn list_models(registry: &Registry, format: Format) -> Result<()> {
    let mut out = io::stdout().lock();
    let r = match format {
        Format::Json | Format::Jsonl => {
            serde_json::to_writer_pretty(&mut out, &registry.entries)?;
            writeln!(out)
        }
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
