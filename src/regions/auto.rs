//! Dishes found without boxes: a class map over the photo from NACLIP's dense patch embeddings
//! ([`crate::model::ClipModel::dense_image_features`]), cut into regions, one per connected
//! area of a dish.
//!
//! The photo is scaled so that its short side is `scale` times the model's input, then read in
//! windows of the model's input size a half window apart (NACLIP's sliding-window inference:
//! the last window of a row or column is moved back to end at the border). Each window's patch
//! embeddings are compared (cosine) with the classes' and the background's embeddings; the
//! scores are spread bilinearly over the window on a canvas a quarter of the scaled photo's
//! size and averaged where windows overlap. Each canvas pixel takes its best class; every
//! 4-connected area of one dish class covering at least `min_area` of the photo is a region,
//! with its box on the photo and its mask on the canvas.

use super::mask::Rle;
use crate::checkpoint::Checkpoint;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use image::RgbImage;
use std::sync::Arc;

/// The background a dish is told from when the user gives none: what a tray photo shows
/// besides food.
pub const BACKGROUND: &str =
    "a tray\na table\nan empty plate\nan empty bowl\na napkin\na spoon\nchopsticks\n";

/// A dish found on a photo.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The class the map gave it.
    pub name: String,
    /// Its box in pixels of the full photo.
    pub rect: [u32; 4],
    /// Its mask on the full photo.
    pub mask: Rle,
}

/// Finds the regions of a picture (the seam `--regions auto` plugs into [`super::pieces`]).
pub trait Finder: Send + Sync + std::fmt::Debug {
    /// The dishes on `img`, the upright picture of a photo of `full` size.
    fn find(&self, img: &RgbImage, full: (u32, u32)) -> Result<Vec<Found>>;

    /// The shortest side a region of a `full`-sized photo can have: how far the decoder may
    /// shrink it (as a box file's smallest box says for listed regions).
    fn shortest(&self, full: (u32, u32)) -> u32;
}

/// The [`Finder`] of NACLIP class maps.
pub struct DenseFinder {
    /// The model.
    pub ckpt: Arc<Checkpoint>,
    /// Unit class embeddings: the dishes, then the background's.
    pub embeddings: Tensor,
    /// The dishes' names (the first rows of `embeddings`).
    pub names: Vec<String>,
    /// How maps are made and cut.
    pub settings: AutoSettings,
}

impl std::fmt::Debug for DenseFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "DenseFinder({} dishes, {:?})",
            self.names.len(),
            self.settings
        )
    }
}

impl Finder for DenseFinder {
    fn shortest(&self, full: (u32, u32)) -> u32 {
        ((f64::from(full.0.min(full.1)) * self.settings.min_area.sqrt()) as u32).max(1)
    }

    fn find(&self, img: &RgbImage, full: (u32, u32)) -> Result<Vec<Found>> {
        let map = class_map(&self.ckpt, img, &self.embeddings, &self.settings)?;
        let (kx, ky) = (
            f64::from(full.0) / f64::from(img.width().max(1)),
            f64::from(full.1) / f64::from(img.height().max(1)),
        );
        // Full-photo pixels per canvas pixel.
        let (fx, fy) = (map.scale.0 * kx, map.scale.1 * ky);
        Ok(blobs(&map, self.names.len(), self.settings.min_area)
            .into_iter()
            .filter_map(|b| {
                let (mask, rect) =
                    Rle::encode(full.0, full.1, |x, y| b.mask[map.cell(x, y, (fx, fy))]);
                Some(Found {
                    name: self.names[b.class].clone(),
                    rect: rect?,
                    mask,
                })
            })
            .collect())
    }
}

/// How the class map is made and cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoSettings {
    /// Width of NACLIP's Gaussian neighbourhood, in patches.
    pub std: f64,
    /// The scaled photo's short side, in model inputs.
    pub scale: f64,
    /// Smallest region kept, as a share of the photo.
    pub min_area: f64,
}

impl Default for AutoSettings {
    fn default() -> Self {
        Self {
            std: 5.0,
            scale: 2.0,
            min_area: 0.01,
        }
    }
}

/// Canvas pixels per side of a scaled-photo pixel block.
const DOWN: usize = 4;

/// The scaled photo's longest side, in model inputs.
const LONGEST: usize = 8;

/// The best class of each canvas pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMap {
    /// Canvas width.
    pub width: usize,
    /// Canvas height.
    pub height: usize,
    /// Row-major best class per pixel (an index into the classes, then the background's).
    pub labels: Vec<u32>,
    /// Photo pixels per canvas pixel, across and down.
    pub scale: (f64, f64),
    /// The photo's size.
    pub photo: (u32, u32),
}

impl ClassMap {
    /// The canvas pixel under point `(x, y)` of a picture with `per` of its pixels per canvas
    /// pixel across and down (`scale` for the photo the map was made of), as a `labels` index.
    pub fn cell(&self, x: u32, y: u32, per: (f64, f64)) -> usize {
        let cx = ((f64::from(x) / per.0) as usize).min(self.width - 1);
        let cy = ((f64::from(y) / per.1) as usize).min(self.height - 1);
        cy * self.width + cx
    }
}

/// One connected area of a dish class.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    /// The class.
    pub class: usize,
    /// Its box on the photo, `[x1, y1, x2, y2]`.
    pub rect: [u32; 4],
    /// Its mask on the canvas: row-major, `map.width * map.height`.
    pub mask: Vec<bool>,
    /// Canvas pixels in it.
    pub area: usize,
}

/// The window origins along a side of `len` for windows of `crop` a `stride` apart.
fn origins(len: usize, crop: usize, stride: usize) -> Vec<usize> {
    let n = len.saturating_sub(crop).div_ceil(stride) + 1;
    (0..n)
        .map(|i| {
            let end = (i * stride + crop).min(len);
            end.saturating_sub(crop)
        })
        .collect()
}

/// The class map of `photo` for unit class embeddings `embeddings` (`(classes, dim)`: the
/// dishes, then the background's).
pub fn class_map(
    ckpt: &Checkpoint,
    photo: &RgbImage,
    embeddings: &Tensor,
    s: &AutoSettings,
) -> Result<ClassMap> {
    let size = ckpt.model.image_size();
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    if w == 0 || h == 0 {
        bail!("the photo is empty");
    }
    let short = (size as f64 * s.scale).round().max(size as f64);
    // A long, thin photo is not scaled past LONGEST inputs on its long side (its short side
    // then stretches to one input): windows and canvas stay bounded whatever the photo.
    let k = (short / w.min(h) as f64).min((LONGEST * size) as f64 / w.max(h) as f64);
    let (sw, sh) = (
        ((w as f64 * k).round() as usize).max(size),
        ((h as f64 * k).round() as usize).max(size),
    );
    let scaled = crate::preprocess::resize_bilinear(photo, sw as u32, sh as u32);
    let stride = size / 2;
    let windows: Vec<(usize, usize)> = origins(sh, size, stride)
        .into_iter()
        .flat_map(|y| origins(sw, size, stride).into_iter().map(move |x| (x, y)))
        .collect();
    let classes = embeddings.dim(0)?;
    let (cw, ch) = (sw.div_ceil(DOWN), sh.div_ceil(DOWN));
    // Sums, not means: every class of a pixel has the same count of windows.
    let mut sums = vec![0f32; cw * ch * classes];
    let side = size.div_ceil(DOWN);
    for batch in windows.chunks(8) {
        let mut data = Vec::with_capacity(batch.len() * 3 * size * size);
        for &(x, y) in batch {
            let crop =
                image::imageops::crop_imm(&scaled, x as u32, y as u32, size as u32, size as u32)
                    .to_image();
            data.extend(ckpt.preprocess.to_chw(&crop));
        }
        let pixels = Tensor::from_vec(data, (batch.len(), 3, size, size), &ckpt.device)?;
        let dense = ckpt.model.dense_image_features(&pixels, s.std)?;
        let dense = dense.broadcast_div(&dense.sqr()?.sum_keepdim(2)?.sqrt()?)?;
        // (windows, patches, classes): cosine of each patch with each class.
        let scores = dense
            .broadcast_matmul(&embeddings.t()?.unsqueeze(0)?)?
            .to_vec3::<f32>()
            .context("cannot read the window scores")?;
        let grid = (scores[0].len() as f64).sqrt() as usize;
        for (&(x, y), window) in batch.iter().zip(&scores) {
            let (ox, oy) = (x / DOWN, y / DOWN);
            for cy in 0..side.min(ch - oy) {
                for cx in 0..side.min(cw - ox) {
                    let at = (oy + cy) * cw + ox + cx;
                    spread(
                        window,
                        grid,
                        side,
                        (cx, cy),
                        &mut sums[at * classes..(at + 1) * classes],
                    );
                }
            }
        }
    }
    let labels = sums
        .chunks(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(c, _)| c as u32)
        })
        .collect();
    Ok(ClassMap {
        width: cw,
        height: ch,
        labels,
        scale: ((DOWN * w) as f64 / sw as f64, (DOWN * h) as f64 / sh as f64),
        photo: (w as u32, h as u32),
    })
}

/// Adds to `out` the window's scores at canvas pixel `(cx, cy)` of a `side`-pixel window:
/// bilinear between the patch centres (as `align_corners=False` upsampling does).
fn spread(
    window: &[Vec<f32>],
    grid: usize,
    side: usize,
    (cx, cy): (usize, usize),
    out: &mut [f32],
) {
    let at = |c: usize| {
        let f = ((c as f64 + 0.5) * grid as f64 / side as f64 - 0.5).clamp(0.0, (grid - 1) as f64);
        let i = (f.floor() as usize).min(grid - 1);
        (i, (i + 1).min(grid - 1), (f - i as f64) as f32)
    };
    let (x0, x1, fx) = at(cx);
    let (y0, y1, fy) = at(cy);
    let corners = [
        (y0 * grid + x0, (1.0 - fx) * (1.0 - fy)),
        (y0 * grid + x1, fx * (1.0 - fy)),
        (y1 * grid + x0, (1.0 - fx) * fy),
        (y1 * grid + x1, fx * fy),
    ];
    for (p, wgt) in corners {
        for (o, v) in out.iter_mut().zip(&window[p]) {
            *o += wgt * v;
        }
    }
}

/// The connected areas (4-neighbours) of each class below `dishes` covering at least
/// `min_area` of the map, largest first.
pub fn blobs(map: &ClassMap, dishes: usize, min_area: f64) -> Vec<Blob> {
    let (w, h) = (map.width, map.height);
    let mut seen = vec![false; w * h];
    let mut found = Vec::new();
    let least = ((w * h) as f64 * min_area).ceil() as usize;
    for start in 0..w * h {
        let class = map.labels[start] as usize;
        if seen[start] || class >= dishes {
            continue;
        }
        let mut mask = vec![false; w * h];
        let mut stack = vec![start];
        seen[start] = true;
        let (mut x1, mut y1, mut x2, mut y2) = (w, h, 0, 0);
        let mut area = 0;
        while let Some(i) = stack.pop() {
            mask[i] = true;
            area += 1;
            let (x, y) = (i % w, i / w);
            (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1));
            let mut visit = |j: usize| {
                if !seen[j] && map.labels[j] as usize == class {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        if area >= least.max(1) {
            let (sx, sy) = map.scale;
            let (pw, ph) = map.photo;
            let px = |v: usize, s: f64, max: u32| ((v as f64 * s).round() as u32).min(max);
            found.push(Blob {
                class,
                rect: [
                    px(x1, sx, pw),
                    px(y1, sy, ph),
                    px(x2, sx, pw),
                    px(y2, sy, ph),
                ],
                mask,
                area,
            });
        }
    }
    found.sort_by_key(|b| std::cmp::Reverse(b.area));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_thin_photo_stays_bounded() {
        let ckpt = crate::checkpoint::Checkpoint::load_with(
            &crate::source::ModelSource::Local(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-openai"),
            ),
            &crate::source::HubOptions {
                offline: true,
                progress: false,
            },
            &candle_core::Device::Cpu,
            crate::model::Precision::F32,
            None,
        )
        .unwrap();
        let strip = RgbImage::from_pixel(20_000, 2, image::Rgb([200, 100, 50]));
        let dim = ckpt.config.projection_dim;
        let classes = Tensor::ones((2, dim), candle_core::DType::F32, &ckpt.device).unwrap();
        let map = class_map(&ckpt, &strip, &classes, &AutoSettings::default()).unwrap();
        // 8 inputs of 224 by one, on a quarter-size canvas.
        assert_eq!((map.width, map.height), (8 * 224 / DOWN, 224 / DOWN));
    }

    #[test]
    fn windows_cover_the_side_and_end_at_the_border() {
        assert_eq!(origins(224, 224, 112), vec![0]);
        assert_eq!(origins(448, 224, 112), vec![0, 112, 224]);
        assert_eq!(origins(500, 224, 112), vec![0, 112, 224, 276]);
    }

    #[test]
    fn blobs_are_connected_areas_of_dish_classes() {
        // 0 0 1 1 2
        // 0 0 1 1 2
        // 2 2 2 0 2
        let map = ClassMap {
            width: 5,
            height: 3,
            labels: vec![0, 0, 1, 1, 2, 0, 0, 1, 1, 2, 2, 2, 2, 0, 2],
            scale: (10.0, 10.0),
            photo: (50, 30),
        };
        let b = blobs(&map, 2, 0.0);
        assert_eq!(b.len(), 3, "{b:?}");
        assert_eq!((b[0].class, b[0].area, b[0].rect), (0, 4, [0, 0, 20, 20]));
        assert_eq!((b[1].class, b[1].area, b[1].rect), (1, 4, [20, 0, 40, 20]));
        assert_eq!((b[2].class, b[2].area, b[2].rect), (0, 1, [30, 20, 40, 30]));
        assert!(b[2].mask[13] && !b[2].mask[0]);
        // Class 2 is the background; the lone 0 is below a 10% minimum.
        assert_eq!(blobs(&map, 2, 0.1).len(), 2);
    }
}
