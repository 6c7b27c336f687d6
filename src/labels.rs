//! Label files and prompt templates.
//!
//! A label file is UTF-8 text (a BOM and CRLF line ends are fine), one class per line. `#` starts
//! a comment line and blank lines are skipped. A line may give several names for one class,
//! separated by `|`; the first is the display name:
//!
//! ```text
//! # Korean stews
//! 김치찌개 | kimchi stew | kimchi jjigae
//! ```

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One class: its display name, every name it goes by, and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelClass {
    /// All names, the display name first.
    pub names: Vec<String>,
    /// 1-based line number in the label file.
    pub line: usize,
}

impl LabelClass {
    /// The name shown in results.
    pub fn display(&self) -> &str {
        &self.names[0]
    }
}

/// The classes of one label file, in file order.
#[derive(Debug, Clone)]
pub struct LabelSet {
    /// Where the labels came from.
    pub path: PathBuf,
    /// The classes.
    pub classes: Vec<LabelClass>,
}

impl LabelSet {
    /// Reads and checks a label file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read label file {}", path.display()))?;
        Self::parse(&bytes, path)
    }

    /// Parses label-file bytes; `path` is only used in messages.
    ///
    /// ```
    /// use foodclip::labels::LabelSet;
    /// let set = LabelSet::parse("\u{feff}# stews\r\n김치찌개 | kimchi stew\r\n\r\nbibimbap\n".as_bytes(),
    ///     "my.txt".as_ref()).unwrap();
    /// assert_eq!(set.classes[0].names, ["김치찌개", "kimchi stew"]);
    /// assert_eq!(set.classes[1].line, 4);
    /// ```
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let shown = path.display();
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let line = bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                bail!("{shown}:{line}: not valid UTF-8 (save the label file as UTF-8)");
            }
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut classes: Vec<LabelClass> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let names: Vec<String> = line.split('|').map(|n| n.trim().to_string()).collect();
            if names.iter().any(String::is_empty) {
                bail!("{shown}:{line_no}: empty name in {line:?} (names are separated by '|')");
            }
            if let Some(first) = seen.get(&names[0]) {
                bail!(
                    "{shown}:{line_no}: duplicate class {:?} (first on line {first})",
                    names[0]
                );
            }
            seen.insert(names[0].clone(), line_no);
            classes.push(LabelClass {
                names,
                line: line_no,
            });
        }
        if classes.is_empty() {
            bail!("{shown}: no classes (one class per line; '#' starts a comment)");
        }
        Ok(Self {
            path: path.to_path_buf(),
            classes,
        })
    }
}

/// Prompt templates; `{}` stands for a class name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Templates {
    /// The shipped sets, chosen per name by its script (Hangul names get Korean templates).
    Default,
    /// The user's templates, for every name.
    Custom(Vec<String>),
}

/// The default templates for names in Latin script (English), after the CLIP paper's Food-101 prompt.
pub const ENGLISH_TEMPLATES: &[&str] = &[
    "a photo of {}, a type of food.",
    "a photo of a plate of {}.",
    "a close-up photo of {}, a dish.",
];

/// The default templates for Korean names: "a photo of {}", "{}, a Korean dish", "a tasty {}".
pub const KOREAN_TEMPLATES: &[&str] = &["{} 사진.", "{}, 한국 음식의 한 종류.", "맛있는 {}."];

impl Templates {
    /// Checks user templates: each must contain `{}`.
    pub fn custom(templates: Vec<String>) -> Result<Self> {
        if let Some(t) = templates.iter().find(|t| !t.contains("{}")) {
            bail!("template {t:?} has no {{}} for the class name (use --template '{{}}' for the bare name)");
        }
        Ok(Templates::Custom(templates))
    }

    /// The prompts for one name.
    pub fn prompts(&self, name: &str) -> Vec<String> {
        let fill = |t: &str| t.replace("{}", name);
        match self {
            Templates::Custom(ts) => ts.iter().map(|t| fill(t)).collect(),
            Templates::Default if is_korean(name) => {
                KOREAN_TEMPLATES.iter().map(|t| fill(t)).collect()
            }
            Templates::Default => ENGLISH_TEMPLATES.iter().map(|t| fill(t)).collect(),
        }
    }
}

/// Whether `s` contains Hangul (syllables or jamo).
pub fn is_korean(s: &str) -> bool {
    s.chars().any(|c| matches!(c, '\u{AC00}'..='\u{D7A3}' | '\u{1100}'..='\u{11FF}' | '\u{3130}'..='\u{318F}'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<LabelSet> {
        LabelSet::parse(s, Path::new("l.txt"))
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse(b"a\nb\n\n# c\na\n").unwrap_err().to_string();
        assert_eq!(e, "l.txt:5: duplicate class \"a\" (first on line 1)");
        let e = parse(b"ok\nbad \xff\n").unwrap_err().to_string();
        assert!(e.starts_with("l.txt:2: not valid UTF-8"), "{e}");
        let e = parse(b"# only a comment\n\n").unwrap_err().to_string();
        assert!(e.starts_with("l.txt: no classes"), "{e}");
        let e = parse(b"x | | y\n").unwrap_err().to_string();
        assert!(e.starts_with("l.txt:1: empty name"), "{e}");
    }

    #[test]
    fn templates_follow_script() {
        assert_eq!(Templates::Default.prompts("김치찌개")[0], "김치찌개 사진.");
        assert_eq!(
            Templates::Default.prompts("ramen")[0],
            "a photo of ramen, a type of food."
        );
        assert_eq!(
            Templates::custom(vec!["{}".into()])
                .unwrap()
                .prompts("라면"),
            ["라면"]
        );
        assert!(Templates::custom(vec!["no slot".into()]).is_err());
    }
}
