//! Text for terminal tables: columns as a terminal shows them.

/// `text` and the spaces that fill it out to `width` terminal columns, for aligned tables:
/// Hangul and other wide characters take two columns, where `{:<width$}` counts one.
///
/// ```
/// assert_eq!(foodclip::text::pad("김치", 6), "김치  ");
/// assert_eq!(foodclip::text::pad("rice", 6), "rice  ");
/// assert_eq!(foodclip::text::pad("비빔밥", 4), "비빔밥");
/// ```
pub fn pad(text: &str, width: usize) -> String {
    format!("{text}{}", " ".repeat(width.saturating_sub(columns(text))))
}

/// How many terminal columns `text` takes: two for each Hangul syllable.
///
/// ```
/// assert_eq!(foodclip::text::columns("김치 stew"), 9);
/// ```
pub fn columns(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}
