//! Synthetic photos made in the tests themselves.

use image::{Rgb, RgbImage};
use std::path::Path;

/// A smooth, textured picture of `w x h`, different for each `seed`.
pub fn synthetic(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let s = seed as f32;
        let noise =
            ((x.wrapping_mul(7919) ^ y.wrapping_mul(104_729) ^ seed.wrapping_mul(31)) % 23) as f32;
        Rgb([
            (128.0 + 100.0 * (fx * 9.0 + s).sin() + noise) as u8,
            (128.0 + 90.0 * (fy * 7.0 - s).cos() + noise) as u8,
            (128.0 + 80.0 * ((fx + fy) * 5.0).sin() - noise) as u8,
        ])
    })
}

/// Writes `img` as a JPEG of quality 90.
pub fn write_jpeg(img: &RgbImage, path: &Path) {
    let mut out = std::fs::File::create(path).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(img)
        .unwrap();
}
