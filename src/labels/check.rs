//! `foodclip labels check`: what a label file's parse cannot see on its own. Names the tokenizer
//! cuts short, names in a script the model was not trained on, and classes the model can hardly
//! tell apart.

use super::{script_language, Finding, LabelSet, Severity, Templates};
use crate::model::tokenizer::PromptTokenizer;
use crate::registry::{ModelEntry, Registry};
use anyhow::Result;

/// Two classes whose embeddings are close.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusablePair {
    /// Index of the first class (in file order).
    pub a: usize,
    /// Index of the second class.
    pub b: usize,
    /// Cosine similarity of their embeddings.
    pub cosine: f32,
}

/// Pairs at or above this cosine are reported as warnings: the model barely separates them.
pub const CONFUSABLE_COSINE: f32 = 0.95;

/// One warning per name whose prompts exceed the model's context and are cut.
pub fn truncated_names(
    set: &LabelSet,
    templates: &Templates,
    tokenizer: &PromptTokenizer,
) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    for class in &set.classes {
        for name in &class.names {
            let mut cut = 0;
            for prompt in templates.prompts(name) {
                cut += usize::from(tokenizer.encode(&prompt)?.truncated);
            }
            if cut > 0 {
                findings.push(Finding::warning(
                    class.line,
                    format!(
                        "name {name:?} makes {} longer than the model's {}-token context, cut to \
                         fit (shorten the name)",
                        crate::text::count(cut, "prompt", "prompts"),
                        tokenizer.max_len()
                    ),
                ));
            }
        }
    }
    Ok(findings)
}

/// A warning when the names use a language `entry`'s text encoder was not trained on, naming a
/// registered model that knows every language used.
pub fn language_mismatch(
    set: &LabelSet,
    entry: &ModelEntry,
    registry: &Registry,
) -> Option<Finding> {
    // Each language used, with its first name.
    let mut used: Vec<(&str, &str)> = Vec::new();
    for name in set.classes.iter().flat_map(|c| &c.names) {
        if let Some(lang) = script_language(name) {
            if !used.iter().any(|(l, _)| *l == lang) {
                used.push((lang, name));
            }
        }
    }
    let knows = |e: &ModelEntry, lang: &str| e.languages.iter().any(|l| l == lang);
    let unknown: Vec<String> = used
        .iter()
        .filter(|(lang, _)| !knows(entry, lang))
        .map(|(lang, example)| format!("{} names (e.g. {example:?})", language_name(lang)))
        .collect();
    if unknown.is_empty() {
        return None;
    }
    let fits = registry
        .entries
        .iter()
        .filter(|e| used.iter().all(|(lang, _)| knows(e, lang)))
        .max_by_key(|e| e.default);
    let advice = match fits {
        Some(e) => format!("use --model {}", e.name),
        None => "no registered model knows all of them".to_string(),
    };
    Some(Finding {
        severity: Severity::Warning,
        line: None,
        message: format!(
            "{} are written in a language the text encoder of {} was not trained on ({}); {advice}",
            unknown.join(" and "),
            entry.name,
            entry.languages.join(", "),
        ),
    })
}

fn language_name(code: &str) -> &str {
    match code {
        "ko" => "Korean",
        "en" => "English",
        other => other,
    }
}

/// The `n` most similar pairs of classes, most similar first, from the class embeddings
/// `(classes, dim)` (unit rows).
pub fn confusable_pairs(e: &candle_core::Tensor, n: usize) -> Result<Vec<ConfusablePair>> {
    let sims = e.matmul(&e.t()?)?.to_vec2::<f32>()?;
    let mut pairs: Vec<ConfusablePair> = sims
        .iter()
        .enumerate()
        .flat_map(|(a, row)| {
            row.iter()
                .enumerate()
                .skip(a + 1)
                .map(move |(b, &cosine)| ConfusablePair { a, b, cosine })
        })
        .collect();
    pairs.sort_by(|x, y| y.cosine.total_cmp(&x.cosine));
    pairs.truncate(n);
    Ok(pairs)
}

/// A warning for each pair at or above [`CONFUSABLE_COSINE`].
pub fn confusable_findings(set: &LabelSet, pairs: &[ConfusablePair]) -> Vec<Finding> {
    pairs
        .iter()
        .filter(|p| p.cosine >= CONFUSABLE_COSINE)
        .map(|p| {
            let (a, b) = (&set.classes[p.a], &set.classes[p.b]);
            Finding::warning(
                b.line,
                format!(
                    "class {:?} is nearly the same as {:?} (line {}) to the model (cosine {:.4}); merge them, or add names that tell them apart",
                    b.display(),
                    a.display(),
                    a.line,
                    p.cosine
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn set(text: &str) -> LabelSet {
        LabelSet::parse(text.as_bytes(), Path::new("l.txt")).unwrap()
    }

    #[test]
    fn language_advice_names_a_fitting_model() {
        let registry = Registry::builtin();
        let english = registry.find("clip-vit-base-patch32").unwrap();
        let korean = registry.find("clip-vit-base-patch32-ko").unwrap();
        let mixed = set("김치찌개 | kimchi stew\nramen\n");
        let f = language_mismatch(&mixed, english, &registry).unwrap();
        assert_eq!(
            f.message,
            "Korean names (e.g. \"김치찌개\") are written in a language the text encoder of \
             clip-vit-base-patch32 was not trained on (en); use --model clip-vit-base-patch32-ko"
        );
        assert_eq!(language_mismatch(&mixed, korean, &registry), None);
        assert_eq!(language_mismatch(&set("ramen\n"), english, &registry), None);
        // Digits and symbols say nothing about the language.
        assert_eq!(
            language_mismatch(&set("7-up\n1234\n"), english, &registry),
            None
        );
    }
}
