//! `foodclip embed`: print L2-normalised image embeddings.

use super::context::Context;
use super::flags::EmbedArgs;
use super::job::{embedder, Job, Listed};
use super::ui::default_format;
use super::Outcome;
use crate::output::{Format, Layout, RecordKind};
use anyhow::{bail, Context as _, Result};

pub(super) fn run(cx: &Context, args: &EmbedArgs) -> Result<Outcome> {
    let format = args
        .format
        .unwrap_or_else(|| default_format(args.input.output.as_deref(), Format::Jsonl));
    if format == Format::Coco {
        bail!("--format coco is for classify results; embed writes table, jsonl, json, csv or tsv");
    }
    let regions = args.input.regions.load()?;
    let layout = Layout {
        regions: regions.is_some(),
        ..Layout::new(format, RecordKind::Embedding)
    };
    let job = Job::prepare(
        &args.input,
        layout,
        Listed::Inputs,
        regions.as_ref(),
        &cx.ui,
    )?;
    let ckpt = cx.model(false)?;
    if let Some(file) = &args.adapter {
        cx.check_adapter(&ckpt, &crate::adapter::Adapter::load(file)?)?;
    }
    let rows = |e: &candle_core::Tensor| Ok(e.to_vec2::<f32>()?);
    let embedder = embedder(
        &ckpt,
        None,
        regions.as_ref(),
        &args.input.batch,
        cx.fidelity,
    );
    job.run(embedder, &cx.ui, None, rows, |printer, path, records| {
        for (region, record) in &records {
            printer
                .embedding(path, region.as_ref(), record)
                .context("cannot write output")?;
        }
        Ok(())
    })
}
