//! `foodclip adapt`: learn a kitchen's dishes from a few labelled photos (see [`crate::adapter`]),
//! choosing by cross-validation on those photos alone, and write the adapter.

use super::context::Context;
use super::dataset::{DataSet, Labelled, Place};
use super::flags::AdaptArgs;
use super::ui::{to_stdout, write_json};
use super::Outcome;
use crate::adapter::{cross_validate, views, Adapter, Choice, Method, Report, Support};
use crate::checkpoint::Checkpoint;
use crate::classify::embed_pictures;
use crate::eval::Truth;
use crate::fsutil::{check_writable, path_bytes, PathJson};
use crate::labels::{LabelSet, Templates};
use crate::output::Format;
use crate::preprocess::Rect;
use crate::text::count;
use anyhow::{bail, Context as _, Result};
use rayon::prelude::*;
use serde_json::json;
use std::io::Write;

pub(super) fn run(cx: &Context, args: &AdaptArgs) -> Result<Outcome> {
    if !matches!(args.format, Format::Table | Format::Json | Format::Jsonl) {
        bail!("adapt reports as table or json");
    }
    check_writable("--output", &args.output)?;
    let old = args.update.as_deref().map(Adapter::load).transpose()?;
    let labels = match (&args.labels, &old) {
        (Some(file), _) => LabelSet::load(file)?,
        (None, Some(a)) => a.labels.clone(),
        (None, None) => bail!("give --labels FILE (or --update ADAPTER)"),
    };
    let templates = Templates::from_args(&args.templates.templates)?;
    let mut source = DataSet::open(cx, &args.data, &labels)?;
    if args.augment > 0 && source.stored.is_some() {
        bail!("--augment makes new views of the photos; it cannot work from --embeddings");
    }
    let ckpt = std::sync::Arc::new(cx.model(false)?);
    if let Some(a) = &old {
        cx.check_adapter(&ckpt, a)?;
    }
    let sink = args.data.stored.prepare(
        cx,
        source.stored.as_ref().map(|s| s.checkpoint.as_str()),
        &ckpt,
    )?;
    cx.warn_language(&ckpt, &labels);
    let dim = ckpt.config.projection_dim;
    let classifier = cx.classifier(&ckpt, &labels, &templates)?;
    let dishes = super::auto::Dishes::new(&labels, &classifier, &templates, &args.data.regions);
    super::auto::bind(cx, source.regions.as_mut(), &ckpt, &dishes)?;
    let mut text = classifier.embeddings().flatten_all()?.to_vec1::<f32>()?;
    let run = source.embed(cx, &ckpt, &args.data.batch, sink)?;
    let mut unreadable = Vec::new();
    let mut unknown = 0;
    let mut support = Support {
        features: Vec::new(),
        classes: Vec::new(),
        dim,
    };
    let mut used: Vec<&Labelled> = Vec::new();
    for case in &run.cases {
        match (&case.truth, &case.embedding) {
            (_, Err(e)) => unreadable.push((case, e.clone())),
            (Truth::Class(c), Ok(e)) => {
                support.features.extend(e);
                support.classes.push(*c);
                used.push(case);
            }
            (_, Ok(_)) => unknown += 1,
        }
    }
    if args.augment > 0 {
        support.features = augmented(cx, &ckpt, &used, args)?;
    }
    if unknown > 0 {
        let photos = match unknown {
            1 => "1 photo of a dish not in the list (`unknown`) is".to_string(),
            n => format!("{n} photos of dishes not in the list (`unknown`) are"),
        };
        cx.ui.warn(&format!("{photos} not part of an adapter"));
    }
    if let Some(old) = &old {
        merge(old, &labels, &mut text, &mut support)?;
    }
    let mut without = Vec::new();
    for (c, class) in labels.classes.iter().enumerate() {
        if !support.classes.contains(&c) {
            without.push(class.display().to_string());
        }
    }
    if !without.is_empty() {
        cx.ui.warn(&format!(
            "{} no photos and keep their zero-shot embedding: {}",
            match without.len() {
                1 => "1 class has".to_string(),
                n => format!("{n} classes have"),
            },
            without.join(", ")
        ));
    }
    let choice = match (args.alpha, args.beta) {
        (Some(alpha), Some(beta)) => {
            if !(alpha >= 0.0 && alpha.is_finite() && beta > 0.0 && beta.is_finite()) {
                bail!("--alpha must be 0 or more and --beta more than 0");
            }
            Choice::Fixed { alpha, beta }
        }
        _ => Choice::Search { fit: args.fit },
    };
    let temperature = ckpt.model.logit_scale().exp();
    let chosen = cross_validate(&support, &text, temperature, choice)?;
    let adapter = Adapter {
        checkpoint: cx.fingerprint(&ckpt)?,
        labels,
        text,
        support,
        keys: chosen.keys,
        probe: chosen.probe,
        report: chosen.report,
    };
    adapter.save(&args.output)?;
    let left = LeftOut {
        without: &without,
        unreadable: &unreadable,
        unmatched: &run.unmatched,
    };
    print(args, &adapter, &left)?;
    Ok(Outcome::of(&run.stats, run.interrupted))
}

/// Each support photo's embedding averaged over `--augment` views of it (its region, or the
/// whole photo), with the progress bar.
fn augmented(
    cx: &Context,
    ckpt: &Checkpoint,
    cases: &[&Labelled],
    args: &AdaptArgs,
) -> Result<Vec<f32>> {
    let dim = ckpt.config.projection_dim;
    let progress = cx.ui.progress_bar(Some(cases.len()), "photos");
    let mut out = Vec::with_capacity(cases.len() * dim);
    for chunk in cases.chunks(args.data.batch.batch_size as usize) {
        let pictures = chunk
            .par_iter()
            .map(|case| {
                let area = case.region.as_ref().and_then(|r| r.area());
                let shortest = |full: (u32, u32)| {
                    let (w, h) = area.unwrap_or(Rect::whole(full)).size();
                    w.min(h) / 2
                };
                let pre = &ckpt.preprocess;
                let photo = pre.decode_for(
                    &case.path,
                    args.data.batch.max_pixels,
                    cx.fidelity,
                    shortest,
                )?;
                let area = area.unwrap_or(Rect::whole(photo.full));
                // Each photo's own stream of views, the same in every run with this seed.
                let seed = path_bytes(&case.path)
                    .iter()
                    .chain(&case.region.as_ref().map_or(0, |r| r.index).to_le_bytes())
                    .fold(args.seed ^ 0xcbf2_9ce4_8422_2325, |h, &b| {
                        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
                    });
                views(pre, &photo, area, args.augment as usize, seed, cx.fidelity)
            })
            .collect::<Result<Vec<_>>>()
            .context("cannot make the augmented views")?;
        for views in pictures {
            let e = embed_pictures(ckpt, &views)?.mean(0)?;
            let norm = e.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
            out.extend(e.to_vec1::<f32>()?.into_iter().map(|v| v / norm));
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    Ok(out)
}

/// `--update`: the old adapter's photos join the support set (their classes found by name in
/// the new label file, which must keep every old class), and its classes keep their embeddings.
fn merge(old: &Adapter, labels: &LabelSet, text: &mut [f32], support: &mut Support) -> Result<()> {
    let d = support.dim;
    let mut map = Vec::with_capacity(old.labels.classes.len());
    for (i, class) in old.labels.classes.iter().enumerate() {
        let Some(c) = labels
            .classes
            .iter()
            .position(|n| n.display() == class.display())
        else {
            bail!(
                "{} drops the class {:?} of the adapter; keep every class to update it",
                labels.path.display(),
                class.display()
            );
        };
        text[c * d..][..d].copy_from_slice(&old.text[i * d..][..d]);
        map.push(c);
    }
    support.features.extend(&old.support.features);
    support
        .classes
        .extend(old.support.classes.iter().map(|&c| map[c]));
    Ok(())
}

/// What an adapter was made without.
struct LeftOut<'a> {
    /// Classes with no photo.
    without: &'a [String],
    /// Photos that could not be read, with why.
    unreadable: &'a [(&'a Labelled, String)],
    /// Photos (or regions) whose label names no class, with the label.
    unmatched: &'a [(Place, String)],
}

/// The choice, the cross-validated top-1 of zero-shot and of the adapter, and what was left out.
fn print(args: &AdaptArgs, adapter: &Adapter, left: &LeftOut) -> Result<()> {
    let (without, unreadable) = (left.without, left.unreadable);
    let r: &Report = &adapter.report;
    let classes = adapter.labels.classes.len();
    to_stdout(|out| {
        if args.format != Format::Table {
            return write_json(
                out,
                &json!({
                    "adapter": PathJson(&args.output),
                    "classes": classes,
                    "report": r,
                    "classes_without_photos": without,
                    "unreadable": unreadable.iter().map(|(c, e)| json!({"path": PathJson(&c.path), "error": e})).collect::<Vec<_>>(),
                    "unmatched": left.unmatched.iter().map(|(p, l)| p.json("label", l)).collect::<Vec<_>>(),
                }),
            );
        }
        let how = if r.folds == r.photos {
            "leave-one-out".to_string()
        } else {
            format!("{}-fold", r.folds)
        };
        writeln!(
            out,
            "{} of {}; {how} cross-validation on them alone",
            count(r.photos, "photo", "photos"),
            count(classes - without.len(), "class", "classes")
        )?;
        writeln!(out, "zero-shot top-1        {:.3}", r.zero_shot_top1)?;
        writeln!(out, "cache top-1            {:.3}", r.cache_top1)?;
        if let Some(f) = r.fitted_top1 {
            writeln!(out, "fine-tuned keys top-1  {f:.3}")?;
        }
        if let Some(p) = r.prototype_top1 {
            writeln!(out, "class means top-1      {p:.3}")?;
        }
        if let Some(p) = r.probe_top1 {
            writeln!(out, "linear probe top-1     {p:.3}")?;
        }
        match r.method {
            Method::ZeroShot => writeln!(
                out,
                "adaptation does not beat zero-shot here: the adapter keeps zero-shot"
            )?,
            Method::Prototype => writeln!(
                out,
                "chosen: class means (each class's mean photo embedding in place of its names)"
            )?,
            Method::LinearProbe => writeln!(
                out,
                "chosen: linear probe (class vectors trained on the photos, from their means)"
            )?,
            m => writeln!(
                out,
                "chosen: {} (alpha {}, beta {})",
                if m == Method::TipAdapterF {
                    "Tip-Adapter-F, fine-tuned keys"
                } else {
                    "Tip-Adapter cache"
                },
                r.alpha,
                r.beta
            )?,
        }
        for (case, e) in unreadable {
            writeln!(out, "unreadable: {}: {e}", case.path.display())?;
        }
        for (place, label) in left.unmatched {
            writeln!(out, "in no class: {} ({label:?})", place.display())?;
        }
        writeln!(out, "wrote {}", args.output.display())
    })
}
