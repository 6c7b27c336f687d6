//! Prompt templates: the shipped sets under `labels/templates/`, or the user's.

use super::is_korean;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Prompt templates; `{}` stands for a class name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Templates {
    /// The shipped sets (`labels/templates/food.en.txt`, `food.ko.txt`), chosen per name by its
    /// script: Hangul names get the Korean set, all others the English one.
    Default,
    /// The user's templates, for every name.
    Custom(Vec<String>),
}

/// `labels/templates/food.en.txt`, built in.
const ENGLISH_FILE: &str = include_str!("../../labels/templates/food.en.txt");
/// `labels/templates/food.ko.txt`, built in.
const KOREAN_FILE: &str = include_str!("../../labels/templates/food.ko.txt");

impl Templates {
    /// Templates from `--template` values: each one a template with `{}`, or else a template
    /// file (one per line, `#` comments), such as `labels/templates/food.en.txt`.
    ///
    /// ```
    /// use foodclip::labels::Templates;
    /// let t = Templates::from_args(&["{} on a tray".to_string()]).unwrap();
    /// assert_eq!(t.prompts("bibimbap"), ["bibimbap on a tray"]);
    /// ```
    pub fn from_args(values: &[String]) -> Result<Self> {
        if values.is_empty() {
            return Ok(Templates::Default);
        }
        let mut templates = Vec::new();
        for v in values {
            if v.contains("{}") {
                templates.push(v.clone());
                continue;
            }
            let path = Path::new(v);
            if !path.is_file() {
                bail!("--template {v:?}: neither a template with {{}} for the class name nor a template file (use '{{}}' for the bare name)");
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read template file {}", path.display()))?;
            templates.extend(parse_templates(&text, path)?);
        }
        Ok(Templates::Custom(templates))
    }

    /// The templates used for `name`.
    pub fn for_name(&self, name: &str) -> Vec<String> {
        match self {
            Templates::Custom(ts) => ts.clone(),
            Templates::Default => {
                let (file, text) = if is_korean(name) {
                    ("food.ko.txt", KOREAN_FILE)
                } else {
                    ("food.en.txt", ENGLISH_FILE)
                };
                parse_templates(text, Path::new(file)).expect("built-in templates are valid")
            }
        }
    }

    /// The prompts for one name.
    pub fn prompts(&self, name: &str) -> Vec<String> {
        self.for_name(name)
            .iter()
            .map(|t| t.replace("{}", name))
            .collect()
    }
}

/// Parses a template file: one template per line, each with `{}`; `#` comments, blank lines.
fn parse_templates(text: &str, path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.contains("{}") {
            bail!(
                "{}:{}: template {line:?} has no {{}} for the class name",
                path.display(),
                i + 1
            );
        }
        out.push(line.to_string());
    }
    if out.is_empty() {
        bail!(
            "{}: no templates (one per line, {{}} for the class name)",
            path.display()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_follow_script() {
        assert_eq!(Templates::Default.prompts("김치찌개")[0], "김치찌개 사진.");
        assert_eq!(
            Templates::Default.prompts("ramen")[0],
            "a photo of ramen, a type of food."
        );
        assert_eq!(
            Templates::from_args(&["{}".into()])
                .unwrap()
                .prompts("라면"),
            ["라면"]
        );
        let e = Templates::from_args(&["no slot".into()]).unwrap_err();
        assert!(e.to_string().contains("neither a template"), "{e}");
    }
}
