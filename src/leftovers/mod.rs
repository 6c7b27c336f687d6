//! Leftovers: how much of each dish comes back, from a photo of each tray when it is served and
//! another when it is returned.
//!
//! For each tray: the served photo is decoded once (its compartments, from the same region
//! sources as `classify`, go to the model from that decode), the returned photo is registered
//! onto it ([`register`](mod@register)), and the share of each compartment covered by food is
//! measured in both ([`coverage`]). The leftover ratio is `returned / served`, clipped to
//! [0, 1]. Dishes come from the classifier or a menu ([`menu`]); [`summary`] turns records into
//! a summary per dish and day, and compares them with the truth when it is known.
//!
//! Everything here works on a copy of each photo at most [`ANALYSIS_SIDE`] pixels on its long
//! side: enough to count a compartment's food to a fraction of a percent, and cheap.

pub mod coverage;
pub mod image;
pub mod menu;
pub mod pairs;
pub mod records;
pub mod register;
pub mod summary;

use crate::preprocess::{decode, jpeg, Fidelity, PreprocessConfig, Rect};
use crate::regions::{Photo, Piece, Region, Regions};
use ::image::imageops::FilterType;
use ::image::RgbImage;
use coverage::Area;
use image::Rgb;
use pairs::Pair;
use register::{register, Motion, Registration};
use std::path::Path;

/// The long side of the copy each photo is measured on, in pixels.
pub const ANALYSIS_SIDE: u32 = 480;
/// A served coverage below this means nothing was served in the compartment: no ratio.
pub const NOTHING_SERVED: f64 = 0.02;
/// The share of a compartment the registered returned photo must show to be measured.
const MIN_SEEN: f64 = 0.9;

/// How pairs are measured.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Register the returned photo (and the empty tray) onto the served one.
    pub align: bool,
    /// Pixel cap per photo.
    pub max_pixels: u64,
    /// Exact or fast preprocessing for the model's pictures.
    pub fidelity: Fidelity,
}

/// A photo of the empty tray, prepared once for a run (`--empty-tray`).
#[derive(Debug, Clone)]
pub struct EmptyTray {
    /// What messages call it.
    name: String,
    /// The photo's full upright size.
    full: (u32, u32),
    /// Its analysis copy.
    img: RgbImage,
}

impl EmptyTray {
    /// Reads the empty tray's photo.
    pub fn load(path: &Path, max_pixels: u64) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--empty-tray {}: {e}", path.display()))?;
        Self::from_bytes(&bytes, &path.display().to_string(), max_pixels)
            .map_err(|e| anyhow::anyhow!("--empty-tray {e:#}"))
    }

    /// The empty tray from a photo's bytes; `name` is what messages call it.
    pub fn from_bytes(bytes: &[u8], name: &str, max_pixels: u64) -> anyhow::Result<Self> {
        let (img, full) =
            analysis_decode(bytes, max_pixels).map_err(|e| anyhow::anyhow!("{name}: {e:#}"))?;
        Ok(Self {
            name: name.to_string(),
            full,
            img,
        })
    }
}

/// What was measured in one compartment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Amount {
    /// Share of the compartment covered by food when served.
    pub served: f64,
    /// Share covered when returned.
    pub returned: f64,
    /// `returned / served` clipped to [0, 1]; `None` when nothing was served.
    pub leftover: Option<f64>,
}

/// One tray measured: the registration (in pixels of the served photo) and each compartment's
/// amounts or error, in the regions' order.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The returned photo's motion relative to the served one, `None` with `--no-align`.
    pub registration: Option<Registration>,
    /// Each compartment with its placed box, and its amounts or error.
    pub compartments: Vec<(Region, Result<Amount, String>)>,
    /// The served photo and the registered returned photo with their food masks drawn, side by
    /// side (for reports), when asked for.
    pub overlay: Option<RgbImage>,
}

/// A tray ready for the model: the served photo's pieces (one per compartment, none when the
/// tray failed as a whole) and its measurement, or the tray's error.
#[derive(Debug)]
pub struct Examined {
    /// The pictures of the served photo's compartments for the model.
    pub pieces: Vec<Piece>,
    /// What was measured.
    pub measured: Result<Measured, String>,
    /// The tray's day: the pair's, else the served photo's EXIF date or modification day.
    pub date: Option<String>,
}

/// Decodes a photo for measuring: shrunk while decoding (JPEG DCT scaling) as far as its long
/// side stays at or above [`ANALYSIS_SIDE`], then resized to it.
fn analysis_decode(bytes: &[u8], max_pixels: u64) -> anyhow::Result<(RgbImage, (u32, u32))> {
    let (img, full) = decode::decode(bytes, max_pixels, |(w, h)| {
        jpeg::reduction(w.max(h), ANALYSIS_SIDE)
    })?;
    Ok((to_analysis(&img), full))
}

/// `img` resized so its long side is at most [`ANALYSIS_SIDE`].
fn to_analysis(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let long = w.max(h);
    if long <= ANALYSIS_SIDE {
        return img.clone();
    }
    let k = ANALYSIS_SIDE as f64 / long as f64;
    let size = |v: u32| ((v as f64 * k).round() as u32).max(1);
    ::image::imageops::resize(img, size(w), size(h), FilterType::Triangle)
}

/// Examines one tray of files: reads both photos and its day, then [`examine_photos`].
pub fn examine(
    pair: &Pair,
    regions: &Regions,
    pre: &PreprocessConfig,
    empty: Option<&EmptyTray>,
    settings: Settings,
    overlay: bool,
) -> Examined {
    let failed = |e: String, date| Examined {
        pieces: Vec::new(),
        measured: Err(e),
        date,
    };
    let (served_path, returned_path) = match pair.photos() {
        Ok(p) => p,
        Err(e) => return failed(e, pair.date.clone()),
    };
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()));
    let (served, returned) = match (read(served_path), read(returned_path)) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => return failed(e, pair.date.clone()),
    };
    let date = pair
        .date
        .clone()
        .or_else(|| pairs::photo_date(served_path, &served));
    let served = Shot {
        photo: Photo::File(served_path),
        bytes: &served,
        name: &served_path.display().to_string(),
    };
    let returned = Shot {
        photo: Photo::File(returned_path),
        bytes: &returned,
        name: &returned_path.display().to_string(),
    };
    let (pieces, measured) =
        examine_photos(served, returned, regions, pre, empty, settings, overlay);
    Examined {
        pieces,
        measured,
        date,
    }
}

/// One photo of a tray: where it is (which regions apply), its bytes, and its name in messages.
#[derive(Debug, Clone, Copy)]
pub struct Shot<'a> {
    /// The photo (a file, or an upload).
    pub photo: Photo<'a>,
    /// Its encoded bytes.
    pub bytes: &'a [u8],
    /// What messages call it.
    pub name: &'a str,
}

impl<'a> Shot<'a> {
    /// A photo sent to the server: only regions that are the same on every photo apply.
    pub fn upload(bytes: &'a [u8], name: &'a str) -> Self {
        Self {
            photo: Photo::Bytes(bytes),
            bytes,
            name,
        }
    }
}

/// Examines one tray: decodes the served photo once for the model's pictures (prepared by
/// `pre`) and its analysis copy, decodes and registers the returned photo, and measures each
/// compartment of `regions`. `overlay` asks for the picture with the masks. Returns the served
/// photo's pieces for the model and the measurement (or the tray's error).
pub fn examine_photos(
    served: Shot,
    returned: Shot,
    regions: &Regions,
    pre: &PreprocessConfig,
    empty: Option<&EmptyTray>,
    settings: Settings,
    overlay: bool,
) -> (Vec<Piece>, Result<Measured, String>) {
    let fail_on = |name: &str, e: anyhow::Error| format!("{name}: {e:#}");
    // The served photo: decoded as far down as its smallest compartment allows for the model.
    let decoded = pre.decode_bytes(
        served.bytes,
        settings.max_pixels,
        settings.fidelity,
        |full| regions.shortest(served.photo, full),
    );
    let decoded = match decoded {
        Ok(d) => d,
        Err(e) => return (Vec::new(), Err(fail_on(served.name, e))),
    };
    let resolved = match regions.resolve(served.photo, &decoded) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Err(format!("{}: {e}", served.name))),
    };
    let served_small = to_analysis(&decoded.img);
    let pieces = resolved.pieces(pre, &decoded, settings.fidelity);
    let measured = analysis_decode(returned.bytes, settings.max_pixels)
        .map_err(|e| fail_on(returned.name, e))
        .and_then(|(img, full)| {
            let placed = resolved.place(decoded.full);
            let same_shape = |(w, h): (u32, u32), what: &str| {
                let (a, b) = (
                    w as f64 / h as f64,
                    decoded.full.0 as f64 / decoded.full.1 as f64,
                );
                if (a / b - 1.0).abs() > 0.02 {
                    return Err(format!(
                        "{what} is {w}x{h}, another shape than the served photo ({}x{}): the \
                         same camera must take both",
                        decoded.full.0, decoded.full.1
                    ));
                }
                Ok(())
            };
            same_shape(full, returned.name)?;
            if let Some(e) = empty {
                same_shape(e.full, &e.name)?;
            }
            let s = Rgb::from_image(&served_small);
            let fit = |img: &RgbImage| Rgb::from_image(&resize_to(img, served_small.dimensions()));
            let r = fit(&img);
            let e = empty.map(|e| fit(&e.img));
            Ok(measure(
                &s,
                &r,
                e.as_ref(),
                decoded.full,
                placed,
                settings.align,
                overlay,
            ))
        });
    (pieces, measured)
}

/// `img` resized to exactly `(w, h)` (nothing when it is that size).
fn resize_to(img: &RgbImage, (w, h): (u32, u32)) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    ::image::imageops::resize(img, w, h, FilterType::Triangle)
}

/// Measures the compartments `placed` on the served photo (`full` its size; `s` its analysis
/// copy) against the returned photo `r` and the empty tray `e` (analysis copies of the same
/// size).
fn measure(
    s: &Rgb,
    r: &Rgb,
    e: Option<&Rgb>,
    full: (u32, u32),
    placed: Vec<(Region, Result<bool, String>)>,
    align: bool,
    overlay: bool,
) -> Measured {
    let onto = |other: &Rgb| -> (Rgb, Vec<bool>, Option<Registration>) {
        if !align {
            return (other.clone(), vec![true; other.v.len()], None);
        }
        let reg = register(s, other);
        let (warped, seen) = other.warp(reg.motion);
        (warped, seen, Some(reg))
    };
    let (rw, seen, reg) = onto(r);
    let empty = e.map(onto);
    let k = s.w as f64 / full.0 as f64;
    let ky = s.h as f64 / full.1 as f64;
    let small = |b: [u32; 4]| Rect {
        x1: (b[0] as f64 * k).floor() as u32,
        y1: (b[1] as f64 * ky).floor() as u32,
        x2: ((b[2] as f64 * k).ceil() as u32).min(s.w as u32),
        y2: ((b[3] as f64 * ky).ceil() as u32).min(s.h as u32),
    };
    let areas: Vec<Option<Area>> = placed
        .iter()
        .map(|(region, placed)| {
            let rect = small(region.rect.filter(|_| placed.is_ok())?);
            Some(match &region.segmentation {
                None => Area::boxed(rect),
                Some(rle) => Area {
                    rect: widened(rect, (s.w as u32, s.h as u32)),
                    mask: Some(rle.sample(s.w, s.h)),
                },
            })
        })
        .collect();
    let found: Vec<Area> = areas.iter().flatten().cloned().collect();
    let masks = coverage::masks(
        s,
        &rw,
        &seen,
        empty.as_ref().map(|(e, seen, _)| (e, seen.as_slice())),
        &found,
    );
    let compartments = placed
        .into_iter()
        .zip(&areas)
        .map(|((region, placed), area)| {
            let amount = placed.and_then(|_| {
                let area = area.as_ref().expect("placed");
                let (served, returned, shown) = masks.coverage(area);
                if shown < MIN_SEEN {
                    return Err(format!(
                        "the returned photo shows only {:.0}% of this compartment once \
                         registered; is it the same tray?",
                        shown * 100.0
                    ));
                }
                let leftover = (served >= NOTHING_SERVED).then(|| (returned / served).min(1.0));
                Ok(Amount {
                    served,
                    returned,
                    leftover,
                })
            });
            (region, amount)
        })
        .collect();
    let registration = reg.map(|r| Registration {
        motion: Motion {
            dx: r.motion.dx / k,
            dy: r.motion.dy / ky,
            angle: r.motion.angle,
        },
        score: r.score,
    });
    Measured {
        registration,
        compartments,
        overlay: overlay.then(|| draw_overlay(s, &rw, &masks)),
    }
}

/// A dish's box widened by 15% of its size each side (at least 3 pixels), within the frame:
/// the margin around its mask shows the tray.
fn widened(b: Rect, (w, h): (u32, u32)) -> Rect {
    let (bw, bh) = b.size();
    let (mx, my) = ((bw * 3 / 20).max(3), (bh * 3 / 20).max(3));
    Rect {
        x1: b.x1.saturating_sub(mx),
        y1: b.y1.saturating_sub(my),
        x2: (b.x2 + mx).min(w),
        y2: (b.y2 + my).min(h),
    }
}

/// The served photo and the registered returned photo side by side, food tinted.
fn draw_overlay(s: &Rgb, r: &Rgb, masks: &coverage::Masks) -> RgbImage {
    let (w, h) = (s.w as u32, s.h as u32);
    let mut out = RgbImage::new(2 * w + 8, h);
    let tint = |p: [f32; 3], food: bool| -> [u8; 3] {
        let p = p.map(|c| c.clamp(0.0, 255.0));
        let q = if food {
            [p[0] * 0.5 + 127.0, p[1] * 0.5 + 100.0, p[2] * 0.5]
        } else {
            p.map(|c| c * 0.6)
        };
        q.map(|c| c.round() as u8)
    };
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) as usize;
            out.put_pixel(x, y, ::image::Rgb(tint(s.v[i], masks.served[i])));
            out.put_pixel(w + 8 + x, y, ::image::Rgb(tint(r.v[i], masks.returned[i])));
        }
    }
    out
}
