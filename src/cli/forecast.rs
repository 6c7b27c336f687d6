//! `foodclip forecast`: what will come back of each dish of a planned menu and how much to
//! cook, or (`--backtest`) how well that forecast did over the history's last weeks.

use super::context::Context;
use super::flags::ForecastArgs;
use super::ui::{default_format, quiet_on_closed_pipe};
use super::Outcome;
use crate::forecast::backtest::{self, Evaluation, Point, Score, BASELINES};
use crate::forecast::{history, plan, Dishes, Forecast, Forecaster};
use crate::fsutil::write_atomically;
use crate::labels::LabelSet;
use crate::output::{Format, RowPrinter};
use crate::text::{count, pad};
use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use std::io::{self, Write};

pub(super) fn run(cx: &Context, args: &ForecastArgs) -> Result<Outcome> {
    if !(args.service_level > 0.0 && args.service_level < 1.0) {
        bail!(
            "--service-level {} must be between 0 and 1 (0.9: cover what is eaten on 9 days in 10)",
            args.service_level
        );
    }
    let format = args
        .format
        .unwrap_or_else(|| default_format(args.output.as_deref(), Format::Table));
    if format == Format::Coco {
        bail!("--format coco is not for forecasts: give table, jsonl, json, csv or tsv");
    }
    let labels = LabelSet::load(&args.labels)?;
    let mut dishes = Dishes::new(&labels);
    // The plan first: its mistakes are found before a long history is read.
    let plan = args
        .menu
        .as_deref()
        .map(|m| plan::load(m, &mut dishes))
        .transpose()?;
    let files: Vec<&std::path::Path> = args
        .history
        .iter()
        .map(|p| p.as_path())
        .chain(args.db.as_deref())
        .collect();
    let history = history::load(&files, cx.site.as_deref(), &mut dishes)?;
    let (first, last) = history.span().expect("a loaded history has days");
    cx.ui.note(&format!(
        "history: {}, {} from {first} to {last} ({} of them without a measurement)",
        count(history.rows, "row", "rows"),
        count(history.observations.len(), "dish-day", "dish-days"),
        history.skipped
    ));
    match &plan {
        Some(plan) => {
            let forecaster = Forecaster::new(&history, &dishes);
            let t = &forecaster.tuned;
            let note = match t.mae {
                Some(mae) => format!(
                    "history {first} to {last}; settings chosen on its last {} weeks: half-life {}, \
                     strength {} (backtest MAE {mae:.4})",
                    t.weeks,
                    half_life(t.settings.half_life),
                    t.settings.strength
                ),
                None => format!(
                    "history {first} to {last}: too little to choose settings by backtest (5 weeks \
                     are needed); the defaults are used and the intervals are rough"
                ),
            };
            cx.ui.note(&note);
            let rows = forecaster.forecast(plan, &dishes, args.service_level);
            if let Some(dir) = &args.report {
                let view = crate::report::forecast::View {
                    forecasts: &rows,
                    history: &history,
                    dishes: &dishes,
                    note: &note,
                };
                crate::report::forecast::write(dir, &view)
                    .with_context(|| format!("cannot write the report in {}", dir.display()))?;
            }
            emit(args, format, &Forecast::COLUMNS, &rows)?;
        }
        None => {
            let ev = backtest::evaluate(
                &history,
                &dishes.groups(),
                dishes.group_count(),
                usize::from(args.weeks),
            );
            if ev.points.is_empty() {
                bail!(
                    "the history ({first} to {last}) is too short to backtest: the first week \
                     forecast needs {} days before it",
                    backtest::WARM_UP
                );
            }
            note_backtest(cx, &ev);
            emit(
                args,
                format,
                &DishScore::COLUMNS,
                &dish_scores(&ev, &dishes),
            )?;
        }
    }
    Ok(Outcome::Success)
}

/// A row of output.
trait Row: Serialize {
    fn fields(&self) -> Vec<String>;
    fn line(&self) -> String;
}

impl Row for Forecast {
    fn fields(&self) -> Vec<String> {
        Forecast::fields(self)
    }
    fn line(&self) -> String {
        Forecast::line(self)
    }
}

/// Writes `rows` to stdout, each flushed, or all at once to `--output` (atomically).
fn emit<R: Row>(
    args: &ForecastArgs,
    format: Format,
    columns: &[&'static str],
    rows: &[R],
) -> Result<()> {
    fn print<W: Write, R: Row>(
        out: W,
        format: Format,
        columns: &[&'static str],
        rows: &[R],
    ) -> io::Result<W> {
        let mut printer = RowPrinter::new(out, format, columns);
        for r in rows {
            printer.record(r, &r.fields(), &r.line())?;
            printer.flush()?;
        }
        printer.finish()
    }
    match &args.output {
        None => quiet_on_closed_pipe(
            print(io::stdout().lock(), format, columns, rows)
                .map(|_| ())
                .map_err(anyhow::Error::new),
        ),
        Some(file) => {
            let bytes = print(Vec::new(), format, columns, rows)?;
            write_atomically(file, &bytes)
                .with_context(|| format!("cannot write --output {}", file.display()))
        }
    }
}

fn half_life(h: Option<f64>) -> String {
    h.map_or("none".into(), |h| format!("{h} days"))
}

/// The backtest's overall line on stderr.
fn note_backtest(cx: &Context, ev: &Evaluation) {
    let all: Vec<&Point> = ev.points.iter().collect();
    let s = backtest::score(&all, &ev.tuned.calibration);
    let chosen = if ev.tuned_on_reported {
        "on the same weeks (too little history before them)".to_string()
    } else {
        format!("on the {} weeks before", ev.tuned.weeks)
    };
    cx.ui.note(&format!(
        "backtest of {} weeks, {} forecasts; settings (half-life {}, strength {}) chosen {chosen}",
        ev.origins.len(),
        s.n,
        half_life(ev.tuned.settings.half_life),
        ev.tuned.settings.strength
    ));
    cx.ui.note(&format!(
        "MAE {:.4} (kitchen mean {:.4}, dish mean {:.4}, last value {:.4}); bias {:+.4}; 80% intervals held {:.1}%",
        s.mae,
        s.baselines[0],
        s.baselines[1],
        s.baselines[2],
        s.bias,
        s.coverage * 100.0
    ));
}

/// One dish's backtest, or every dish's (`dish` = `(all)`).
#[derive(Debug)]
struct DishScore {
    dish: String,
    group: Option<String>,
    score: Score,
}

impl Serialize for DishScore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("dish", &self.dish)?;
        if let Some(g) = &self.group {
            m.serialize_entry("group", g)?;
        }
        let sc = &self.score;
        m.serialize_entry("n", &sc.n)?;
        m.serialize_entry("mae", &sc.mae)?;
        m.serialize_entry("bias", &sc.bias)?;
        m.serialize_entry("coverage", &sc.coverage)?;
        for (name, v) in Self::COLUMNS[6..].iter().zip(sc.baselines) {
            m.serialize_entry(name, &v)?;
        }
        m.end()
    }
}

impl DishScore {
    const COLUMNS: [&'static str; 9] = [
        "dish",
        "group",
        "n",
        "mae",
        "bias",
        "coverage",
        "kitchen_mean_mae",
        "dish_mean_mae",
        "last_value_mae",
    ];
}

impl Row for DishScore {
    fn fields(&self) -> Vec<String> {
        let s = &self.score;
        let r = |v: f64| format!("{:.4}", v);
        let mut f = vec![
            self.dish.clone(),
            self.group.clone().unwrap_or_default(),
            s.n.to_string(),
            r(s.mae),
            r(s.bias),
            r(s.coverage),
        ];
        f.extend(s.baselines.iter().map(|&b| r(b)));
        f
    }

    fn line(&self) -> String {
        let s = &self.score;
        format!(
            "{} n {:>5}  MAE {:.3}  bias {:+.3}  held {:>5.1}%  | {} {:.3}  {} {:.3}  {} {:.3}",
            pad(&self.dish, 16),
            s.n,
            s.mae,
            s.bias,
            s.coverage * 100.0,
            BASELINES[0],
            s.baselines[0],
            BASELINES[1],
            s.baselines[1],
            BASELINES[2],
            s.baselines[2],
        )
    }
}

/// Every dish's score, most forecasts first, then all dishes together.
fn dish_scores(ev: &Evaluation, dishes: &Dishes) -> Vec<DishScore> {
    let cal = &ev.tuned.calibration;
    let mut rows: Vec<DishScore> = (0..dishes.list.len())
        .filter_map(|d| {
            let points: Vec<&Point> = ev.points.iter().filter(|p| p.dish == d).collect();
            (!points.is_empty()).then(|| DishScore {
                dish: dishes.list[d].name.clone(),
                group: dishes.list[d]
                    .group
                    .map(|g| dishes.group_name(g).to_string()),
                score: backtest::score(&points, cal),
            })
        })
        .collect();
    rows.sort_by(|a, b| b.score.n.cmp(&a.score.n).then(a.dish.cmp(&b.dish)));
    rows.push(DishScore {
        dish: "(all)".into(),
        group: None,
        score: backtest::score(&ev.points.iter().collect::<Vec<_>>(), cal),
    });
    rows
}
