//! Drawing trays: a photo with its regions' boxes and their best labels, as SVG (the photo
//! downscaled and embedded; text left to the viewer's fonts, so Hangul stays legible) or drawn
//! into the picture itself (boxes only) for a PNG.

use crate::fsutil::write_atomically;
use crate::markup::{base64_image, escape};
use crate::preprocess::{decode::decode, jpeg::reduction};
use anyhow::{Context, Result};
use image::{imageops::FilterType, DynamicImage, ImageFormat, Rgb, RgbImage, RgbaImage};
use std::path::{Path, PathBuf};

/// Longest side of the picture embedded in a drawing, in pixels.
pub const PICTURE: u32 = 1024;

/// One box to draw, in pixels of the upright full-size photo (`x2`/`y2` exclusive).
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// `[x1, y1, x2, y2]`.
    pub rect: [u32; 4],
    /// Its caption (the best label and probability, or an error).
    pub text: String,
    /// Whether the region has an answer (drawn in colour) or failed (grey).
    pub ok: bool,
    /// The region's mask on the full photo, tinted over it (`--regions auto`).
    pub mask: Option<crate::regions::mask::Rle>,
}

/// Box colours, one per region in turn (distinct on photos of food).
const COLOURS: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [255, 225, 25],
];

/// The photo at `path`, upright, at most [`PICTURE`] pixels a side, and its full upright size.
pub fn picture(path: &Path, max_pixels: u64) -> Result<(RgbImage, (u32, u32))> {
    let bytes = std::fs::read(path).context("cannot read")?;
    let (img, full) = decode(&bytes, max_pixels, |(w, h)| {
        // The short side that keeps the long one at PICTURE.
        let short = (PICTURE as u64 * w.min(h) as u64 / w.max(h).max(1) as u64) as u32;
        reduction(w.min(h), short.max(1))
    })?;
    let small = if img.width().max(img.height()) > PICTURE {
        DynamicImage::ImageRgb8(img)
            .resize(PICTURE, PICTURE, FilterType::Triangle)
            .to_rgb8()
    } else {
        img
    };
    Ok((small, full))
}

/// An SVG of `img` (a picture of a `full`-sized photo) with `marks` over it. Coordinates are
/// the full photo's pixels.
pub fn svg(img: &RgbImage, full: (u32, u32), marks: &[Mark]) -> Result<String> {
    let data = base64_image(img, ImageFormat::Jpeg)?;
    let (w, h) = full;
    let stroke = (w.max(h) as f64 / 200.0).max(1.0);
    let font = (w.max(h) as f64 / 40.0).max(8.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{}\" \
         height=\"{}\">\n<image href=\"data:image/jpeg;base64,{data}\" x=\"0\" y=\"0\" \
         width=\"{w}\" height=\"{h}\" preserveAspectRatio=\"none\"/>\n",
        img.width(),
        img.height()
    );
    for (i, m) in marks.iter().enumerate() {
        let [x1, y1, x2, y2] = clamp(m.rect, full);
        let colour = if m.ok {
            let [r, g, b] = COLOURS[i % COLOURS.len()];
            format!("rgb({r},{g},{b})")
        } else {
            "rgb(128,128,128)".to_string()
        };
        if let Some(mask) = &m.mask {
            let tint = if m.ok {
                COLOURS[i % COLOURS.len()]
            } else {
                [128; 3]
            };
            let overlay = tinted(mask, (img.width(), img.height()), tint);
            out.push_str(&format!(
                "<image class=\"mask\" href=\"data:image/png;base64,{}\" x=\"0\" y=\"0\" \
                 width=\"{w}\" height=\"{h}\" preserveAspectRatio=\"none\"/>\n",
                base64_image(&overlay, ImageFormat::Png)?
            ));
        }
        let text = escape(&m.text);
        out.push_str(&format!(
            "<g><rect x=\"{x1}\" y=\"{y1}\" width=\"{}\" height=\"{}\" fill=\"none\" \
             stroke=\"{colour}\" stroke-width=\"{stroke:.1}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" \
             font-family=\"sans-serif\" font-size=\"{font:.1}\" fill=\"white\" stroke=\"black\" \
             stroke-width=\"{:.1}\" paint-order=\"stroke\">{text}</text></g>\n",
            x2 - x1,
            y2 - y1,
            x1 as f64 + stroke * 2.0,
            y1 as f64 + font + stroke,
            font / 6.0,
        ));
    }
    out.push_str("</svg>\n");
    Ok(out)
}

/// `mask` at a `(w, h)` picture's size: `tint`, half transparent, inside it; clear outside.
fn tinted(mask: &crate::regions::mask::Rle, (w, h): (u32, u32), tint: [u8; 3]) -> RgbaImage {
    let [mh, mw] = mask.size;
    let bits = mask.bitmap();
    RgbaImage::from_fn(w, h, |x, y| {
        let fx = (u64::from(x) * u64::from(mw) / u64::from(w.max(1))) as usize;
        let fy = (u64::from(y) * u64::from(mh) / u64::from(h.max(1))) as usize;
        let inside = bits.get(fx * mh as usize + fy).copied().unwrap_or(false);
        let [r, g, b] = tint;
        image::Rgba([r, g, b, if inside { 110 } else { 0 }])
    })
}

/// The colour of the `i`-th region (or class) in turn.
pub fn colour(i: usize) -> [u8; 3] {
    COLOURS[i % COLOURS.len()]
}

/// Draws `marks` into `img` (a picture of a `full`-sized photo): rectangles only.
pub fn boxes(img: &mut RgbImage, full: (u32, u32), marks: &[Mark]) {
    let (kx, ky) = (
        img.width() as f64 / full.0 as f64,
        img.height() as f64 / full.1 as f64,
    );
    let line = ((img.width().max(img.height()) / 300).max(1)) as i64;
    for (i, m) in marks.iter().enumerate() {
        let colour = Rgb(if m.ok {
            COLOURS[i % COLOURS.len()]
        } else {
            [128; 3]
        });
        let [x1, y1, x2, y2] = clamp(m.rect, full);
        let x1 = (x1 as f64 * kx) as i64;
        let y1 = (y1 as f64 * ky) as i64;
        let x2 = ((x2 as f64 * kx) as i64 - 1).max(x1);
        let y2 = ((y2 as f64 * ky) as i64 - 1).max(y1);
        let mut put = |x: i64, y: i64| {
            if (0..img.width() as i64).contains(&x) && (0..img.height() as i64).contains(&y) {
                img.put_pixel(x as u32, y as u32, colour);
            }
        };
        for t in 0..line {
            for x in x1..=x2 {
                put(x, y1 + t);
                put(x, y2 - t);
            }
            for y in y1..=y2 {
                put(x1 + t, y);
                put(x2 - t, y);
            }
        }
    }
}

/// Where the drawing of `photo` goes in `dir`: `<stem>.svg`, or `<stem>~N.svg` when an earlier
/// photo of the run took that name (`taken` remembers them).
pub fn file_for(
    dir: &Path,
    photo: &Path,
    taken: &mut std::collections::HashSet<PathBuf>,
) -> PathBuf {
    let stem = photo
        .file_stem()
        .map_or("photo".into(), |s| s.to_string_lossy());
    let mut file = dir.join(format!("{stem}.svg"));
    let mut n = 1;
    while !taken.insert(file.clone()) {
        n += 1;
        file = dir.join(format!("{stem}~{n}.svg"));
    }
    file
}

/// Writes the SVG drawing of the photo at `path` with `marks` to `file`, atomically.
pub fn write_svg(file: &Path, path: &Path, marks: &[Mark], max_pixels: u64) -> Result<()> {
    let (img, full) = picture(path, max_pixels)?;
    let text = svg(&img, full, marks)?;
    write_atomically(file, text.as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))
}

/// `rect` inside a `(w, h)` picture (a whole photo's mark is `[0, 0, MAX, MAX]`).
fn clamp([x1, y1, x2, y2]: [u32; 4], (w, h): (u32, u32)) -> [u32; 4] {
    [
        x1.min(w),
        y1.min(h),
        x2.min(w).max(x1.min(w)),
        y2.min(h).max(y1.min(h)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_holds_boxes_and_escaped_hangul_captions() {
        let img = RgbImage::new(50, 25);
        let marks = [
            Mark {
                rect: [10, 20, 110, 40],
                text: "김치 <찌개> 87%".into(),
                ok: true,
                mask: None,
            },
            Mark {
                rect: [0, 0, 5, 5],
                text: "error".into(),
                ok: false,
                mask: None,
            },
        ];
        let s = svg(&img, (200, 100), &marks).unwrap();
        assert!(s.contains("viewBox=\"0 0 200 100\" width=\"50\" height=\"25\""));
        assert!(s.contains("<rect x=\"10\" y=\"20\" width=\"100\" height=\"20\""));
        assert!(s.contains("김치 &lt;찌개&gt; 87%"));
        assert!(s.contains("rgb(128,128,128)"));
    }

    #[test]
    fn boxes_are_drawn_scaled_and_names_do_not_collide() {
        let mut img = RgbImage::new(20, 10);
        let mark = Mark {
            rect: [0, 0, 20, 10],
            text: String::new(),
            ok: true,
            mask: None,
        };
        boxes(&mut img, (40, 20), &[mark]);
        assert_eq!(img.get_pixel(0, 0).0, COLOURS[0]);
        assert_eq!(img.get_pixel(9, 4).0, COLOURS[0]);
        assert_eq!(img.get_pixel(10, 5).0, [0, 0, 0]);
        let mut taken = Default::default();
        let dir = Path::new("d");
        assert_eq!(
            file_for(dir, Path::new("a/t.jpg"), &mut taken),
            dir.join("t.svg")
        );
        assert_eq!(
            file_for(dir, Path::new("b/t.png"), &mut taken),
            dir.join("t~2.svg")
        );
    }
}
