//! The terminal side of a run: warnings and notes on stderr, the progress bar, per-photo error
//! lines, the closing summary, Ctrl-C, and pretty JSON on stdout.

use crate::fsutil::is_closed_pipe;
use crate::output::Format;
use crate::pipeline::{Items, Stats};
use crate::regions::Region;
use crate::text::count;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Stderr messages, honouring `--quiet`.
pub(super) struct Ui {
    pub quiet: bool,
}

impl Ui {
    /// `foodclip: warning: MSG`.
    pub fn warn(&self, msg: &str) {
        if !self.quiet {
            eprintln!("foodclip: warning: {msg}");
        }
    }

    /// `foodclip: MSG`.
    pub fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("foodclip: {msg}");
        }
    }

    /// A progress bar over `len` things (a count with no end when `None`), counted in `unit`
    /// ("photos", "trays"), on stderr, when stderr is a terminal and not `--quiet`.
    pub fn progress_bar(&self, len: Option<usize>, unit: &str) -> ProgressBar {
        if self.quiet || !io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar =
            ProgressBar::with_draw_target(len.map(|n| n as u64), ProgressDrawTarget::stderr());
        let template = match len {
            Some(_) => format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{rate}}  ETA {{eta}}"),
            None => format!("{{spinner}} {{pos}} {unit}  {{rate}}"),
        };
        let style = ProgressStyle::with_template(&template)
            .expect("valid template")
            .with_key("rate", |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = write!(w, "{:.1}/s", s.per_sec());
            });
        bar.set_style(style);
        bar
    }

    /// The closing line of a run: done, failed, skipped, speed; with regions from a file,
    /// `ignored` counts the regions it lists for photos not given. Speeds count only work done:
    /// records with a result, and photos with at least one (a photo that could not be read is
    /// not work done).
    pub fn summary(
        &self,
        stats: &Stats,
        skipped: usize,
        ignored: Option<usize>,
        interrupted: bool,
    ) {
        // A closed pipe is a normal end, as in ripgrep: nothing more to say.
        if self.quiet || stats.output_closed {
            return;
        }
        let secs = stats.elapsed.as_secs_f64().max(1e-9);
        let stopped = if interrupted { ", interrupted" } else { "" };
        let (done, failed) = (stats.done, stats.failed);
        match ignored {
            None => eprintln!(
                "foodclip: {done} done, {failed} failed, {skipped} skipped in {secs:.1} s \
                 ({:.2} photos/s){stopped}",
                stats.photos_done as f64 / secs
            ),
            Some(ignored) => {
                let ignored = match ignored {
                    0 => String::new(),
                    n => format!("; {n} listed for photos not given, ignored"),
                };
                eprintln!(
                    "foodclip: {} done, {failed} failed, of {}; {skipped} skipped{ignored}; in \
                     {secs:.1} s ({:.2} photos/s, {:.2} regions/s){stopped}",
                    count(done, "region", "regions"),
                    count(stats.photos, "photo", "photos"),
                    stats.photos_done as f64 / secs,
                    done as f64 / secs
                )
            }
        }
    }

    /// On stderr for each record of a batch: `foodclip: PATH: error` for a failure (errors are
    /// never quiet), and warnings (a clipped box).
    pub fn report(&self, progress: &ProgressBar, paths: &[PathBuf], items: &Items) {
        let name = |path: &PathBuf, region: &Option<Region>| match region {
            Some(r) => format!("{} [region {}]", path.display(), r.tag()),
            None => path.display().to_string(),
        };
        for (path, photo) in paths.iter().zip(items) {
            for item in photo {
                if let Err(e) = &item.result {
                    progress.suspend(|| eprintln!("foodclip: {}: {e}", name(path, &item.region)));
                }
                if let Some(w) = &item.warning {
                    progress.suspend(|| self.warn(&format!("{}: {w}", name(path, &item.region))));
                }
            }
        }
    }
}

/// The format of a command's records when `--format` is not given: the one `--output`'s
/// extension names (`.csv`, `.tsv`, `.json`, `.jsonl`), else `terminal` when they go to a
/// terminal, else JSON Lines.
pub(super) fn default_format(output: Option<&Path>, terminal: Format) -> Format {
    match output {
        Some(file) => Format::of_file(file).unwrap_or(Format::Jsonl),
        None if io::stdout().is_terminal() => terminal,
        None => Format::Jsonl,
    }
}

/// Set by Ctrl-C: finish the batch in flight, then stop.
pub(super) fn interrupt_flag() -> Arc<AtomicBool> {
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

/// Pretty-printed JSON and a newline.
pub(super) fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// Prints to stdout with `print`: a closed pipe (`| head`) is a normal end, as in ripgrep; any
/// other write error is "cannot write output".
pub(super) fn to_stdout(print: impl FnOnce(&mut io::StdoutLock) -> io::Result<()>) -> Result<()> {
    let mut out = io::stdout().lock();
    let r = print(&mut out).and_then(|()| out.flush());
    quiet_on_closed_pipe(r.map_err(anyhow::Error::new))
}

/// `Ok` for a closed pipe, "cannot write output" for other errors of writing records.
pub(super) fn quiet_on_closed_pipe(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if is_closed_pipe(&e) => Ok(()),
        Err(e) => Err(e.context("cannot write output")),
        Ok(()) => Ok(()),
    }
}
