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

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
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
            weights[xx * ksize + x] = if w < 0.0 {
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
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (dw, dh) = (width as usize, height as usize);
    if (sw, sh) == (dw, dh) {
        return src.clone();
    }
    let vert = coefficients(sh, dh, filter);
    // Rows of the source that the vertical pass reads.
    let first_row = vert.bounds[0].0;
    let last_row = vert.bounds[dh - 1].0 + vert.bounds[dh - 1].1;
    let src_raw = src.as_raw();

    let (tmp, tmp_w, row_offset) = if sw != dw {
        let hor = coefficients(sw, dw, filter);
        let rows = last_row - first_row;
        let mut tmp = vec![0u8; rows * dw * 3];
        for y in 0..rows {
            let in_row = &src_raw[(y + first_row) * sw * 3..(y + first_row + 1) * sw * 3];
            let out_row = &mut tmp[y * dw * 3..(y + 1) * dw * 3];
            for xx in 0..dw {
                let (xmin, n) = hor.bounds[xx];
                let k = &hor.weights[xx * hor.ksize..xx * hor.ksize + n];
                let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
                for (i, &w) in k.iter().enumerate() {
                    let px = &in_row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += px[c] as i32 * w;
                    }
                }
                for c in 0..3 {
                    out_row[xx * 3 + c] = clip8(acc[c]);
                }
            }
        }
        (tmp, dw, first_row)
    } else {
        (src_raw.clone(), sw, 0)
    };

    if sh == dh {
        return RgbImage::from_raw(width, height, tmp).expect("buffer matches its size");
    }
    let mut out = vec![0u8; dw * dh * 3];
    let stride = tmp_w * 3;
    for yy in 0..dh {
        let (ymin, n) = vert.bounds[yy];
        let ymin = ymin - row_offset;
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        let out_row = &mut out[yy * stride..(yy + 1) * stride];
        for (x, o) in out_row.iter_mut().enumerate() {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (i, &w) in k.iter().enumerate() {
                acc += tmp[(ymin + i) * stride + x] as i32 * w;
            }
            *o = clip8(acc);
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer matches its size")
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
    fn bicubic_weights_match_pillow() {
        // Downscale 4 -> 2: each output pixel's taps are symmetric and sum to 1 << 22.
        let c = coefficients(4, 2, Filter::Bicubic);
        for xx in 0..2 {
            let (_, n) = c.bounds[xx];
            let sum: i32 = c.weights[xx * c.ksize..xx * c.ksize + n].iter().sum();
            assert!((sum - (1 << PRECISION_BITS)).abs() <= 2, "{sum}");
        }
        // Upscale: the filter is not widened (support 2 -> 5 taps at most).
        let c = coefficients(10, 20, Filter::Bicubic);
        assert_eq!(c.ksize, 5);
    }
}
