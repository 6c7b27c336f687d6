//! `foodclip preview`: write the exact picture the model sees for one photo.

use super::context::Context;
use super::flags::PreviewArgs;
use super::Outcome;
use crate::checkpoint::load_preprocess;
use crate::fsutil::write_atomically;
use anyhow::{Context as _, Result};
use std::io;

pub(super) fn run(cx: &Context, args: &PreviewArgs) -> Result<Outcome> {
    let preprocess = load_preprocess(&cx.source()?, &cx.hub)?;
    let seen = match preprocess.load(&args.image, args.max_pixels, cx.fidelity) {
        Ok(img) => img,
        Err(e) => {
            eprintln!("foodclip: {}: {e:#}", args.image.display());
            return Ok(Outcome::SomeFailed);
        }
    };
    let format = image::ImageFormat::from_path(&args.output).unwrap_or(image::ImageFormat::Png);
    let mut bytes = io::Cursor::new(Vec::new());
    seen.write_to(&mut bytes, format)
        .with_context(|| format!("cannot encode {} as {format:?}", args.output.display()))?;
    write_atomically(&args.output, bytes.get_ref())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(Outcome::Success)
}
