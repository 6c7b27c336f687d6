//! `foodclip preview`: write the exact picture the model sees for one photo, or the photo with
//! its regions' boxes drawn (to fit a tray layout before a run).

use super::context::Context;
use super::flags::PreviewArgs;
use super::Outcome;
use crate::checkpoint::load_preprocess;
use crate::draw::{self, Mark};
use crate::fsutil::write_atomically;
use crate::regions::Regions;
use anyhow::{Context as _, Result};
use std::io;

pub(super) fn run(cx: &Context, args: &PreviewArgs) -> Result<Outcome> {
    if args.regions.is_auto() {
        return class_map(cx, args);
    }
    let regions = args.regions.load()?;
    let mut failed = false;
    let seen = match &regions {
        Some(regions) => boxes(cx, args, regions, &mut failed),
        None => {
            let preprocess = load_preprocess(&cx.source()?, &cx.hub)?;
            preprocess
                .load(&args.image, args.max_pixels, cx.fidelity)
                .map(Seen::Picture)
        }
    };
    let seen = match seen {
        Ok(seen) => seen,
        Err(e) => {
            eprintln!("foodclip: {}: {e:#}", args.image.display());
            return Ok(Outcome::SomeFailed);
        }
    };
    write(args, seen)?;
    Ok(if failed {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

/// Writes what preview made to `--output`, atomically.
fn write(args: &PreviewArgs, seen: Seen) -> Result<()> {
    let bytes = match seen {
        Seen::Svg(text) => text.into_bytes(),
        Seen::Picture(img) => {
            let format =
                image::ImageFormat::from_path(&args.output).unwrap_or(image::ImageFormat::Png);
            let mut bytes = io::Cursor::new(Vec::new());
            img.write_to(&mut bytes, format).with_context(|| {
                format!("cannot encode {} as {format:?}", args.output.display())
            })?;
            bytes.into_inner()
        }
    };
    write_atomically(&args.output, &bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))
}

/// `--regions auto`: the photo with each canvas pixel of a dish tinted in its class's colour,
/// and a line per dish found on stderr (its colour and share of the photo).
fn class_map(cx: &Context, args: &PreviewArgs) -> Result<Outcome> {
    let Some(labels_file) = &args.labels else {
        anyhow::bail!("preview --regions auto draws a class map of the dishes: give --labels FILE");
    };
    let labels = crate::labels::LabelSet::load(labels_file)?;
    let templates = crate::labels::Templates::from_args(&[])?;
    let ckpt = std::sync::Arc::new(cx.model(false)?);
    let classifier = cx.scorer(&ckpt, &labels, &templates, None)?;
    let dishes = super::auto::Dishes::new(&labels, &classifier, &templates, &args.regions);
    let finder = super::auto::finder(cx, &ckpt, &dishes)?;
    let (mut img, _) = match draw::picture(&args.image, args.max_pixels) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("foodclip: {}: {e:#}", args.image.display());
            return Ok(Outcome::SomeFailed);
        }
    };
    let map = crate::regions::auto::class_map(&ckpt, &img, &finder.embeddings, &finder.settings)?;
    let dishes = finder.names.len();
    let mut counts = vec![0usize; dishes];
    for &l in &map.labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    for (x, y, px) in img.enumerate_pixels_mut() {
        let class = map.labels[map.cell(x, y, map.scale)] as usize;
        if class < dishes {
            let tint = draw::colour(class);
            for (v, t) in px.0.iter_mut().zip(tint) {
                *v = ((u16::from(*v) + u16::from(t)) / 2) as u8;
            }
        }
    }
    let total = map.labels.len().max(1) as f64;
    for (class, &n) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
        let [r, g, b] = draw::colour(class);
        cx.ui.note(&format!(
            "{}: #{r:02x}{g:02x}{b:02x}, {:.1}% of the photo",
            finder.names[class],
            n as f64 * 100.0 / total
        ));
    }
    write(args, Seen::Picture(img))?;
    Ok(Outcome::Success)
}

/// What preview writes.
enum Seen {
    /// A picture, in the output's format.
    Picture(image::RgbImage),
    /// An SVG drawing.
    Svg(String),
}

/// The photo with the boxes of `regions` (SVG, named, when the output ends in `.svg`), and one
/// line per region on stderr: its name, box, and any problem.
/// `failed` is set when a region has no valid box.
fn boxes(cx: &Context, args: &PreviewArgs, regions: &Regions, failed: &mut bool) -> Result<Seen> {
    let (mut img, full) = draw::picture(&args.image, args.max_pixels)?;
    let placed = regions
        .place(crate::regions::Photo::File(&args.image), full)
        .ok_or_else(|| anyhow::anyhow!("no regions for this photo"))?;
    let mut marks = Vec::new();
    for (region, result) in &placed {
        let tag = region.tag();
        match result {
            Ok(clipped) => {
                let rect = region.rect.expect("a placed region has its box");
                let note = if *clipped { " (clipped)" } else { "" };
                cx.ui.note(&format!("region {tag}: {rect:?}{note}"));
                marks.push(Mark {
                    rect,
                    text: tag,
                    ok: true,
                    mask: None,
                });
            }
            Err(e) => {
                *failed = true;
                eprintln!("foodclip: {} [region {tag}]: {e}", args.image.display());
            }
        }
    }
    let svg = args
        .output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if svg {
        return Ok(Seen::Svg(draw::svg(&img, full, &marks)?));
    }
    draw::boxes(&mut img, full, &marks);
    Ok(Seen::Picture(img))
}
