//! Small float pictures for measuring trays: one channel ([`Plane`]) or RGB ([`Rgb`]), with
//! bilinear sampling, box blurs, halving and warping by a [`Motion`].

use super::register::Motion;
use image::RgbImage;

/// One channel, row-major.
#[derive(Debug, Clone)]
pub struct Plane {
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// Values, `w * h`.
    pub v: Vec<f32>,
}

/// RGB, row-major, values 0-255 (more after a gain).
#[derive(Debug, Clone)]
pub struct Rgb {
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
    /// Pixels, `w * h`.
    pub v: Vec<[f32; 3]>,
}

/// Bilinear weights and corners of `(x, y)` in a `(w, h)` grid; `None` outside it.
fn corners(x: f64, y: f64, w: usize, h: usize) -> Option<(usize, usize, f32, f32)> {
    if !(x >= 0.0 && y >= 0.0 && x <= (w - 1) as f64 && y <= (h - 1) as f64) {
        return None;
    }
    let (x0, y0) = ((x as usize).min(w - 2), (y as usize).min(h - 2));
    Some((x0, y0, (x - x0 as f64) as f32, (y - y0 as f64) as f32))
}

impl Plane {
    /// All zeros.
    pub fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            v: vec![0.0; w * h],
        }
    }

    /// The bilinear value at `(x, y)`, `None` outside the picture.
    pub fn sample(&self, x: f64, y: f64) -> Option<f32> {
        let (x0, y0, fx, fy) = corners(x, y, self.w, self.h)?;
        let i = y0 * self.w + x0;
        let top = self.v[i] * (1.0 - fx) + self.v[i + 1] * fx;
        let bottom = self.v[i + self.w] * (1.0 - fx) + self.v[i + self.w + 1] * fx;
        Some(top * (1.0 - fy) + bottom * fy)
    }

    /// The mean over the `(2r+1)^2` square around each pixel (clipped at the borders).
    pub fn box_blur(&self, r: usize) -> Plane {
        let (w, h) = (self.w, self.h);
        let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
            let mut out = vec![0.0; w * h];
            let (outer, inner) = if horizontal { (h, w) } else { (w, h) };
            let at = |o: usize, i: usize| if horizontal { o * w + i } else { i * w + o };
            for o in 0..outer {
                let mut sum = 0.0f64;
                let mut n = 0usize;
                for i in 0..=r.min(inner - 1) {
                    sum += src[at(o, i)] as f64;
                    n += 1;
                }
                for i in 0..inner {
                    out[at(o, i)] = (sum / n as f64) as f32;
                    if i + r + 1 < inner {
                        sum += src[at(o, i + r + 1)] as f64;
                        n += 1;
                    }
                    if i >= r {
                        sum -= src[at(o, i - r)] as f64;
                        n -= 1;
                    }
                }
            }
            out
        };
        let v = pass(&pass(&self.v, true), false);
        Plane { w, h, v }
    }

    /// Half the size each way, each pixel the mean of a 2x2 block.
    pub fn half(&self) -> Plane {
        let (w, h) = (self.w / 2, self.h / 2);
        let mut out = Plane::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let i = 2 * y * self.w + 2 * x;
                out.v[y * w + x] =
                    (self.v[i] + self.v[i + 1] + self.v[i + self.w] + self.v[i + self.w + 1]) / 4.0;
            }
        }
        out
    }
}

impl Rgb {
    /// All black.
    pub fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            v: vec![[0.0; 3]; w * h],
        }
    }

    /// An 8-bit picture as floats.
    pub fn from_image(img: &RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let v = img.pixels().map(|p| p.0.map(f32::from)).collect();
        Self { w, h, v }
    }

    /// Back to 8 bits, rounded and clamped.
    pub fn to_image(&self) -> RgbImage {
        let bytes = self
            .v
            .iter()
            .flat_map(|p| p.map(|c| c.round().clamp(0.0, 255.0) as u8))
            .collect();
        RgbImage::from_raw(self.w as u32, self.h as u32, bytes).expect("buffer matches its size")
    }

    /// Rec. 601 luminance.
    pub fn luma(&self) -> Plane {
        let v = self
            .v
            .iter()
            .map(|[r, g, b]| 0.299 * r + 0.587 * g + 0.114 * b)
            .collect();
        Plane {
            w: self.w,
            h: self.h,
            v,
        }
    }

    /// One channel.
    pub fn channel(&self, c: usize) -> Plane {
        Plane {
            w: self.w,
            h: self.h,
            v: self.v.iter().map(|p| p[c]).collect(),
        }
    }

    /// The picture made of three channels.
    pub fn from_channels(ch: [Plane; 3]) -> Self {
        let [r, g, b] = ch;
        let v = (0..r.v.len()).map(|i| [r.v[i], g.v[i], b.v[i]]).collect();
        Self { w: r.w, h: r.h, v }
    }

    /// Each channel box-blurred (see [`Plane::box_blur`]).
    pub fn box_blur(&self, r: usize) -> Rgb {
        Self::from_channels([0, 1, 2].map(|c| self.channel(c).box_blur(r)))
    }

    /// This picture seen through `motion`: pixel `p` of the result is this picture's pixel at
    /// `motion.apply(p)` (bilinear), on a frame of the same size. Returns the picture and which
    /// of its pixels came from inside this one.
    pub fn warp(&self, motion: Motion) -> (Rgb, Vec<bool>) {
        let (w, h) = (self.w, self.h);
        let mut out = Rgb::new(w, h);
        let mut valid = vec![false; w * h];
        for y in 0..h {
            for x in 0..w {
                let (qx, qy) = motion.apply((x as f64, y as f64), (w, h));
                if let Some((x0, y0, fx, fy)) = corners(qx, qy, w, h) {
                    let i = y0 * w + x0;
                    let mut p = [0.0; 3];
                    for (c, v) in p.iter_mut().enumerate() {
                        let top = self.v[i][c] * (1.0 - fx) + self.v[i + 1][c] * fx;
                        let bottom = self.v[i + w][c] * (1.0 - fx) + self.v[i + w + 1][c] * fx;
                        *v = top * (1.0 - fy) + bottom * fy;
                    }
                    out.v[y * w + x] = p;
                    valid[y * w + x] = true;
                }
            }
        }
        (out, valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_a_constant_and_averages_a_step() {
        let mut p = Plane::new(7, 3);
        p.v.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 7 >= 3) as u8 as f32);
        let b = p.box_blur(1);
        assert!((b.v[0] - 0.0).abs() < 1e-6);
        assert!((b.v[3] - 2.0 / 3.0).abs() < 1e-6, "{:?}", b.v);
        assert!((b.v[6] - 1.0).abs() < 1e-6);
        assert_eq!(b.half().w, 3);
    }

    #[test]
    fn samples_between_pixels_and_nowhere_outside() {
        let p = Plane {
            w: 2,
            h: 2,
            v: vec![0.0, 1.0, 2.0, 3.0],
        };
        assert_eq!(p.sample(0.5, 0.5), Some(1.5));
        assert_eq!(p.sample(1.0, 1.0), Some(3.0));
        assert_eq!(p.sample(1.01, 0.0), None);
    }
}
