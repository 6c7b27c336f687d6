//! `foodclip classify`: rank the classes of a label file for each photo.

use super::context::Context;
use super::flags::ClassifyArgs;
use super::job::{embedder, Job};
use super::Outcome;
use crate::classify::OpenSet;
use crate::labels::{LabelSet, Templates};
use crate::output::{Format, Layout, RecordKind};
use anyhow::{bail, Context as _, Result};
use std::io::{self, IsTerminal};

pub(super) fn run(cx: &Context, args: &ClassifyArgs) -> Result<Outcome> {
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
    let layout = Layout {
        groups: !labels.groups.is_empty(),
        decision: open_set.is_active(),
        ..Layout::new(
            args.format.unwrap_or(default_format),
            RecordKind::Predictions,
        )
    };
    let listed = stored.as_ref().map(|s| s.paths.clone());
    let job = Job::prepare(&args.input, layout, listed)?;
    let ckpt = cx.model(stored.is_some())?;
    let sink = args.stored.prepare(cx, stored.as_ref(), &ckpt)?;
    cx.warn_language(&ckpt, &labels);
    let classifier = cx.classifier(&ckpt, &labels, &templates)?;
    let (top_k, group_scores) = (args.top_k, args.group_scores);
    let rows = |e: &candle_core::Tensor| -> Result<Vec<_>> {
        let mut rankings = classifier
            .predict(e)
            .context("cannot rank the photos' embeddings")?;
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
    let embedder = embedder(&ckpt, stored.as_ref(), &args.input.batch, cx.fidelity);
    job.run(embedder, &cx.ui, sink, rows, |printer, path, record| {
        printer.predictions(path, &record)
    })
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
