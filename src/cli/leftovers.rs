//! `foodclip leftovers`: how much of each dish comes back, per tray and compartment, with a
//! summary per dish and day.

use super::context::Context;
use super::flags::LeftoversArgs;
use super::ui::{default_format, interrupt_flag, quiet_on_closed_pipe};
use super::Outcome;
use crate::classify::{OpenSet, Ranking};
use crate::fsutil::{check_writable, is_closed_pipe, write_atomically};
use crate::leftovers::menu::Menu;
use crate::leftovers::pairs;
use crate::leftovers::records::{Recorder, Tray};
use crate::leftovers::summary::{Accuracy, Comparison, Record, Summary, Truth};
use crate::leftovers::{examine, EmptyTray, Settings};
use crate::output::{csv_row, Format, RowPrinter};
use crate::pipeline::run_prepared;
use crate::regions::{Grid, Regions};
use crate::text::{count, pad};
use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(super) fn run(cx: &Context, args: &LeftoversArgs) -> Result<Outcome> {
    let pairs = match (&args.served, &args.returned, &args.pairs) {
        (Some(s), Some(r), _) => pairs::from_folders(s, r)?,
        (_, _, Some(f)) => pairs::from_csv(f)?,
        _ => bail!("give --served DIR --returned DIR, or --pairs FILE.csv"),
    };
    let mut regions = match args.regions.load_auto()? {
        Some(r) => r,
        None => Regions::grid(Grid { rows: 1, cols: 1 }),
    };
    let (labels, adapter, templates) = cx.classes(&args.classes)?;
    let open_set = OpenSet::new(args.threshold, None).map_err(|e| anyhow!("--threshold: {e}"))?;
    let menu = match &args.menu {
        Some(file) => {
            let mut menu = Menu::load(file)?;
            if let Some(names) = regions.names() {
                menu.check_compartments(&names)?;
            }
            for w in menu.resolve(&labels) {
                cx.ui.warn(&w);
            }
            Some(menu)
        }
        None => None,
    };
    let max_pixels = args.batch.max_pixels;
    let empty = args
        .empty_tray
        .as_deref()
        .map(|p| EmptyTray::load(p, max_pixels))
        .transpose()?;
    let truth = args.truth.as_deref().map(Truth::load).transpose()?;
    let summary_format = args.summary.as_deref().map(summary_format).transpose()?;
    if let Some(file) = &args.summary {
        check_writable("--summary", file)?;
    }
    let format = args
        .format
        .unwrap_or_else(|| default_format(args.output.as_deref(), Format::Table));
    if format == Format::Coco {
        bail!("--format coco is not for leftovers: give table, jsonl, json, csv or tsv");
    }
    let mut store = args.db.as_deref().map(|p| cx.store(p, true)).transpose()?;
    let ckpt = std::sync::Arc::new(cx.model(false)?);
    cx.warn_language(&ckpt, &labels);
    let classifier = cx.scorer(&ckpt, &labels, &templates, adapter.as_ref())?;
    let dishes = super::auto::Dishes::new(&labels, &classifier, &templates, &args.regions);
    super::auto::bind(cx, Some(&mut regions), &ckpt, &dishes)?;
    let out: Box<dyn Write> = match &args.output {
        None => Box::new(io::stdout().lock()),
        Some(file) => Box::new(io::BufWriter::new(
            std::fs::File::create(file)
                .with_context(|| format!("cannot open --output {}", file.display()))?,
        )),
    };
    let mut printer = RowPrinter::new(out, format, &Record::COLUMNS);
    let settings = Settings {
        align: !args.no_align,
        max_pixels,
        fidelity: cx.fidelity,
    };
    let recorder = Recorder {
        menu: menu.as_ref(),
        open_set,
    };
    let mut summary = Summary::default();
    let mut comparison = Comparison::default();
    let mut worst = crate::report::leftovers::Worst::new(12);
    let interrupted = interrupt_flag();
    let progress = cx.ui.progress_bar(Some(pairs.len()), "trays");
    let start = Instant::now();
    let (mut measured_n, mut served_empty, mut failed, mut trays) = (0usize, 0, 0, 0usize);
    let pre = &ckpt.preprocess;
    let drawing = args.report.is_some();
    let ran = run_prepared(
        &ckpt,
        &pairs,
        args.batch.batch_size as usize,
        &interrupted,
        |pair| {
            let e = examine(pair, &regions, pre, empty.as_ref(), settings, drawing);
            (e.pieces, (e.measured, e.date))
        },
        |emb, chunk, done| {
            let mut rows = match emb {
                Some(e) => classifier
                    .predict(&e)
                    .context("cannot rank the compartments' embeddings")?,
                None => Vec::new(),
            }
            .into_iter();
            for (pair, (items, (measured, date))) in chunk.iter().zip(done) {
                let rankings: Vec<Result<Ranking, String>> = items
                    .into_iter()
                    .map(|i| i.result.map(|()| rows.next().expect("one row per picture")))
                    .collect();
                let overlay = measured.as_ref().ok().and_then(|m| m.overlay.clone());
                let text =
                    |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
                let tray = Tray {
                    name: pair.tray.clone(),
                    served: text(&pair.served),
                    returned: text(&pair.returned),
                    date,
                };
                let records = recorder.records(tray, measured, rankings);
                trays += 1;
                // The bar steps aside while the tray's records print: they may go to the same
                // terminal.
                progress.suspend(|| -> Result<()> {
                    for r in &records {
                        match (&r.error, r.leftover) {
                            (Some(e), _) => {
                                failed += 1;
                                let what = r
                                    .compartment
                                    .as_ref()
                                    .map_or(String::new(), |c| format!(" [compartment {c}]"));
                                eprintln!("foodclip: {}{what}: {e}", r.tray);
                            }
                            (None, Some(_)) => measured_n += 1,
                            // Under 2% served: no ratio to give.
                            (None, None) => served_empty += 1,
                        }
                        summary.add(r);
                        if let Some(t) = &truth {
                            comparison.add(t, r);
                        }
                        printer
                            .record(r, &r.fields(), &table_line(r))
                            .context("cannot write output")?;
                    }
                    printer.flush().context("cannot write output")
                })?;
                if let Some(store) = store.as_mut() {
                    store
                        .batch(|b| records.iter().try_for_each(|r| b.leftover(&stored(r))))
                        .context("cannot store the records")?;
                }
                if let Some(o) = overlay {
                    worst.offer(&records, o);
                }
                progress.inc(1);
            }
            Ok(interrupted.load(Ordering::Relaxed))
        },
    );
    let closed = match ran {
        Err(e) if is_closed_pipe(&e) => true,
        other => {
            other?;
            false
        }
    };
    progress.finish_and_clear();
    let (overall, per_dish) = comparison.accuracy();
    let report = SummaryFile {
        dishes: summary.dishes(),
        days: summary.days(),
        accuracy: overall.clone().map(|overall| AccuracyFile {
            overall,
            per_dish: per_dish.clone(),
        }),
    };
    if format == Format::Table && !closed {
        let mut text = String::new();
        summary_table(&mut text, &report);
        quiet_on_closed_pipe(printer.record(&(), &[], &text).map_err(anyhow::Error::new))?;
    }
    quiet_on_closed_pipe(printer.finish().map(|_| ()).map_err(anyhow::Error::new))?;
    if let (Some(file), Some(f)) = (&args.summary, summary_format) {
        write_summary(file, f, &report)?;
    }
    if let Some(dir) = &args.report {
        crate::report::leftovers::write(dir, &report.dishes, &report.days, worst.into_trays())
            .with_context(|| format!("cannot write the report in {}", dir.display()))?;
    }
    if !cx.ui.quiet && !closed {
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let stopped = if interrupted.load(Ordering::SeqCst) {
            ", interrupted"
        } else {
            ""
        };
        let empty = match served_empty {
            0 => String::new(),
            n => format!(", {n} served empty"),
        };
        eprintln!(
            "foodclip: {}, {} measured{empty}, {failed} failed in {secs:.1} s ({:.2} \
             trays/s){stopped}",
            count(trays, "tray", "trays"),
            count(measured_n, "compartment", "compartments"),
            trays as f64 / secs
        );
        if let Some(a) = &overall {
            eprintln!("foodclip: against the truth: {}", accuracy_line(a));
        }
    }
    Ok(if interrupted.load(Ordering::SeqCst) {
        Outcome::Interrupted
    } else if failed > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

/// One record as a line of the table.
fn table_line(r: &Record) -> String {
    let pct = |v: Option<f64>| v.map_or("    -".to_string(), |v| format!("{:5.1}%", v * 100.0));
    let name = format!(
        "{}{}",
        r.tray,
        r.compartment
            .as_ref()
            .map_or(String::new(), |c| format!(" [{c}]"))
    );
    if let (Some(e), None) = (&r.error, r.leftover) {
        return format!("{}  error: {e}", pad(&name, 28));
    }
    let grams = r
        .leftover_g
        .map_or(String::new(), |g| format!("  {g:.0} g left"));
    let check = r
        .classified_as
        .as_ref()
        .map_or(String::new(), |c| format!("  (photo looks like {c})"));
    format!(
        "{}  {}  served {}  returned {}  leftover {}{grams}{check}",
        pad(&name, 28),
        pad(r.dish.as_deref().unwrap_or("-"), 16),
        pct(r.served_coverage),
        pct(r.returned_coverage),
        pct(r.leftover)
    )
}

/// The accuracy as one line.
fn accuracy_line(a: &Accuracy) -> String {
    let r = a.pearson_r.map_or("-".to_string(), |r| format!("{r:.3}"));
    format!(
        "n {}, MAE {:.4}, bias {:+.4}, RMSE {:.4}, Pearson r {r}",
        a.n, a.mae, a.bias, a.rmse
    )
}

/// The accuracy block of the summary file.
#[derive(Serialize)]
struct AccuracyFile {
    overall: Accuracy,
    per_dish: Vec<Accuracy>,
}

/// What `--summary` writes (and the table ends with).
#[derive(Serialize)]
struct SummaryFile {
    dishes: Vec<crate::leftovers::summary::DishSummary>,
    days: Vec<crate::leftovers::summary::DishSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<AccuracyFile>,
}

/// The summary as text, after the table's records.
fn summary_table(out: &mut String, s: &SummaryFile) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "\nper dish (most left first):");
    for d in &s.dishes {
        let grams = d
            .leftover_g
            .map_or(String::new(), |g| format!("  {g:.0} g left"));
        let _ = writeln!(
            out,
            "  {} trays {:>5}  mean {:5.1}%  median {:5.1}%  over half {:5.1}%{grams}",
            pad(&d.dish, 20),
            d.trays,
            d.mean_leftover * 100.0,
            d.median_leftover * 100.0,
            d.over_half * 100.0
        );
    }
    if let Some(a) = &s.accuracy {
        let _ = writeln!(out, "\nagainst the truth: {}", accuracy_line(&a.overall));
        for d in &a.per_dish {
            let _ = writeln!(
                out,
                "  {} {}",
                pad(d.dish.as_deref().unwrap_or(""), 20),
                accuracy_line(d)
            );
        }
    }
    while out.ends_with('\n') {
        out.pop();
    }
}

/// The summary file's format, from its extension.
fn summary_format(path: &Path) -> Result<Format> {
    match Format::of_file(path) {
        Some(f @ (Format::Json | Format::Csv | Format::Tsv)) => Ok(f),
        _ => bail!(
            "--summary {}: name a .json, .csv or .tsv file",
            path.display()
        ),
    }
}

/// Writes the summary atomically: JSON as one object, CSV/TSV as one row per dish (`scope`
/// `dish`) and per day and dish (`scope` `day`).
fn write_summary(path: &Path, format: Format, s: &SummaryFile) -> Result<()> {
    let bytes = match format {
        Format::Json => {
            let mut b = serde_json::to_vec_pretty(s)?;
            b.push(b'\n');
            b
        }
        _ => {
            let mut b = csv_row(
                format,
                &[
                    "scope",
                    "date",
                    "dish",
                    "trays",
                    "mean_leftover",
                    "median_leftover",
                    "over_half",
                    "served_g",
                    "leftover_g",
                ],
            );
            let scoped = s.dishes.iter().map(|d| ("dish", d));
            for (scope, d) in scoped.chain(s.days.iter().map(|d| ("day", d))) {
                let g = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
                b.extend(csv_row(
                    format,
                    &[
                        scope.to_string(),
                        d.date.clone().unwrap_or_default(),
                        d.dish.clone(),
                        d.trays.to_string(),
                        d.mean_leftover.to_string(),
                        d.median_leftover.to_string(),
                        d.over_half.to_string(),
                        g(d.served_g),
                        g(d.leftover_g),
                    ],
                ));
            }
            b
        }
    };
    write_atomically(path, &bytes)
        .with_context(|| format!("cannot write --summary {}", path.display()))
}

/// A record as the store keeps it.
fn stored(r: &Record) -> crate::store::LeftoverRow {
    crate::store::LeftoverRow {
        date: r.date.clone().unwrap_or_default(),
        tray: r.tray.clone(),
        compartment: r.compartment.clone().unwrap_or_default(),
        dish: r.dish.clone(),
        group: r.group.clone(),
        leftover: r.leftover,
        portion_g: r.portion_g,
        served: r.served.clone(),
        returned: r.returned.clone(),
        error: r.error.clone(),
    }
}
