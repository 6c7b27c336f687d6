//! Turning a photo into the tensor the vision tower takes, as transformers' `CLIPImageProcessor`
//! does: resize the shortest edge with Pillow's antialiased filter, centre-crop, rescale to
//! [0, 1], normalise by mean and std. Every number comes from `preprocessor_config.json`.

pub mod decode;
pub mod jpeg;
pub mod resample;

pub use decode::DEFAULT_MAX_PIXELS;

/// How closely photo preparation follows the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fidelity {
    /// Full decode and Pillow's resampling, bit for bit: the reference's pixels.
    Exact,
    /// JPEG DCT scaling while decoding and a SIMD resizer: several times faster on large photos,
    /// pixels a little off the reference (measured in `tests/fast_path.rs` and README).
    #[default]
    Fast,
}
pub use resample::Filter;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde_json::Value;
use std::path::Path;

/// How the image is resized before the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Shortest edge to this many pixels, the other edge scaled and truncated as transformers does.
    ShortestEdge(u32),
    /// To exactly this width and height.
    Exact { width: u32, height: u32 },
}

/// The settings of a checkpoint's `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Resize step, if enabled (`do_resize`).
    pub resize: Option<Resize>,
    /// Resampling filter (`resample`).
    pub filter: Filter,
    /// Centre-crop to `(width, height)`, if enabled (`do_center_crop`).
    pub crop: Option<(u32, u32)>,
    /// Multiplier from 8-bit values (`rescale_factor`, if `do_rescale`).
    pub rescale: Option<f32>,
    /// Per-channel mean and std (if `do_normalize`).
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

impl Default for PreprocessConfig {
    /// `CLIPImageProcessor`'s defaults.
    fn default() -> Self {
        Self {
            resize: Some(Resize::ShortestEdge(224)),
            filter: Filter::Bicubic,
            crop: Some((224, 224)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((OPENAI_MEAN, OPENAI_STD)),
        }
    }
}

impl PreprocessConfig {
    /// Parses a `preprocessor_config.json` in either the current layout (`{"shortest_edge": 224}`,
    /// `{"height": 224, "width": 224}`) or the old one (`"size": 224`, `"crop_size": 224`).
    ///
    /// ```
    /// let c = foodclip::preprocess::PreprocessConfig::from_json(
    ///     r#"{"size": 224, "crop_size": 224, "resample": 3, "do_center_crop": true}"#).unwrap();
    /// assert_eq!(c.crop, Some((224, 224)));
    /// ```
    pub fn from_json(json: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(json)?;
        let mut c = Self::default();
        let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(true);
        if let Some(size) = v.get("size") {
            c.resize = Some(parse_resize(size)?);
        }
        if !flag("do_resize") {
            c.resize = None;
        }
        if let Some(r) = v.get("resample") {
            let id = r.as_i64().context("resample must be an integer")?;
            c.filter = match Filter::from_pil(id) {
                Some(f) => f,
                None => bail!("resample {id} (nearest or unknown) is not supported; use 1-5"),
            };
        }
        if let Some(crop) = v.get("crop_size") {
            c.crop = Some(match parse_resize(crop)? {
                Resize::ShortestEdge(s) => (s, s),
                Resize::Exact { width, height } => (width, height),
            });
        }
        if !flag("do_center_crop") {
            c.crop = None;
        }
        if let Some(f) = v.get("rescale_factor") {
            c.rescale = Some(f.as_f64().context("rescale_factor must be a number")? as f32);
        }
        if !flag("do_rescale") {
            c.rescale = None;
        }
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v.get(key) {
                None => Ok(default),
                Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or(0.0) as f32; 3]),
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x
                            .as_f64()
                            .with_context(|| format!("{key} must hold numbers"))?
                            as f32;
                    }
                    Ok(out)
                }
                Some(_) => bail!("{key} must be a number or a list of 3 numbers"),
            }
        };
        let mean = triple("image_mean", OPENAI_MEAN)?;
        let std = triple("image_std", OPENAI_STD)?;
        if std.contains(&0.0) {
            bail!("image_std has a zero");
        }
        c.normalize = flag("do_normalize").then_some((mean, std));
        Ok(c)
    }

    /// Reads `preprocessor_config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&json)
            .with_context(|| format!("unsupported preprocessor config {}", path.display()))
    }

    /// The `(width, height)` of the tensor this config produces for a `w x h` image.
    pub fn output_size(&self, w: u32, h: u32) -> (u32, u32) {
        let (w, h) = match self.resize {
            Some(r) => resize_target(r, w, h),
            None => (w, h),
        };
        self.crop.unwrap_or((w, h))
    }

    /// Reads the photo at `path` and prepares the picture the model sees.
    pub fn load(&self, path: &Path, max_pixels: u64, fidelity: Fidelity) -> Result<RgbImage> {
        let bytes = std::fs::read(path).context("cannot read")?;
        match fidelity {
            Fidelity::Exact => Ok(self.prepare(&decode::decode(&bytes, max_pixels, None)?.0)),
            Fidelity::Fast => {
                let min_short_edge = match self.resize {
                    Some(Resize::ShortestEdge(s)) => Some(s),
                    Some(Resize::Exact { width, height }) => Some(width.max(height)),
                    None => None,
                };
                let (img, full) = decode::decode(&bytes, max_pixels, min_short_edge)?;
                Ok(self.prepare_fast(&img, full))
            }
        }
    }

    /// The fast twin of [`PreprocessConfig::prepare`]: `img` may be a shrunken decode of a
    /// `full`-sized photo; the output has exactly the geometry the full photo would get.
    pub fn prepare_fast(&self, img: &RgbImage, full: (u32, u32)) -> RgbImage {
        let target = match self.resize {
            Some(r) => resize_target(r, full.0, full.1),
            None => full,
        };
        let resized = if img.dimensions() == target {
            img.clone()
        } else {
            simd_resize(img, target.0, target.1)
        };
        match self.crop {
            Some((cw, ch)) => center_crop(&resized, cw, ch),
            None => resized,
        }
    }

    /// Resize then crop: the exact 8-bit picture the model sees (before rescale and normalise).
    pub fn prepare(&self, img: &RgbImage) -> RgbImage {
        let resized = match self.resize {
            Some(r) => {
                let (w, h) = resize_target(r, img.width(), img.height());
                resample::resize(img, w, h, self.filter)
            }
            None => img.clone(),
        };
        match self.crop {
            Some((cw, ch)) => center_crop(&resized, cw, ch),
            None => resized,
        }
    }

    /// Rescales and normalises a prepared picture into CHW floats.
    pub fn to_chw(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut out = vec![0f32; 3 * w * h];
        let scale = self.rescale.unwrap_or(1.0);
        let (mean, std) = self.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * w * h + i] = (px.0[c] as f32 * scale - mean[c]) / std[c];
            }
        }
        out
    }
}

/// Catmull-Rom (Pillow's bicubic kernel) resizing with fast_image_resize's SIMD convolution.
fn simd_resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    use fast_image_resize::{
        images::{Image, ImageRef},
        FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    };
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .expect("an RgbImage buffer is U8x3");
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("same pixel types");
    RgbImage::from_raw(width, height, dst.into_vec()).expect("buffer matches its size")
}

fn parse_resize(v: &Value) -> Result<Resize> {
    if let Some(s) = v.as_u64() {
        return Ok(Resize::ShortestEdge(s as u32));
    }
    let get = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as u32);
    match (get("shortest_edge"), get("height"), get("width")) {
        (Some(s), _, _) if v.get("longest_edge").is_none() => Ok(Resize::ShortestEdge(s)),
        (None, Some(height), Some(width)) => Ok(Resize::Exact { width, height }),
        _ => bail!("unsupported size {v}: expected an integer, {{\"shortest_edge\": N}} or {{\"height\": H, \"width\": W}}"),
    }
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side becomes
/// `size`, the long side `int(size * long / short)`.
fn resize_target(r: Resize, w: u32, h: u32) -> (u32, u32) {
    match r {
        Resize::Exact { width, height } => (width, height),
        Resize::ShortestEdge(s) => {
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            let new_long = ((s as f64) * (long as f64) / (short as f64)) as u32;
            if w <= h {
                (s, new_long)
            } else {
                (new_long, s)
            }
        }
    }
}

/// transformers' centre crop: offsets `(size - crop) / 2` rounded down, zero padding (split the
/// same way) where the picture is smaller than the crop.
fn center_crop(img: &RgbImage, cw: u32, ch: u32) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (cw_i, ch_i) = (cw as i64, ch as i64);
    let pad_left = if cw_i > w { (cw_i - w) / 2 } else { 0 };
    let pad_top = if ch_i > h { (ch_i - h) / 2 } else { 0 };
    let left = if cw_i > w { 0 } else { (w - cw_i) / 2 } - pad_left;
    let top = if ch_i > h { 0 } else { (h - ch_i) / 2 } - pad_top;
    RgbImage::from_fn(cw, ch, |x, y| {
        let (sx, sy) = (x as i64 + left, y as i64 + top);
        if sx >= 0 && sy >= 0 && sx < w && sy < h {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_old_hub_layout() {
        // openai/clip-vit-base-patch32's preprocessor_config.json.
        let c = PreprocessConfig::from_json(
            r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#,
        )
        .unwrap();
        assert_eq!(c, PreprocessConfig::default());
    }

    #[test]
    fn rejects_nearest_and_odd_sizes() {
        assert!(PreprocessConfig::from_json(r#"{"resample": 0}"#).is_err());
        assert!(PreprocessConfig::from_json(r#"{"size": {"longest_edge": 5}}"#).is_err());
        assert!(PreprocessConfig::from_json(r#"{"image_std": [1, 0, 1]}"#).is_err());
    }

    #[test]
    fn resize_target_truncates_like_transformers() {
        assert_eq!(
            resize_target(Resize::ShortestEdge(224), 640, 480),
            (298, 224)
        );
        assert_eq!(
            resize_target(Resize::ShortestEdge(224), 200, 360),
            (224, 403)
        );
    }

    #[test]
    fn crop_centres_and_pads() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8, y as u8, 1]));
        let c = center_crop(&img, 2, 2);
        assert_eq!(c.get_pixel(0, 0).0, [1, 0, 1]);
        let c = center_crop(&img, 7, 3);
        assert_eq!(c.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(c.get_pixel(1, 0).0, [0, 0, 1]);
        assert_eq!(c.get_pixel(6, 2).0, [0, 0, 0]);
    }
}
