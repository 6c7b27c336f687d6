//! `foodclip classify`: rank the classes of a label file for each photo.

use super::context::Context;
use super::flags::ClassifyArgs;
use super::job::{embedder, Job, Listed, Record, Stored};
use super::ui::default_format;
use super::Outcome;
use crate::classify::{OpenSet, Ranking, Shown};
use crate::draw::{file_for, write_svg, Mark};
use crate::eval::ClassNames;
use crate::labels::LabelSet;
use crate::output::{Format, Layout, RecordKind};
use crate::regions::Regions;
use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::HashSet;

pub(super) fn run(cx: &Context, args: &ClassifyArgs) -> Result<Outcome> {
    let (labels, adapter, templates) = cx.classes(&args.classes)?;
    if args.group_scores && labels.groups.is_empty() {
        bail!(
            "--group-scores: {} has no [group] header lines",
            labels.path.display()
        );
    }
    let open_set = OpenSet::new(args.threshold, args.min_margin)
        .map_err(|e| anyhow!("--threshold, --min-margin: {e}"))?;
    let mut regions = args.input.regions.load_auto()?;
    let mut stored = args
        .stored
        .load(cx, &args.input.regions, regions.as_ref())?;
    let format = args
        .format
        .unwrap_or_else(|| default_format(args.input.output.as_deref(), Format::Table));
    let categories = match format {
        Format::Coco => coco_categories(regions.as_ref(), &labels)?,
        _ => Vec::new(),
    };
    let layout = Layout {
        groups: !labels.groups.is_empty(),
        decision: open_set.is_active(),
        regions: regions.is_some() || stored.as_ref().is_some_and(Stored::by_regions),
        ..Layout::new(format, RecordKind::Predictions)
    };
    let listed = match &stored {
        None => Listed::Inputs,
        Some(Stored::File(s)) => Listed::Photos(s.photos()),
        Some(Stored::Db(_)) => Listed::Streamed,
    };
    let mut job = Job::prepare(&args.input, layout, listed, regions.as_ref(), &cx.ui)?;
    let ckpt = std::sync::Arc::new(cx.model(stored.is_some())?);
    let made_by = stored.as_ref().map(Stored::checkpoint);
    let sink = args.stored.prepare(cx, made_by, &ckpt)?;
    cx.warn_language(&ckpt, &labels);
    let classifier = cx.scorer(&ckpt, &labels, &templates, adapter.as_ref())?;
    let dishes = super::auto::Dishes::new(&labels, &classifier, &templates, &args.input.regions);
    super::auto::bind(cx, regions.as_mut(), &ckpt, &dishes)?;
    let shown = Shown {
        open_set,
        top_k: args.top_k,
        group_scores: args.group_scores,
    };
    let rows = |e: &candle_core::Tensor| -> Result<Vec<_>> {
        let mut rankings = classifier
            .predict(e)
            .context("cannot rank the photos' embeddings")?;
        rankings.iter_mut().for_each(|r| shown.apply(r));
        Ok(rankings)
    };
    let batch = &args.input.batch;
    let embedder = match &mut stored {
        Some(Stored::Db(db)) => db.embedder(&ckpt, batch, job.keep()),
        Some(Stored::File(s)) => embedder(&ckpt, Some(s), None, batch, cx.fidelity),
        None => embedder(&ckpt, None, regions.as_ref(), batch, cx.fidelity),
    };
    if let Some(dir) = &args.draw {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--draw: cannot create {}", dir.display()))?;
    }
    let mut drawn = HashSet::new();
    let job = job.with_categories(categories);
    job.run(embedder, &cx.ui, sink, rows, |printer, path, records| {
        for (region, record) in &records {
            printer
                .predictions(path, region.as_ref(), record)
                .context("cannot write output")?;
        }
        if let Some(dir) = &args.draw {
            let file = file_for(dir, path, &mut drawn);
            if let Err(e) = write_svg(&file, path, &marks(&records), batch.max_pixels) {
                cx.ui.warn(&format!("--draw: {}: {e:#}", path.display()));
            }
        }
        Ok(())
    })
}

/// The boxes of a photo's records with their best labels (whole photos: a box around it all).
fn marks(records: &[Record<Ranking>]) -> Vec<Mark> {
    records
        .iter()
        .filter_map(|(region, record)| {
            let rect = match region {
                Some(r) => r.rect?,
                None => [0, 0, u32::MAX, u32::MAX],
            };
            let (text, ok) = match record {
                Ok(r) => {
                    let best = r
                        .decision
                        .clone()
                        .unwrap_or_else(|| r.predictions[0].label.clone());
                    let prob = r.predictions[0].prob * 100.0;
                    (format!("{best} {prob:.0}%"), true)
                }
                Err(e) => (e.clone(), false),
            };
            let prefix = region.as_ref().and_then(|r| r.name.clone());
            let text = prefix.map_or(text.clone(), |p| format!("{p}: {text}"));
            let mask = region.as_ref().and_then(|r| r.segmentation.clone());
            Some(Mark {
                rect,
                text,
                ok,
                mask,
            })
        })
        .collect()
}

/// Each class's COCO category id (by name or synonym), for `--format coco`.
/// Regions found by `--regions auto` take the label file's classes as categories, numbered
/// from 1 in the file's order.
fn coco_categories(regions: Option<&Regions>, labels: &LabelSet) -> Result<Vec<Option<u64>>> {
    if regions.is_some_and(Regions::is_auto) {
        return Ok((1..=labels.classes.len() as u64).map(Some).collect());
    }
    let Some(categories) = regions.and_then(|r| r.categories.as_ref()) else {
        bail!(
            "--format coco writes results for regions read from COCO JSON or found by \
             --regions auto: give --regions FILE.json or --regions auto"
        );
    };
    let names = ClassNames::new(labels);
    let mut by_class = vec![None; labels.classes.len()];
    for (id, name) in categories {
        if let Some(c) = names.class(name) {
            by_class[c].get_or_insert(*id);
        }
    }
    if by_class.iter().all(Option::is_none) {
        bail!(
            "--format coco: no category of the COCO file names a class of {}",
            labels.path.display()
        );
    }
    Ok(by_class)
}
