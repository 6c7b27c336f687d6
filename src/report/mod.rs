//! The HTML report of `foodclip eval --report DIR`: one self-contained `index.html` (pictures
//! inlined as data URIs) with the headline figures, the confusion matrix as an image, per-class
//! accuracy bars, and thumbnails of misclassified photos with their top-3 guesses; and the page of
//! `foodclip leftovers --report DIR` ([`leftovers`]).

pub mod forecast;
pub mod leftovers;

use crate::eval::Metrics;
use crate::fsutil::write_atomically;
use crate::labels::LabelSet;
use crate::markup::{base64_image, escape};
use crate::preprocess::{decode::decode, jpeg::reduction, Rect, DEFAULT_MAX_PIXELS};
use crate::regions::Region;
use anyhow::{Context, Result};
use image::{imageops::FilterType, ImageFormat, Rgb, RgbImage};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Thumbnails shown at most; the rest are counted.
const MAX_THUMBNAILS: usize = 120;
/// Longest side of a thumbnail, in pixels.
const THUMBNAIL: u32 = 160;

/// A photo whose best guess was wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Misclassified {
    /// The photo.
    pub path: PathBuf,
    /// The region of it, when regions were scored: its box is the thumbnail.
    pub region: Option<Region>,
    /// Its true class.
    pub truth: usize,
    /// The best three classes with their probabilities.
    pub guesses: Vec<(usize, f32)>,
}

/// What the report shows.
pub struct View<'a> {
    /// The label file scored against.
    pub labels: &'a LabelSet,
    /// The metrics.
    pub metrics: &'a Metrics,
    /// The misclassified photos.
    pub misclassified: &'a [Misclassified],
}

/// Writes `DIR/index.html` (atomically) and returns its path.
pub fn write(dir: &Path, view: &View) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report folder {}", dir.display()))?;
    let index = dir.join("index.html");
    write_atomically(&index, render(view)?.as_bytes())
        .with_context(|| format!("cannot write {}", index.display()))?;
    Ok(index)
}

fn render(view: &View) -> Result<String> {
    let m = view.metrics;
    let name = |c: usize| escape(view.labels.classes[c].display());
    let mut h = String::new();
    h.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>foodclip eval</title><style>",
        "body{font-family:system-ui,sans-serif;margin:24px;color:#222}",
        "h1{font-size:22px}h2{font-size:18px;margin-top:28px}",
        ".figures span{display:inline-block;margin-right:28px;font-size:18px}",
        ".figures b{font-size:26px}",
        "table.bars td{padding:1px 6px;font-size:13px;white-space:nowrap}",
        ".bar{background:#e3e8f0;width:240px;height:12px}",
        ".bar div{background:#3b6fb6;height:12px}",
        ".matrix{image-rendering:pixelated;border:1px solid #999}",
        ".thumbs{display:flex;flex-wrap:wrap;gap:12px}",
        ".thumb{width:180px;font-size:12px;overflow-wrap:anywhere}",
        ".thumb img{max-width:160px;max-height:160px;display:block}",
        ".truth{color:#1a7f37}.wrong{color:#b42318}",
        "</style></head><body>\n<h1>foodclip eval</h1>\n"
    ));
    writeln!(
        h,
        "<p>{} on {} photos</p>\n<div class=\"figures\"><span>top-1 <b>{:.1}%</b></span>\
         <span>top-5 <b>{:.1}%</b></span><span>macro F1 <b>{:.3}</b></span></div>",
        escape(&view.labels.path.display().to_string()),
        m.n,
        m.top1 * 100.0,
        m.top5 * 100.0,
        m.macro_f1
    )?;

    let classes = m.confusion.len();
    let cell = (600 / classes.max(1)).clamp(2, 60) as u32;
    writeln!(
        h,
        "<h2>Confusion matrix</h2>\n<p>Rows: true class; columns: predicted class; both in \
         label-file order (numbers below). Darker: a larger share of the row's photos.</p>\n\
         <img class=\"matrix\" alt=\"confusion matrix\" width=\"{0}\" height=\"{0}\" src=\"data:image/png;base64,{1}\">",
        cell * classes as u32,
        base64_image(&confusion_image(&m.confusion, cell), ImageFormat::Png)?
    )?;

    h.push_str("<h2>Per-class accuracy (recall)</h2>\n<table class=\"bars\">\n");
    for (c, pc) in m.per_class.iter().enumerate() {
        let (width, text) = match pc.recall {
            Some(r) => (r * 100.0, format!("{:.0}% of {}", r * 100.0, pc.support)),
            None => (0.0, "no photos".to_string()),
        };
        writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td><div class=\"bar\"><div style=\"width:{width:.1}%\"></div></div></td><td>{text}</td></tr>",
            c + 1,
            name(c)
        )?;
    }
    h.push_str("</table>\n");

    writeln!(
        h,
        "<h2>Misclassified photos ({})</h2>\n<div class=\"thumbs\">",
        view.misclassified.len()
    )?;
    for miss in view.misclassified.iter().take(MAX_THUMBNAILS) {
        let area = miss.region.as_ref().and_then(Region::area);
        let picture = match thumbnail(&miss.path, area) {
            Ok(data) => format!("<img alt=\"\" src=\"data:image/jpeg;base64,{data}\">"),
            Err(e) => format!("<p>({})</p>", escape(&format!("{e:#}"))),
        };
        let guesses: String = miss
            .guesses
            .iter()
            .map(|&(c, p)| {
                let class = if c == miss.truth { "truth" } else { "wrong" };
                format!("<li class=\"{class}\">{} {:.1}%</li>", name(c), p * 100.0)
            })
            .collect();
        // The file and its folder; the whole path on hover.
        let short: Vec<String> = miss
            .path
            .components()
            .rev()
            .take(2)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let mut short: Vec<String> = short.into_iter().rev().collect();
        if let Some(r) = &miss.region {
            short.push(format!(" [{}]", r.tag()));
        }
        writeln!(
            h,
            "<div class=\"thumb\">{picture}<div title=\"{}\">{}</div><div class=\"truth\">is: {}</div><ol>{guesses}</ol></div>",
            escape(&miss.path.display().to_string()),
            escape(&short.join("/").replace("/ [", " [")),
            name(miss.truth)
        )?;
    }
    h.push_str("</div>\n");
    if view.misclassified.len() > MAX_THUMBNAILS {
        writeln!(
            h,
            "<p>and {} more (see the JSON output)</p>",
            view.misclassified.len() - MAX_THUMBNAILS
        )?;
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

/// The matrix as a heat map: each cell's shade is its share of the row's photos; cells of 8
/// pixels or more get grid lines.
fn confusion_image(confusion: &[Vec<usize>], cell: u32) -> RgbImage {
    let n = confusion.len() as u32;
    let mut img = RgbImage::from_pixel(n * cell, n * cell, Rgb([255, 255, 255]));
    if cell >= 8 {
        for (x, y, p) in img.enumerate_pixels_mut() {
            if x % cell == 0 || y % cell == 0 {
                *p = Rgb([225, 225, 225]);
            }
        }
    }
    for (r, row) in confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (c, &count) in row.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let share = count as f32 / total as f32;
            let shade = |light: f32, dark: f32| (light + (dark - light) * share).round() as u8;
            let color = Rgb([shade(225.0, 20.0), shade(235.0, 60.0), shade(250.0, 140.0)]);
            let edge = u32::from(cell >= 8);
            for y in edge..cell {
                for x in edge..cell {
                    img.put_pixel(c as u32 * cell + x, r as u32 * cell + y, color);
                }
            }
        }
    }
    img
}

/// A JPEG thumbnail of a photo, upright, or of the `area` of it, base64.
fn thumbnail(path: &Path, area: Option<Rect>) -> Result<String> {
    let bytes = std::fs::read(path).context("cannot read")?;
    let short = |(w, h): (u32, u32)| match area {
        Some(a) => a.size().0.min(a.size().1),
        None => w.min(h),
    };
    let (img, full) = decode(&bytes, DEFAULT_MAX_PIXELS, |f| {
        reduction(short(f), THUMBNAIL)
    })?;
    let img = match area {
        // The area in the pixels of the (maybe shrunk) picture.
        Some(a) => {
            let (kx, ky) = (
                img.width() as f64 / full.0 as f64,
                img.height() as f64 / full.1 as f64,
            );
            let scaled = Rect {
                x1: (a.x1 as f64 * kx) as u32,
                y1: (a.y1 as f64 * ky) as u32,
                x2: ((a.x2 as f64 * kx).ceil() as u32).min(img.width()),
                y2: ((a.y2 as f64 * ky).ceil() as u32).min(img.height()),
            };
            scaled.cut(&img)
        }
        None => img,
    };
    let small = image::DynamicImage::ImageRgb8(img)
        .resize(THUMBNAIL, THUMBNAIL, FilterType::Triangle)
        .to_rgb8();
    base64_image(&small, ImageFormat::Jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_shades_follow_row_shares() {
        let img = confusion_image(&[vec![3, 1], vec![0, 0]], 2);
        assert_eq!(img.dimensions(), (4, 4));
        let dark = img.get_pixel(0, 0)[0];
        let light = img.get_pixel(2, 0)[0];
        assert!(dark < light && light < 255, "{dark} {light}");
        assert_eq!(img.get_pixel(0, 2), &Rgb([255, 255, 255]));
        let grid = confusion_image(&[vec![1]], 8);
        assert_eq!(grid.get_pixel(0, 3), &Rgb([225, 225, 225]));
        assert_ne!(grid.get_pixel(3, 3), &Rgb([255, 255, 255]));
    }
}
