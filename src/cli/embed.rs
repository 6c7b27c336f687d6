//! `foodclip embed`: print L2-normalised image embeddings.

use super::context::Context;
use super::flags::EmbedArgs;
use super::job::{embedder, Job};
use super::Outcome;
use crate::output::{Layout, RecordKind};
use anyhow::Result;

pub(super) fn run(cx: &Context, args: &EmbedArgs) -> Result<Outcome> {
    let job = Job::prepare(
        &args.input,
        Layout::new(args.format, RecordKind::Embedding),
        None,
    )?;
    let ckpt = cx.model(false)?;
    let rows = |e: &candle_core::Tensor| Ok(e.to_vec2::<f32>()?);
    let embedder = embedder(&ckpt, None, &args.input.batch, cx.fidelity);
    job.run(embedder, &cx.ui, None, rows, |printer, path, record| {
        printer.embedding(path, &record)
    })
}
