//! JPEG decoding with libjpeg-turbo's decoder (mozjpeg is a fork of it that decodes identically),
//! the decoder inside PIL: the same IDCT, the same "fancy" chroma upsampling and colour
//! conversion, hence the same pixels as the reference.

use anyhow::{anyhow, bail, Result};
use image::RgbImage;

/// Decodes a JPEG held in memory to 8-bit RGB. Grayscale is expanded; CMYK (Adobe, inverted
/// samples) is converted as PIL's `convert("RGB")` does.
///
/// `reduction`: the decoder's DCT scaling shrinks the picture by this denominator (1, 2, 4 or 8;
/// see [`reduction`]) while it decodes. That skips most of the decoding work for large photos,
/// at the price of pixels that differ slightly from a full decode.
pub fn decode(bytes: &[u8], reduction: u8) -> Result<RgbImage> {
    if !is_complete(bytes) {
        bail!("truncated image: the JPEG data ends before the picture does");
    }
    // libjpeg's errors reach Rust as panics of the mozjpeg crate.
    super::isolated(|| decode_unchecked(bytes, reduction))
        .unwrap_or_else(|_| Err(anyhow!("cannot decode: corrupt JPEG data")))
}

/// The strongest DCT reduction (a denominator of 8, 4 or 2; else 1) that keeps a side of
/// `short` pixels at `target` or more: `ceil(short / d) >= target`.
///
/// ```
/// use foodclip::preprocess::jpeg::reduction;
/// assert_eq!(reduction(3000, 224), 8);
/// assert_eq!(reduction(800, 224), 2);
/// assert_eq!(reduction(200, 224), 1);
/// ```
pub fn reduction(short: u32, target: u32) -> u8 {
    [8u8, 4, 2]
        .into_iter()
        .find(|&d| short.div_ceil(d as u32) >= target)
        .unwrap_or(1)
}

fn decode_unchecked(bytes: &[u8], reduction: u8) -> Result<RgbImage> {
    let corrupt = |e: std::io::Error| anyhow!("cannot decode JPEG: {e}");
    let mut d = mozjpeg::Decompress::new_mem(bytes).map_err(corrupt)?;
    if matches!(reduction, 2 | 4 | 8) {
        d.scale(8 / reduction);
    }
    let rgb = match d.image().map_err(corrupt)? {
        mozjpeg::Format::RGB(mut s) => {
            let size = (s.width() as u32, s.height() as u32);
            let px: Vec<u8> = s.read_scanlines().map_err(corrupt)?;
            s.finish().map_err(corrupt)?;
            (px, size)
        }
        mozjpeg::Format::Gray(mut s) => {
            let size = (s.width() as u32, s.height() as u32);
            let px: Vec<u8> = s.read_scanlines().map_err(corrupt)?;
            s.finish().map_err(corrupt)?;
            (px.iter().flat_map(|&v| [v, v, v]).collect(), size)
        }
        mozjpeg::Format::CMYK(mut s) => {
            let size = (s.width() as u32, s.height() as u32);
            let px: Vec<[u8; 4]> = s.read_scanlines().map_err(corrupt)?;
            s.finish().map_err(corrupt)?;
            (px.iter().flat_map(|&p| cmyk_to_rgb(p)).collect(), size)
        }
    };
    let (rgb, (w, h)) = rgb;
    RgbImage::from_raw(w, h, rgb).ok_or_else(|| anyhow!("cannot decode JPEG: short pixel data"))
}

/// PIL reads 4-channel JPEGs as inverted CMYK (Adobe's convention) and converts each channel as
/// `(255 - k) - (255 - k) * c / 255`, rounded as its `MULDIV255`.
fn cmyk_to_rgb(stored: [u8; 4]) -> [u8; 3] {
    let [c, m, y, k] = stored.map(|v| 255 - v as i32);
    let nk = 255 - k;
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(v, nk)).clamp(0, 255) as u8)
}

/// Whether the entropy-coded data is followed by an end-of-image marker. libjpeg pads a cut-off
/// file with grey and only warns; PIL refuses it ("image file is truncated"), and so does foodclip.
/// The marker must come after the last start-of-scan, so an EXIF thumbnail's own EOI does not count.
fn is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(sos) => bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_matches_pil() {
        // Stored (inverted) white and black, and a mid value.
        assert_eq!(cmyk_to_rgb([255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb([255, 255, 255, 0]), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb([0, 255, 128, 255]), [0, 255, 128]);
    }

    #[test]
    fn reduction_keeps_the_short_edge() {
        assert_eq!(reduction(3000, 224), 8);
        assert_eq!(reduction(800, 224), 2);
        assert_eq!(reduction(447, 224), 2);
        assert_eq!(reduction(446, 224), 1);
        assert_eq!(reduction(200, 224), 1);
    }

    #[test]
    fn cut_files_are_incomplete() {
        let ok = [0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 3, 0xFF, 0xD9];
        assert!(is_complete(&ok));
        assert!(!is_complete(&ok[..7]));
        assert!(!is_complete(&[0xFF, 0xD8, 0xFF, 0xD9]));
    }
}
