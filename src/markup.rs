//! Small helpers for the HTML and SVG that foodclip writes (the eval report, tray drawings):
//! escaping text and embedding pictures.

use anyhow::Result;
use base64::Engine;
use image::ImageFormat;

/// Escapes text for HTML or XML content and attribute values.
///
/// ```
/// assert_eq!(foodclip::markup::escape("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
/// ```
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `img` encoded in `format`, as base64 for a `data:` URI.
pub fn base64_image<P: image::PixelWithColorType>(
    img: &image::ImageBuffer<P, Vec<P::Subpixel>>,
    format: ImageFormat,
) -> Result<String>
where
    [P::Subpixel]: image::EncodableLayout,
{
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf.get_ref()))
}
