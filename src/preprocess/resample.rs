//! Pillow's convolution resampling (`Image.resize` with BICUBIC, BILINEAR, LANCZOS, BOX, HAMMING),
//! reproduced to the bit: the same filter supports and weights, the same 22-bit fixed-point
//! coefficients, horizontal pass first with its result rounded to 8 bits, then the vertical pass.
//! Antialiasing comes from widening the filter by the downscale factor, as in Pillow.

use image::RgbImage;

/// A Pillow resampling filter, numbered as `PIL.Image.Resampling` (and `resample` in
/// `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `LANCZOS` (1): windowed sinc, support 3.
    Lanczos,
    /// `BILINEAR` (2): triangle, support 1.
    Bilinear,
    /// `BICUBIC` (3): cubic convolution with a = -0.5, support 2.
    Bicubic,
    /// `BOX` (4): support 0.5.
    Box,
    /// `HAMMING` (5): Hamming-windowed sinc, support 1.
    Hamming,
}

impl Filter {
    /// The filter for a PIL resample id; `None` for NEAREST (0) and unknown ids.
    pub fn from_pil(id: i64) -> Option<Self> {
        Some(match id {
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => return None,
        })
    }

    fn support(self) -> f64 {
        match self {
            Filter::Lanczos => 3.0,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Box => 0.5,
        }
    }

    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let px = x * std::f64::consts::PI;
                    // Pillow writes these constants as C floats.
                    px.sin() / px * (0.54f32 as f64 + 0.46f32 as f64 * px.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights for one axis: for each output index, the first input index and its taps.
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the output indices in
/// `window` of an `out_size` axis (each output's taps depend on its own index alone).
fn coefficients(
    in_size: usize,
    out_size: usize,
    filter: Filter,
    window: std::ops::Range<usize>,
) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(window.len());
    let mut weights = vec![0i32; window.len() * ksize];
    let mut k = vec![0f64; ksize];
    for (i, xx) in window.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero; negative starts are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[i * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    let shifted = v >> PRECISION_BITS;
    shifted.clamp(0, 255) as u8
}

/// Resizes `src` to `width x height` exactly as Pillow's `Image.resize(size, filter)` does for an
/// RGB image (no `reducing_gap`).
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    resize_window(src, (width, height), (0, 0, width, height), filter)
}

/// The window `(x, y, w, h)` of `src` resized to `target`, pixel for pixel what cropping
/// [`resize`]'s result would give, computing only the window: the work and memory follow the
/// window, not the resized picture, however long a strip the source is.
pub fn resize_window(
    src: &RgbImage,
    target: (u32, u32),
    (x, y, w, h): (u32, u32, u32, u32),
    filter: Filter,
) -> RgbImage {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (dw, dh) = (target.0 as usize, target.1 as usize);
    let (x, y, w, h) = (x as usize, y as usize, w as usize, h as usize);
    assert!(
        x + w <= dw && y + h <= dh,
        "the window lies inside the target"
    );
    if w == 0 || h == 0 || sw == 0 || sh == 0 {
        return RgbImage::new(w as u32, h as u32);
    }
    let src_raw = src.as_raw();
    let hor = (sw != dw).then(|| coefficients(sw, dw, filter, x..x + w));
    let vert = (sh != dh).then(|| coefficients(sh, dh, filter, y..y + h));
    // The source columns and rows the window reads.
    let span = |c: &Option<Coefficients>, start: usize, len: usize| match c {
        Some(c) => (c.bounds[0].0, c.bounds[len - 1].0 + c.bounds[len - 1].1),
        None => (start, start + len),
    };
    let (first_col, last_col) = span(&hor, x, w);
    let (first_row, last_row) = span(&vert, y, h);
    // Pillow (13, as the fixtures pin) runs the vertical pass first when the height shrinks by more than
    // twice what the width does, to make the horizontal pass cheaper. The passes round to 8
    // bits in between, so the order changes pixels: follow it.
    let (sw_, sh_, dw_, dh_) = (sw as i64, sh as i64, dw as i64, dh as i64);
    let horizontal_first = !(sh_ - dh_ > 0 && sh_ - dh_ > (sw_ - dw_) * 2);
    // The source block the window reads, `last_col - first_col` pixels wide.
    let block_w = last_col - first_col;
    let mut block = Vec::with_capacity((last_row - first_row) * block_w * 3);
    for r in first_row..last_row {
        block.extend_from_slice(&src_raw[(r * sw + first_col) * 3..][..block_w * 3]);
    }
    let out = if horizontal_first {
        let tmp = match &hor {
            Some(c) => horizontal(&block, block_w, first_col, c),
            None => block,
        };
        match &vert {
            Some(c) => vertical(&tmp, w, first_row, c),
            None => tmp,
        }
    } else {
        let tmp = match &vert {
            Some(c) => vertical(&block, block_w, first_row, c),
            None => block,
        };
        match &hor {
            Some(c) => horizontal(&tmp, block_w, first_col, c),
            None => tmp,
        }
    };
    RgbImage::from_raw(w as u32, h as u32, out).expect("buffer matches its size")
}

/// Pillow's horizontal pass over every row of `buf` (`width` pixels wide, its first column
/// being source column `offset`): one output pixel per coefficient set, rounded to 8 bits.
fn horizontal(buf: &[u8], width: usize, offset: usize, c: &Coefficients) -> Vec<u8> {
    let out_w = c.bounds.len();
    let rows = buf.len() / (width * 3).max(1);
    let mut out = vec![0u8; rows * out_w * 3];
    for (in_row, out_row) in buf
        .chunks_exact(width * 3)
        .zip(out.chunks_exact_mut(out_w * 3))
    {
        for (xx, out_px) in out_row.chunks_exact_mut(3).enumerate() {
            let (xmin, n) = c.bounds[xx];
            let k = &c.weights[xx * c.ksize..][..n];
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &wt) in k.iter().enumerate() {
                let px = &in_row[(xmin - offset + i) * 3..][..3];
                for ch in 0..3 {
                    acc[ch] += px[ch] as i32 * wt;
                }
            }
            for ch in 0..3 {
                out_px[ch] = clip8(acc[ch]);
            }
        }
    }
    out
}

/// Pillow's vertical pass over `buf` (`width` pixels wide, its first row being source row
/// `offset`): one output row per coefficient set, rounded to 8 bits.
fn vertical(buf: &[u8], width: usize, offset: usize, c: &Coefficients) -> Vec<u8> {
    let stride = width * 3;
    let mut out = vec![0u8; c.bounds.len() * stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, n) = c.bounds[yy];
        let k = &c.weights[yy * c.ksize..][..n];
        for (col, o) in out_row.iter_mut().enumerate() {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (i, &wt) in k.iter().enumerate() {
                acc += buf[(ymin - offset + i) * stride + col] as i32 * wt;
            }
            *o = clip8(acc);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        let img = RgbImage::from_fn(17, 9, |x, y| image::Rgb([x as u8 * 10, y as u8 * 20, 7]));
        assert_eq!(resize(&img, 17, 9, Filter::Bicubic), img);
        let flat = RgbImage::from_pixel(40, 30, image::Rgb([200, 13, 90]));
        for f in [
            Filter::Bicubic,
            Filter::Bilinear,
            Filter::Lanczos,
            Filter::Box,
            Filter::Hamming,
        ] {
            for (w, h) in [(11, 7), (97, 61), (40, 5)] {
                let r = resize(&flat, w, h, f);
                assert!(r.pixels().all(|p| p.0 == [200, 13, 90]), "{f:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn windows_are_the_same_pixels_as_cropping_the_whole() {
        let img = RgbImage::from_fn(37, 23, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (200 - x * 5) as u8])
        });
        for f in [Filter::Bicubic, Filter::Lanczos, Filter::Box] {
            // (37, 9) and (30, 6) run the vertical pass first, as Pillow does there.
            for (tw, th) in [(80, 50), (11, 7), (37, 9), (30, 6), (20, 23)] {
                let whole = resize(&img, tw, th, f);
                for (x, y, w, h) in [(0, 0, tw, th), (3, 2, 5, 4), (tw - 1, th - 1, 1, 1)] {
                    let want = image::imageops::crop_imm(&whole, x, y, w, h).to_image();
                    let got = resize_window(&img, (tw, th), (x, y, w, h), f);
                    assert_eq!(got, want, "{f:?} {tw}x{th} window {x},{y} {w}x{h}");
                }
            }
        }
    }

    #[test]
    fn every_filter_matches_pillow_bit_for_bit() {
        // Written by Pillow itself: tests/fixtures/generate.py pillow-resize.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reference/pillow-resize.json"
        );
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let number = |v: &serde_json::Value| v.as_u64().unwrap() as u32;
        let bytes = |v: &serde_json::Value| -> Vec<u8> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8)
                .collect()
        };
        let cases = reference["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 60);
        for case in cases {
            let pattern = &reference["patterns"][case["pattern"].as_str().unwrap()];
            let src = RgbImage::from_raw(
                number(&pattern["width"]),
                number(&pattern["height"]),
                bytes(&pattern["pixels"]),
            )
            .unwrap();
            let filter = Filter::from_pil(case["filter"].as_i64().unwrap()).unwrap();
            let (w, h) = (number(&case["width"]), number(&case["height"]));
            let ours = resize(&src, w, h, filter);
            assert_eq!(
                ours.as_raw(),
                &bytes(&case["pixels"]),
                "{case:?}",
                case = (&case["pattern"], filter, w, h)
            );
        }
    }
}
