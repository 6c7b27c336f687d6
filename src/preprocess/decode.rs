//! Reading a photo into 8-bit RGB as transformers' `load_image` does: decode the first frame,
//! apply the EXIF orientation, convert to RGB like PIL's `convert("RGB")`.

use super::jpeg;
use anyhow::{anyhow, bail, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// The formats decoded, for messages.
const DECODED: &str = "JPEG, PNG, WebP, GIF, BMP, TIFF";

/// Default cap on decoded pixels (width x height): 12-megapixel phone photos pass with room to
/// spare, decompression bombs do not.
pub const DEFAULT_MAX_PIXELS: u64 = 128_000_000;

/// Decodes an encoded image (format guessed from the content, not the file name).
///
/// JPEGs are decoded by libjpeg-turbo's decoder (through mozjpeg), the decoder PIL uses, so the
/// pixels match the reference exactly; other formats by the `image` crate. JPEGs come back
/// smaller by the DCT reduction that `reduction` gives for the upright size of the full image
/// (1 for none; see [`jpeg::reduction`]). Returns the picture and that upright full size.
///
/// A panic inside a decoder (a bug met on a damaged file) is returned as an error.
pub fn decode(
    bytes: &[u8],
    max_pixels: u64,
    reduction: impl FnOnce((u32, u32)) -> u8,
) -> Result<(RgbImage, (u32, u32))> {
    super::guarded("cannot decode", || decode_any(bytes, max_pixels, reduction))
}

fn decode_any(
    bytes: &[u8],
    max_pixels: u64,
    reduction: impl FnOnce((u32, u32)) -> u8,
) -> Result<(RgbImage, (u32, u32))> {
    if bytes.is_empty() {
        bail!("empty file");
    }
    if let Some((name, how)) = unsupported_photo(bytes) {
        bail!("{name} photo: foodclip reads {DECODED}; convert it first ({how})");
    }
    let format = image::guess_format(bytes)
        .map_err(|_| anyhow!("not an image foodclip can read ({DECODED})"))?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Room for the decoded pixels at 16 bits per RGBA sample, plus decoder overhead.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(describe)?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        bail!(
            "image is {w}x{h} ({:.0} megapixels), over the limit of {:.0} megapixels \
             (a decompression bomb?); raise it with --max-pixels",
            pixels as f64 / 1e6,
            max_pixels as f64 / 1e6
        );
    }
    let orientation = decoder.orientation().map_err(describe)?;
    let full = match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (h, w),
        _ => (w, h),
    };
    let mut img = if format == ImageFormat::Jpeg {
        drop(decoder);
        DynamicImage::ImageRgb8(jpeg::decode(bytes, reduction(full))?)
    } else {
        DynamicImage::from_decoder(decoder).map_err(describe)?
    };
    img.apply_orientation(orientation);
    Ok((to_rgb8(img), full))
}

/// A photo format foodclip does not decode, recognised by its first bytes: HEIC and HEIF
/// (phones' default), AVIF and JPEG XL, which deserve more than "not an image". Returns its name
/// with an article (`an AVIF`) and how to convert it.
fn unsupported_photo(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    const HEIF: &str = "heif-convert; on an iPhone, Settings > Camera > Formats > Most Compatible";
    // ISO base media files open with a box `ftyp` whose major brand names the format.
    if bytes.get(4..8) == Some(b"ftyp") {
        return match bytes.get(8..12)? {
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" => Some(("a HEIC", HEIF)),
            b"mif1" | b"msf1" => Some(("a HEIF", HEIF)),
            b"avif" | b"avis" => Some(("an AVIF", "avifdec")),
            _ => None,
        };
    }
    // A JPEG XL codestream, or its ISO container.
    let jxl = bytes.starts_with(&[0xff, 0x0a]) || bytes.starts_with(b"\0\0\0\x0cJXL \r\n\x87\n");
    jxl.then_some(("a JPEG XL", "djxl"))
}

fn describe(e: image::ImageError) -> anyhow::Error {
    match e {
        image::ImageError::Limits(l) => {
            anyhow!("image too large to decode: {l}; raise the limit with --max-pixels")
        }
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            anyhow!("truncated image: the file ends before the picture does")
        }
        // Some decoders end their messages in a line break: records and stderr get one line.
        other => anyhow!(
            "cannot decode: {}",
            other
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

/// Converts to 8-bit RGB, dropping alpha as PIL's `convert("RGB")` does. 16-bit samples keep
/// their high byte: that is what PIL does for 16-bit RGB, while for 16-bit grayscale PIL clips
/// every value above 255 to white, which is plainly wrong, so foodclip scales those too.
pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    fn high(v: u16) -> u8 {
        (v >> 8) as u8
    }
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageLuma16(b) => {
            RgbImage::from_fn(w, h, |x, y| image::Rgb([high(b.get_pixel(x, y).0[0]); 3]))
        }
        DynamicImage::ImageLumaA16(b) => {
            RgbImage::from_fn(w, h, |x, y| image::Rgb([high(b.get_pixel(x, y).0[0]); 3]))
        }
        DynamicImage::ImageRgb16(b) => {
            RgbImage::from_fn(w, h, |x, y| image::Rgb(b.get_pixel(x, y).0.map(high)))
        }
        DynamicImage::ImageRgba16(b) => RgbImage::from_fn(w, h, |x, y| {
            let [r, g, bl, _] = b.get_pixel(x, y).0;
            image::Rgb([high(r), high(g), high(bl)])
        }),
        DynamicImage::ImageRgb8(b) => b,
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HEIC, HEIF, AVIF and JPEG XL photos are named, with what to do; a file that merely
    /// resembles one (another ISO brand, say MP4) is not.
    #[test]
    fn photos_in_formats_not_decoded_are_named() {
        let ftyp = |brand: &[u8]| [b"\0\0\0\x18ftyp", brand, b"\0\0\0\0mif1"].concat();
        for (bytes, name) in [
            (ftyp(b"heic"), "a HEIC photo"),
            (ftyp(b"mif1"), "a HEIF photo"),
            (ftyp(b"avif"), "an AVIF photo"),
            (vec![0xff, 0x0a, 0xfa, 0x7f], "a JPEG XL photo"),
        ] {
            let e = decode(&bytes, DEFAULT_MAX_PIXELS, |_| 1)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(name) && e.contains("convert it first"), "{e}");
        }
        let e = decode(&ftyp(b"isom"), DEFAULT_MAX_PIXELS, |_| 1)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("not an image"), "{e}");
    }
}
