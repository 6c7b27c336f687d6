//! Turning a photo into the tensor the vision tower takes, as transformers' `CLIPImageProcessor`
//! does: resize the shortest edge with Pillow's antialiased filter, centre-crop, rescale to
//! [0, 1], normalise by mean and std. Every number comes from `preprocessor_config.json`.
//!
//! Only the part of the resized picture that the crop keeps is ever computed: each output pixel
//! depends only on its own source span, so the pixels are the same, and a 100000 x 2 strip costs
//! no more than a square photo.

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

use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use serde_json::Value;
use std::cell::Cell;
use std::path::Path;

/// The largest size, crop or resize target, that a preprocessor config may ask for.
pub const MAX_SIZE: u32 = 8192;

thread_local! {
    static ISOLATING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into `Err(message)`: one photo's decoder or resizer
/// failing must cost that photo only.
pub(crate) fn isolated<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let outer = ISOLATING.with(|i| i.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    ISOLATING.with(|i| i.set(outer));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}

/// Runs `f` [`isolated`]: a panic becomes the error `WHAT: internal error (PANIC)`.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    isolated(f).unwrap_or_else(|panic| Err(anyhow!("{what}: internal error ({panic})")))
}

/// Whether this thread is inside a photo's isolated decoding, whose panics become that photo's
/// error (a panic hook stays quiet then).
pub fn isolating() -> bool {
    ISOLATING.with(Cell::get)
}

/// How the image is resized before the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Shortest edge to this many pixels, the other edge scaled and truncated as transformers does.
    ShortestEdge(u32),
    /// To exactly this width and height.
    Exact {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
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
/// transformers' `IMAGENET_STANDARD_MEAN` and `_STD`, SigLIP's.
const STANDARD_MEAN: [f32; 3] = [0.5; 3];
const STANDARD_STD: [f32; 3] = [0.5; 3];

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
        if !v.is_object() {
            bail!("expected a JSON object");
        }
        // SigLIP's processor resizes to the square input with no crop, mean and std 0.5.
        let siglip = v
            .get("image_processor_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("SiglipImageProcessor"));
        let (mut c, default_mean, default_std) = if siglip {
            let c = Self {
                resize: Some(Resize::Exact {
                    width: 224,
                    height: 224,
                }),
                crop: None,
                normalize: Some((STANDARD_MEAN, STANDARD_STD)),
                ..Self::default()
            };
            (c, STANDARD_MEAN, STANDARD_STD)
        } else {
            (Self::default(), OPENAI_MEAN, OPENAI_STD)
        };
        let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(true);
        if let Some(size) = v.get("size") {
            c.resize = Some(parse_resize(size).context("field \"size\"")?);
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
            c.crop = Some(match parse_resize(crop).context("field \"crop_size\"")? {
                Resize::ShortestEdge(s) => (s, s),
                Resize::Exact { width, height } => (width, height),
            });
        }
        if siglip || !flag("do_center_crop") {
            c.crop = None;
        }
        if let Some(f) = v.get("rescale_factor") {
            let f = f.as_f64().context("rescale_factor must be a number")? as f32;
            if !(f.is_finite() && f > 0.0) {
                bail!("rescale_factor is {f}; it must be a positive number such as 1/255");
            }
            c.rescale = Some(f);
        }
        if !flag("do_rescale") {
            c.rescale = None;
        }
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v.get(key) {
                None => Ok(default),
                Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or(f64::NAN) as f32; 3]),
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
        let mean = triple("image_mean", default_mean)?;
        let std = triple("image_std", default_std)?;
        if mean.iter().chain(&std).any(|x| !x.is_finite()) {
            bail!("image_mean and image_std must be finite numbers");
        }
        if std.iter().any(|&s| s <= 0.0) {
            bail!("image_std has a zero or negative value");
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

    /// Reads the photo at `path` and prepares the picture the model sees. A panic while
    /// decoding or preparing it (a decoder bug) is this photo's error, not the run's end.
    pub fn load(&self, path: &Path, max_pixels: u64, fidelity: Fidelity) -> Result<RgbImage> {
        let photo = self.decode_for(path, max_pixels, fidelity, |(w, h)| w.min(h))?;
        self.prepare_area(&photo, Rect::whole(photo.full), fidelity)
    }

    /// Reads and decodes the photo at `path` once, for areas of it to be prepared with
    /// [`PreprocessConfig::prepare_area`]. On the fast path a JPEG is shrunk while it decodes
    /// (DCT scaling) as far as `shortest(full)`, the shortest side of any area to be cut from
    /// the upright `full`-sized picture, stays at or above the resize target.
    pub fn decode_for(
        &self,
        path: &Path,
        max_pixels: u64,
        fidelity: Fidelity,
        shortest: impl FnOnce((u32, u32)) -> u32,
    ) -> Result<Decoded> {
        let bytes = std::fs::read(path).context("cannot read")?;
        self.decode_bytes(&bytes, max_pixels, fidelity, shortest)
    }

    /// [`PreprocessConfig::decode_for`] on a photo's bytes (an upload, say).
    pub fn decode_bytes(
        &self,
        bytes: &[u8],
        max_pixels: u64,
        fidelity: Fidelity,
        shortest: impl FnOnce((u32, u32)) -> u32,
    ) -> Result<Decoded> {
        let target = match (fidelity, self.resize) {
            (Fidelity::Exact, _) | (_, None) => None,
            (Fidelity::Fast, Some(Resize::ShortestEdge(s))) => Some(s),
            (Fidelity::Fast, Some(Resize::Exact { width, height })) => Some(width.max(height)),
        };
        let reduction = |full| target.map_or(1, |t| jpeg::reduction(shortest(full), t));
        let (img, full) = decode::decode(bytes, max_pixels, reduction)?;
        Ok(Decoded { img, full })
    }

    /// The picture the model sees for `area` of a decoded photo (the whole photo, or a region
    /// cut from it): exactly what it would see for that area saved as its own photo. A panic
    /// while preparing it is an error.
    pub fn prepare_area(
        &self,
        photo: &Decoded,
        area: Rect,
        fidelity: Fidelity,
    ) -> Result<RgbImage> {
        guarded("cannot prepare the picture", || {
            let size = area.size();
            if !area.within(photo.full) || size.0 == 0 || size.1 == 0 {
                bail!(
                    "the area {area:?} is not inside the {:?} picture",
                    photo.full
                );
            }
            // Without a crop, the whole resized picture is the output: it must stay bounded.
            let (w, h) = self.output_size(size.0, size.1);
            if w > MAX_SIZE || h > MAX_SIZE {
                bail!(
                    "the model would see this {}x{} picture as {w}x{h} pixels, over {MAX_SIZE} a \
                     side (the preprocessor config has no centre crop)",
                    size.0,
                    size.1
                );
            }
            Ok(match fidelity {
                Fidelity::Exact if area == Rect::whole(photo.full) => self.prepare(&photo.img),
                Fidelity::Exact => self.prepare(&area.cut(&photo.img)),
                Fidelity::Fast => self.prepare_fast(&photo.img, photo.full, area),
            })
        })
    }

    /// Where the crop falls in the resized `(w, h)` picture.
    fn window(&self, w: u32, h: u32) -> Window {
        match self.crop {
            Some((cw, ch)) => Window::center_crop(w, h, cw, ch),
            None => Window::whole(w, h),
        }
    }

    /// The fast twin of [`PreprocessConfig::prepare`] for `area` of a picture: `img` may be a
    /// shrunken decode of a `full`-sized photo; the output has exactly the geometry the area
    /// would get at full size.
    fn prepare_fast(&self, img: &RgbImage, full: (u32, u32), area: Rect) -> RgbImage {
        let size = area.size();
        let target = match self.resize {
            Some(r) => resize_target(r, size.0, size.1),
            None => size,
        };
        let window = self.window(target.0, target.1);
        let kept = if img.dimensions() == full && size == target {
            let (x, y, w, h) = window.source();
            image::imageops::crop_imm(img, area.x1 + x, area.y1 + y, w, h).to_image()
        } else {
            simd_resize_window(img, full, area, target, &window)
        };
        window.place(kept)
    }

    /// Resize then crop: the exact 8-bit picture the model sees (before rescale and normalise).
    /// Only the window the crop keeps is resampled.
    pub fn prepare(&self, img: &RgbImage) -> RgbImage {
        let target = match self.resize {
            Some(r) => resize_target(r, img.width(), img.height()),
            None => img.dimensions(),
        };
        let window = self.window(target.0, target.1);
        let kept = if target == img.dimensions() {
            window.cut(img)
        } else {
            resample::resize_window(img, target, window.source(), self.filter)
        };
        window.place(kept)
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

/// `img` resized to `width` x `height` with a bilinear (triangle) filter by fast_image_resize's
/// SIMD convolution: for pictures that only need to be about right (`--regions auto`'s map).
pub fn resize_bilinear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    use fast_image_resize::{
        images::{Image, ImageRef},
        FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    };
    if img.width() == 0 || img.height() == 0 || width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .expect("an RgbImage buffer is U8x3");
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("same pixel types");
    RgbImage::from_raw(width, height, dst.into_vec()).expect("buffer matches its size")
}

/// The `window` of `area` resized to `target` with Catmull-Rom (Pillow's bicubic kernel), by
/// fast_image_resize's SIMD convolution over a source crop box: only the window is computed.
/// `img` is the `full`-sized picture, maybe shrunk: the area is scaled to it.
fn simd_resize_window(
    img: &RgbImage,
    full: (u32, u32),
    area: Rect,
    target: (u32, u32),
    window: &Window,
) -> RgbImage {
    use fast_image_resize::{
        images::{Image, ImageRef},
        FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
    };
    let (x, y, w, h) = window.source();
    if w == 0 || h == 0 {
        return RgbImage::new(w, h);
    }
    // Picture pixels per full pixel, then per target pixel.
    let kx = img.width() as f64 / full.0 as f64;
    let ky = img.height() as f64 / full.1 as f64;
    let (aw, ah) = area.size();
    let sx = aw as f64 * kx / target.0 as f64;
    let sy = ah as f64 * ky / target.1 as f64;
    let left = area.x1 as f64 * kx + x as f64 * sx;
    let top = area.y1 as f64 * ky + y as f64 * sy;
    let width = (w as f64 * sx).min(img.width() as f64 - left);
    let height = (h as f64 * sy).min(img.height() as f64 - top);
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .expect("an RgbImage buffer is U8x3");
    let mut dst = Image::new(w, h, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
        .crop(left, top, width, height);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("a crop box inside the picture, same pixel types");
    RgbImage::from_raw(w, h, dst.into_vec()).expect("buffer matches its size")
}

/// A decoded, upright photo, maybe shrunk while decoding (see
/// [`PreprocessConfig::decode_for`]).
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The picture.
    pub img: RgbImage,
    /// The upright size of the full photo, which areas are given in.
    pub full: (u32, u32),
}

/// A rectangle of a picture in pixels, `x2` and `y2` exclusive.
///
/// ```
/// use foodclip::preprocess::Rect;
/// let r = Rect { x1: 10, y1: 20, x2: 110, y2: 70 };
/// assert_eq!(r.size(), (100, 50));
/// assert!(r.within((110, 70)) && !r.within((100, 100)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// First column.
    pub x1: u32,
    /// First row.
    pub y1: u32,
    /// Column after the last.
    pub x2: u32,
    /// Row after the last.
    pub y2: u32,
}

impl Rect {
    /// The whole of a `(w, h)` picture.
    pub fn whole((w, h): (u32, u32)) -> Self {
        Self {
            x1: 0,
            y1: 0,
            x2: w,
            y2: h,
        }
    }

    /// `(width, height)`; zero when inverted.
    pub fn size(&self) -> (u32, u32) {
        (
            self.x2.saturating_sub(self.x1),
            self.y2.saturating_sub(self.y1),
        )
    }

    /// Whether it lies inside a `(w, h)` picture.
    pub fn within(&self, (w, h): (u32, u32)) -> bool {
        self.x1 <= self.x2 && self.y1 <= self.y2 && self.x2 <= w && self.y2 <= h
    }

    /// This part of `img`, as its own picture.
    pub fn cut(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = self.size();
        image::imageops::crop_imm(img, self.x1, self.y1, w, h).to_image()
    }
}

fn parse_resize(v: &Value) -> Result<Resize> {
    // Sizes from 1 to MAX_SIZE; anything else (0, negative, fractional, huge) is refused.
    let size = |x: &Value, key: &str| -> Result<u32> {
        match x.as_u64() {
            Some(n) if (1..=MAX_SIZE as u64).contains(&n) => Ok(n as u32),
            _ => bail!("{key} is {x}; it must be a whole number of pixels from 1 to {MAX_SIZE}"),
        }
    };
    if v.is_number() {
        return Ok(Resize::ShortestEdge(size(v, "the size")?));
    }
    let get = |k: &str| v.get(k).map(|x| size(x, k)).transpose();
    match (get("shortest_edge")?, get("height")?, get("width")?) {
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
            // A saturating cast: a long side beyond u32 (an extreme strip) stays finite.
            let new_long = ((s as f64) * (long as f64) / (short.max(1) as f64)) as u32;
            if w <= h {
                (s, new_long)
            } else {
                (new_long, s)
            }
        }
    }
}

/// Where a centre crop of `(cw, ch)` falls in a `(w, h)` picture, as transformers crops:
/// offsets `(size - crop) / 2` rounded down, and zero padding (split the same way) where the
/// picture is smaller than the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// The kept part of the picture: first column and row, width and height.
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    /// Where it lands in the output, and the output's size.
    dx: u32,
    dy: u32,
    out: (u32, u32),
}

impl Window {
    fn whole(w: u32, h: u32) -> Self {
        Self {
            x: 0,
            y: 0,
            w,
            h,
            dx: 0,
            dy: 0,
            out: (w, h),
        }
    }

    fn center_crop(w: u32, h: u32, cw: u32, ch: u32) -> Self {
        // Along one axis: (first kept, kept length, offset in the output).
        let axis = |size: u32, crop: u32| {
            if crop <= size {
                ((size - crop) / 2, crop, 0)
            } else {
                (0, size, (crop - size) / 2)
            }
        };
        let ((x, kw, dx), (y, kh, dy)) = (axis(w, cw), axis(h, ch));
        Self {
            x,
            y,
            w: kw,
            h: kh,
            dx,
            dy,
            out: (cw, ch),
        }
    }

    /// `(x, y, w, h)` of the kept part in the picture.
    fn source(&self) -> (u32, u32, u32, u32) {
        (self.x, self.y, self.w, self.h)
    }

    /// The kept part of a picture of the full size.
    fn cut(&self, img: &RgbImage) -> RgbImage {
        image::imageops::crop_imm(img, self.x, self.y, self.w, self.h).to_image()
    }

    /// The output: the kept part `kept` on black where the crop is larger than the picture.
    fn place(&self, kept: RgbImage) -> RgbImage {
        if self.out == kept.dimensions() {
            return kept;
        }
        let mut out = RgbImage::new(self.out.0, self.out.1);
        image::imageops::replace(&mut out, &kept, self.dx as i64, self.dy as i64);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_isolation_is_an_error_and_the_flag_is_restored() {
        assert!(!isolating());
        let r = isolated(|| -> u32 { panic!("decoder bug at byte {}", 7) });
        assert_eq!(r, Err("decoder bug at byte 7".to_string()));
        assert!(!isolating());
        assert_eq!(isolated(isolating), Ok(true));
    }

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
    fn siglips_processor_resizes_without_a_crop() {
        // google/siglip-base-patch16-256-multilingual's, less the fields that equal the defaults.
        let c = PreprocessConfig::from_json(
            r#"{"image_processor_type": "SiglipImageProcessor", "resample": 3,
                "size": {"height": 256, "width": 256}}"#,
        )
        .unwrap();
        assert_eq!(c.crop, None);
        assert_eq!(c.output_size(640, 480), (256, 256));
        assert_eq!(c.normalize, Some(([0.5; 3], [0.5; 3])));
        let bare =
            PreprocessConfig::from_json(r#"{"image_processor_type": "SiglipImageProcessor"}"#)
                .unwrap();
        assert_eq!(bare.output_size(300, 200), (224, 224));
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

    fn center_crop(img: &RgbImage, cw: u32, ch: u32) -> RgbImage {
        let window = Window::center_crop(img.width(), img.height(), cw, ch);
        window.place(window.cut(img))
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
