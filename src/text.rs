//! Text for terminal tables and messages: columns as a terminal shows them, counted nouns.

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

/// `n` and the noun for it, singular for one: `count(1, "class", "classes")` is `1 class`.
///
/// ```
/// use foodclip::text::count;
/// assert_eq!(count(1, "error", "errors"), "1 error");
/// assert_eq!(count(0, "class", "classes"), "0 classes");
/// ```
pub fn count<N: std::fmt::Display + PartialEq + From<u8>>(n: N, one: &str, many: &str) -> String {
    let noun = if n == N::from(1) { one } else { many };
    format!("{n} {noun}")
}
