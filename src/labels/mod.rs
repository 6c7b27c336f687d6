//! Label files and prompt templates.
//!
//! A label file is UTF-8 text (a BOM and CRLF line ends are fine), one class per line. `#` starts
//! a comment line and blank lines are skipped. A line may give several names for one class,
//! separated by `|`; the first is the display name. A line in brackets starts a group (dish
//! category): every class below it belongs to the group until the next header.
//!
//! ```text
//! [찌개 | stew]
//! 김치찌개 | kimchi stew | kimchi jjigae
//! 된장찌개 | soybean paste stew
//! ```

pub mod check;
mod templates;

pub use templates::Templates;

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One class: its display name, every name it goes by, its group and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelClass {
    /// All names, the display name first.
    pub names: Vec<String>,
    /// 1-based line number in the label file.
    pub line: usize,
    /// Index into [`LabelSet::groups`], for classes under a group header.
    pub group: Option<usize>,
}

impl LabelClass {
    /// The name shown in results.
    pub fn display(&self) -> &str {
        &self.names[0]
    }
}

/// A group header `[name | other name]`: a dish category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelGroup {
    /// All names, the display name first.
    pub names: Vec<String>,
    /// 1-based line number of the header.
    pub line: usize,
}

impl LabelGroup {
    /// The name shown in results.
    pub fn display(&self) -> &str {
        &self.names[0]
    }
}

/// The classes (and groups) of one label file, in file order.
#[derive(Debug, Clone)]
pub struct LabelSet {
    /// Where the labels came from.
    pub path: PathBuf,
    /// The classes.
    pub classes: Vec<LabelClass>,
    /// The groups, empty when the file has no headers.
    pub groups: Vec<LabelGroup>,
}

/// How bad a [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth a look; the file works.
    Warning,
    /// The file cannot be used as written.
    Error,
}

/// One problem found in a label file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl Finding {
    fn error(line: usize, message: String) -> Self {
        Self {
            severity: Severity::Error,
            line: Some(line),
            message,
        }
    }

    fn warning(line: usize, message: String) -> Self {
        Self {
            severity: Severity::Warning,
            line: Some(line),
            message,
        }
    }

    /// `file:line: message`, the form every error about a label file takes.
    pub fn located(&self, path: &Path) -> String {
        match self.line {
            Some(line) => format!("{}:{line}: {}", path.display(), self.message),
            None => format!("{}: {}", path.display(), self.message),
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

impl LabelSet {
    /// Reads and checks a label file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read(path)?, path)
    }

    /// Parses label-file bytes, failing on the first error; `path` is only used in messages.
    ///
    /// ```
    /// use foodclip::labels::LabelSet;
    /// let text = "\u{feff}[찌개 | stew]\r\n김치찌개 | kimchi stew\r\n\r\nbibimbap\n";
    /// let set = LabelSet::parse(text.as_bytes(), "my.txt".as_ref()).unwrap();
    /// assert_eq!(set.classes[0].names, ["김치찌개", "kimchi stew"]);
    /// assert_eq!(set.classes[1].line, 4);
    /// assert_eq!(set.groups[set.classes[1].group.unwrap()].display(), "찌개");
    /// ```
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let (set, findings) = Self::parse_all(bytes, path)?;
        if let Some(f) = findings.iter().find(|f| f.severity == Severity::Error) {
            bail!("{}", f.located(path));
        }
        Ok(set)
    }

    /// Reads a label file, keeping what can be used and listing every problem (for `foodclip
    /// labels check`). Only unreadable files and invalid UTF-8 fail.
    pub fn load_all(path: &Path) -> Result<(Self, Vec<Finding>)> {
        Self::parse_all(&read(path)?, path)
    }

    /// Parses label-file bytes, keeping what can be used and listing every problem.
    pub fn parse_all(bytes: &[u8], path: &Path) -> Result<(Self, Vec<Finding>)> {
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let line = bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                bail!(
                    "{}:{line}: not valid UTF-8 (save the label file as UTF-8)",
                    path.display()
                );
            }
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut set = Self {
            path: path.to_path_buf(),
            classes: Vec::new(),
            groups: Vec::new(),
        };
        let mut findings = Vec::new();
        let mut classes = Names::new("class");
        let mut groups = Names::new("group");
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(inner) = line.strip_prefix('[') {
                let Some(inner) = inner.strip_suffix(']') else {
                    findings.push(Finding::error(
                        line_no,
                        format!("group header {line:?} has no closing ']'"),
                    ));
                    continue;
                };
                let Some(names) = split_names(inner, line_no, &mut findings) else {
                    continue;
                };
                if !groups.admit(&names, line_no, &mut findings) {
                    continue;
                }
                set.groups.push(LabelGroup {
                    names,
                    line: line_no,
                });
                continue;
            }
            let Some(names) = split_names(line, line_no, &mut findings) else {
                continue;
            };
            if !classes.admit(&names, line_no, &mut findings) {
                continue;
            }
            set.classes.push(LabelClass {
                names,
                line: line_no,
                group: set.groups.len().checked_sub(1),
            });
        }
        if set.classes.is_empty() {
            findings.push(Finding {
                severity: Severity::Error,
                line: None,
                message: "no classes (one class per line; '#' starts a comment)".into(),
            });
        }
        if !set.groups.is_empty() {
            for c in set.classes.iter().filter(|c| c.group.is_none()) {
                findings.push(Finding::warning(
                    c.line,
                    format!(
                        "class {:?} comes before the first group header",
                        c.display()
                    ),
                ));
            }
            for (g, group) in set.groups.iter().enumerate() {
                if !set.classes.iter().any(|c| c.group == Some(g)) {
                    findings.push(Finding::warning(
                        group.line,
                        format!("group {:?} has no classes", group.display()),
                    ));
                }
            }
        }
        findings.sort_by_key(|f| f.line.unwrap_or(usize::MAX));
        Ok((set, findings))
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read label file {}", path.display()))
}

/// The `|`-separated names of a line, or `None` (with an error) when one is empty.
fn split_names(text: &str, line: usize, findings: &mut Vec<Finding>) -> Option<Vec<String>> {
    let names: Vec<String> = text.split('|').map(|n| n.trim().to_string()).collect();
    if names.iter().any(String::is_empty) {
        findings.push(Finding::error(
            line,
            format!("empty name in {text:?} (names are separated by '|')"),
        ));
        return None;
    }
    Some(names)
}

/// The names of one kind (classes or groups) seen so far, with the line that has each.
struct Names {
    what: &'static str,
    displays: HashMap<String, usize>,
    all: HashMap<String, usize>,
}

impl Names {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            displays: HashMap::new(),
            all: HashMap::new(),
        }
    }

    /// Records the `names` of `line`, unless its display name is taken (an error). Names repeated
    /// within the line or used on another line are warnings.
    fn admit(&mut self, names: &[String], line: usize, findings: &mut Vec<Finding>) -> bool {
        let what = self.what;
        if let Some(&first) = self.displays.get(&names[0]) {
            findings.push(Finding::error(
                line,
                format!("duplicate {what} {:?} (first on line {first})", names[0]),
            ));
            return false;
        }
        self.displays.insert(names[0].clone(), line);
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                findings.push(Finding::warning(
                    line,
                    format!("{name:?} is listed twice on this line"),
                ));
            } else if let Some(&other) = self.all.get(name) {
                findings.push(Finding::warning(
                    line,
                    format!("{name:?} also names the {what} on line {other}; a name should belong to one {what}"),
                ));
            } else {
                self.all.insert(name.clone(), line);
            }
        }
        true
    }
}

/// The language a name's script points to: `ko` for Hangul, `en` for Latin letters (English is
/// the Latin-script language every registered model knows); `None` for other scripts.
pub fn script_language(name: &str) -> Option<&'static str> {
    if is_korean(name) {
        Some("ko")
    } else if name.chars().any(|c| c.is_ascii_alphabetic()) {
        Some("en")
    } else {
        None
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
    fn groups_cover_the_classes_below_them() {
        let set =
            parse(b"free\n[\xec\xb0\x8c\xea\xb0\x9c | stew]\na\n# c\nb\n[rice]\nc\n").unwrap();
        let groups: Vec<Option<&str>> = set
            .classes
            .iter()
            .map(|c| c.group.map(|g| set.groups[g].display()))
            .collect();
        assert_eq!(groups, [None, Some("찌개"), Some("찌개"), Some("rice")]);
        assert_eq!(set.groups[0].names, ["찌개", "stew"]);
        assert_eq!(set.groups[1].line, 6);
        let e = parse(b"[stew\na\n").unwrap_err().to_string();
        assert_eq!(e, "l.txt:1: group header \"[stew\" has no closing ']'");
        let e = parse(b"[a]\nx\n[ | b]\ny\n").unwrap_err().to_string();
        assert!(e.starts_with("l.txt:3: empty name"), "{e}");
        let e = parse(b"[a]\nx\n[a]\ny\n").unwrap_err().to_string();
        assert_eq!(e, "l.txt:3: duplicate group \"a\" (first on line 1)");
    }

    #[test]
    fn every_problem_is_listed_with_its_line() {
        let text = b"early\n[soup]\n[stew]\na | x | x\nb | x\na\nc || d\n";
        let (set, findings) = LabelSet::parse_all(text, Path::new("l.txt")).unwrap();
        assert_eq!(set.classes.len(), 3);
        let got: Vec<(Severity, Option<usize>, &str)> = findings
            .iter()
            .map(|f| (f.severity, f.line, f.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Severity::Warning,
                    Some(1),
                    "class \"early\" comes before the first group header"
                ),
                (Severity::Warning, Some(2), "group \"soup\" has no classes"),
                (
                    Severity::Warning,
                    Some(4),
                    "\"x\" is listed twice on this line"
                ),
                (
                    Severity::Warning,
                    Some(5),
                    "\"x\" also names the class on line 4; a name should belong to one class"
                ),
                (
                    Severity::Error,
                    Some(6),
                    "duplicate class \"a\" (first on line 4)"
                ),
                (
                    Severity::Error,
                    Some(7),
                    "empty name in \"c || d\" (names are separated by '|')"
                ),
            ]
        );
    }
}
