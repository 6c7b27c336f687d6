//! `foodclip eval`: score a labelled data set, then print the metrics (and write the report).

use super::context::Context;
use super::dataset::{DataSet, Place};
use super::flags::EvalArgs;
use super::ui::{to_stdout, write_json};
use super::Outcome;
use crate::classify::Ranking;
use crate::eval::{calibrate, metrics, threshold_for, Metrics, Operating, Scored, Truth};
use crate::labels::LabelSet;
use crate::output::{csv_row, Format};
use crate::regions::{Region, Regions};
use crate::report::{self, Misclassified};
use crate::text::count;
use anyhow::{bail, Context as _, Result};
use candle_core::Tensor;
use serde_json::json;
use std::io::{self, Write};
use std::path::PathBuf;

/// Everything an evaluation found.
pub(super) struct Evaluation<'a> {
    pub labels: &'a LabelSet,
    pub metrics: Metrics,
    /// What was scored: `photos`, or `regions`.
    pub unit: &'static str,
    /// Photos (or regions) of dishes not in the list that were scored.
    pub unknown_photos: usize,
    pub unreadable: Vec<(Place, String)>,
    pub unmatched: Vec<(Place, String)>,
    /// Whether the regions were found by `--regions auto` (and paired with the truth's).
    pub auto: bool,
    /// With `--regions auto`: the truth's regions that no found region paired with.
    pub missed: Vec<(Place, String)>,
    pub misclassified: Vec<Misclassified>,
    pub calibration: Option<Vec<Operating>>,
}

/// One scored record: a photo or a region, what it shows, and its ranking or error.
struct Case {
    path: PathBuf,
    region: Option<Region>,
    truth: Truth,
    ranking: Result<Ranking, String>,
}

/// Runs `eval`: embeds (or looks up) every photo (or region) with a known truth, ranks it, and
/// reports.
pub(super) fn run(cx: &Context, args: &EvalArgs) -> Result<Outcome> {
    if args.format == Format::Coco {
        bail!("--format coco is for classify results; eval writes table, json, csv or tsv");
    }
    let (labels, adapter, templates) = cx.classes(&args.classes)?;
    let mut source = DataSet::open(cx, &args.data, &labels)?;
    let ckpt = std::sync::Arc::new(cx.model(source.stored.is_some())?);
    let sink = args.data.stored.prepare(
        cx,
        source.stored.as_ref().map(|s| s.checkpoint.as_str()),
        &ckpt,
    )?;
    cx.warn_language(&ckpt, &labels);
    let classifier = cx.scorer(&ckpt, &labels, &templates, adapter.as_ref())?;
    let dishes = super::auto::Dishes::new(&labels, &classifier, &templates, &args.data.regions);
    super::auto::bind(cx, source.regions.as_mut(), &ckpt, &dishes)?;
    let run = source.embed(cx, &ckpt, &args.data.batch, sink)?;
    if args.calibrate && !run.cases.iter().any(|c| c.truth == Truth::Unknown) {
        cx.ui.warn("--calibrate: the data set has no `unknown` photos (dishes not in the list), so precision counts only mistakes among listed dishes");
    }
    let mut cases = Vec::with_capacity(run.cases.len());
    for chunk in run.cases.chunks(256) {
        let rows: Vec<f32> = chunk
            .iter()
            .filter_map(|c| c.embedding.as_ref().ok())
            .flatten()
            .copied()
            .collect();
        let n = rows.len() / ckpt.config.projection_dim;
        let mut ranked = if n > 0 {
            let e = Tensor::from_vec(rows, (n, ckpt.config.projection_dim), &ckpt.device)?;
            classifier
                .predict(&e)
                .context("cannot rank the photos' embeddings")?
        } else {
            Vec::new()
        }
        .into_iter();
        for c in chunk {
            cases.push(Case {
                path: c.path.clone(),
                region: c.region.clone(),
                truth: c.truth.clone(),
                ranking: match &c.embedding {
                    Ok(_) => Ok(ranked.next().expect("one ranking per embedding")),
                    Err(e) => Err(e.clone()),
                },
            });
        }
    }
    let mut evaluation = evaluate(args, &labels, cases, run.unmatched, run.by_regions);
    evaluation.auto = source.regions.as_ref().is_some_and(Regions::is_auto);
    evaluation.missed = run.missed;
    print(&evaluation, args)?;
    if let Some(dir) = &args.report {
        let index = report::write(dir, &evaluation_view(&evaluation))?;
        cx.ui.note(&format!("wrote {}", index.display()));
    }
    // Every unreadable photo is a failed one of the run.
    Ok(Outcome::of(&run.stats, run.interrupted))
}

fn evaluate<'a>(
    args: &EvalArgs,
    labels: &'a LabelSet,
    cases: Vec<Case>,
    unmatched: Vec<(Place, String)>,
    regions: bool,
) -> Evaluation<'a> {
    let mut scored = Vec::new();
    let mut unreadable = Vec::new();
    let mut misclassified = Vec::new();
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for case in cases {
        let ranking = match case.ranking {
            Ok(r) => r,
            Err(e) => {
                let place = Place {
                    path: case.path,
                    region: case.region,
                };
                unreadable.push((place, e));
                continue;
            }
        };
        let top = &ranking.predictions[0];
        match case.truth {
            Truth::Class(truth) => {
                known.push((top.prob, top.class == truth));
                if top.class != truth {
                    misclassified.push(Misclassified {
                        path: case.path.clone(),
                        region: case.region.clone(),
                        truth,
                        guesses: ranking
                            .predictions
                            .iter()
                            .take(3)
                            .map(|p| (p.class, p.prob))
                            .collect(),
                    });
                }
                scored.push(Scored {
                    truth,
                    ranked: ranking
                        .predictions
                        .iter()
                        .take(5)
                        .map(|p| p.class)
                        .collect(),
                });
            }
            Truth::Unknown => unknown.push(top.prob),
            Truth::Unmatched(_) => unreachable!("unmatched records are not scored"),
        }
    }
    Evaluation {
        labels,
        metrics: metrics(labels.classes.len(), &scored),
        unit: if regions { "regions" } else { "photos" },
        unknown_photos: unknown.len(),
        unreadable,
        unmatched,
        auto: false,
        missed: Vec::new(),
        misclassified,
        calibration: args.calibrate.then(|| calibrate(&known, &unknown)),
    }
}

fn evaluation_view<'a>(e: &'a Evaluation) -> report::View<'a> {
    report::View {
        labels: e.labels,
        metrics: &e.metrics,
        misclassified: &e.misclassified,
    }
}

/// At most ten operating points, spread over the coverage range, for the table.
fn spread(points: &[Operating]) -> Vec<&Operating> {
    let mut out: Vec<&Operating> = Vec::new();
    for step in (1..=10).rev() {
        let want = step as f64 / 10.0;
        if let Some(p) = points.iter().rev().find(|p| p.coverage >= want) {
            if !out.iter().any(|q| q.threshold == p.threshold) {
                out.push(p);
            }
        }
    }
    out
}

fn print(e: &Evaluation, args: &EvalArgs) -> Result<()> {
    to_stdout(|out| match args.format {
        Format::Json | Format::Jsonl => write_json(out, &to_json(e, args)),
        Format::Csv | Format::Tsv => print_csv(e, args.format, out),
        Format::Table | Format::Coco => print_table(e, args, out), // coco: refused above
    })
}

fn name<'a>(e: &Evaluation<'a>, class: usize) -> &'a str {
    e.labels.classes[class].display()
}

fn to_json(e: &Evaluation, args: &EvalArgs) -> serde_json::Value {
    let m = &e.metrics;
    let mut value = json!({
        "n": m.n,
        "top1": m.top1,
        "top5": m.top5,
        "macro_precision": m.macro_precision,
        "macro_recall": m.macro_recall,
        "macro_f1": m.macro_f1,
        "per_class": m.per_class.iter().enumerate().map(|(c, pc)| json!({
            "label": name(e, c),
            "support": pc.support,
            "predicted": pc.predicted,
            "correct": pc.correct,
            "precision": pc.precision,
            "recall": pc.recall,
            "f1": pc.f1,
        })).collect::<Vec<_>>(),
        "confusions": m.top_confusions(args.confusions).iter().map(|c| json!({
            "truth": name(e, c.truth), "predicted": name(e, c.predicted), "count": c.count,
        })).collect::<Vec<_>>(),
        "confusion_matrix": {
            "labels": (0..m.confusion.len()).map(|c| name(e, c)).collect::<Vec<_>>(),
            "rows": m.confusion,
        },
        "unit": e.unit,
        "unknown_photos": e.unknown_photos,
        "unreadable": e.unreadable.iter().map(|(p, err)| p.json("error", err)).collect::<Vec<_>>(),
        "unmatched": e.unmatched.iter().map(|(p, l)| p.json("label", l)).collect::<Vec<_>>(),
    });
    if e.auto {
        value["missed"] = json!(e
            .missed
            .iter()
            .map(|(p, l)| p.json("label", l))
            .collect::<Vec<_>>());
    }
    if !e.labels.groups.is_empty() {
        let groups: Vec<Option<usize>> = e.labels.classes.iter().map(|c| c.group).collect();
        let (same, cross) = m.group_errors(&groups);
        value["group_errors"] = json!({"same_group": same, "cross_group": cross});
    }
    if let Some(points) = &e.calibration {
        let chosen = threshold_for(points, args.target_precision);
        value["calibration"] = json!({
            "target_precision": args.target_precision,
            "threshold": chosen.map(|p| p.threshold),
            "coverage": chosen.map(|p| p.coverage),
            "unknown_rejected": chosen.map(|p| p.unknown_rejected),
            "points": points.iter().map(|p| json!({
                "threshold": p.threshold,
                "precision": p.precision,
                "coverage": p.coverage,
                "unknown_rejected": p.unknown_rejected,
            })).collect::<Vec<_>>(),
        });
    }
    value
}

fn print_csv(e: &Evaluation, format: Format, out: &mut impl Write) -> io::Result<()> {
    let header = [
        "label",
        "support",
        "predicted",
        "correct",
        "precision",
        "recall",
        "f1",
    ];
    out.write_all(&csv_row(format, &header))?;
    for (c, m) in e.metrics.per_class.iter().enumerate() {
        let recall = m.recall.map_or(String::new(), |r| r.to_string());
        let fields = [
            name(e, c).to_string(),
            m.support.to_string(),
            m.predicted.to_string(),
            m.correct.to_string(),
            m.precision.to_string(),
            recall,
            m.f1.to_string(),
        ];
        out.write_all(&csv_row(format, &fields))?;
    }
    Ok(())
}

fn print_table(e: &Evaluation, args: &EvalArgs, out: &mut impl Write) -> io::Result<()> {
    let m = &e.metrics;
    writeln!(
        out,
        "{} scored; {} of unlisted dishes, {} unreadable, {} in no class",
        count(m.n, e.unit.trim_end_matches('s'), e.unit),
        e.unknown_photos,
        e.unreadable.len(),
        e.unmatched.len()
    )?;
    if e.auto {
        writeln!(
            out,
            "--regions auto: found regions paired with the truth's at box IoU >= {}; {} of \
             the truth's regions not found (listed below), found regions on no listed dish \
             count as unlisted",
            crate::eval::MATCH_IOU,
            e.missed.len()
        )?;
    }
    writeln!(
        out,
        "top-1 {:.3}  top-5 {:.3}  macro precision {:.3}  recall {:.3}  F1 {:.3}",
        m.top1, m.top5, m.macro_precision, m.macro_recall, m.macro_f1
    )?;
    if !e.labels.groups.is_empty() {
        let groups: Vec<Option<usize>> = e.labels.classes.iter().map(|c| c.group).collect();
        let (same, cross) = m.group_errors(&groups);
        writeln!(
            out,
            "errors within the right group: {same}; across groups: {cross}"
        )?;
    }
    writeln!(out, "\nphotos  predicted  precision  recall     f1  class")?;
    for (c, pc) in m.per_class.iter().enumerate() {
        let recall = pc
            .recall
            .map_or("     -".to_string(), |r| format!("{r:6.3}"));
        writeln!(
            out,
            "{:>6}  {:>9}  {:>9.3}  {recall}  {:>5.3}  {}",
            pc.support,
            pc.predicted,
            pc.precision,
            pc.f1,
            name(e, c)
        )?;
    }
    let confusions = m.top_confusions(args.confusions);
    if !confusions.is_empty() {
        writeln!(out, "\nmost confused (photos: true class -> predicted):")?;
        for c in confusions {
            writeln!(
                out,
                "{:>6}  {} -> {}",
                c.count,
                name(e, c.truth),
                name(e, c.predicted)
            )?;
        }
    }
    if let Some(points) = &e.calibration {
        writeln!(
            out,
            "\nunknown threshold (top-1 probability) on {} photos of listed and {} of unlisted dishes:",
            m.n, e.unknown_photos
        )?;
        writeln!(out, "threshold  precision  coverage  unknown rejected")?;
        for p in spread(points) {
            writeln!(
                out,
                "{:>9.4}  {:>9.3}  {:>8.3}  {:>16.3}",
                p.threshold, p.precision, p.coverage, p.unknown_rejected
            )?;
        }
        match threshold_for(points, args.target_precision) {
            Some(p) => writeln!(
                out,
                "for precision >= {}: --threshold {:.4} (coverage {:.3}, unknown rejected {:.3})",
                args.target_precision, p.threshold, p.coverage, p.unknown_rejected
            )?,
            None => writeln!(
                out,
                "no threshold reaches precision {} on this data set",
                args.target_precision
            )?,
        }
    }
    for (place, err) in &e.unreadable {
        writeln!(out, "unreadable: {}: {err}", place.display())?;
    }
    for (place, label) in &e.unmatched {
        writeln!(out, "in no class: {} ({label:?})", place.display())?;
    }
    for (place, label) in &e.missed {
        writeln!(out, "not found: {} ({label:?})", place.display())?;
    }
    Ok(())
}
