//! `foodclip labels show` and `foodclip labels check`.

use super::context::Context;
use super::flags::{LabelsCheckArgs, LabelsShowArgs};
use super::ui::{to_stdout, write_json};
use super::Outcome;
use crate::labels::check::{self, ConfusablePair};
use crate::labels::{Finding, LabelSet, Severity, Templates};
use crate::output::Format;
use crate::text::count;
use anyhow::Result;
use serde_json::json;
use std::io::Write;

/// `labels show`.
pub(super) fn show(args: &LabelsShowArgs) -> Result<Outcome> {
    let set = LabelSet::load(&args.file)?;
    let templates = Templates::from_args(&args.templates.templates)?;
    print_set(&set, &templates, args.format)?;
    Ok(Outcome::Success)
}

/// `labels check`: exits 1 when the file has errors.
pub(super) fn check(cx: &Context, args: &LabelsCheckArgs) -> Result<Outcome> {
    let (set, mut findings) = LabelSet::load_all(&args.file)?;
    let templates = Templates::from_args(&args.templates.templates)?;
    let mut pairs = Vec::new();
    if !args.no_model {
        let ckpt = match cx.model(true) {
            Ok(ckpt) => ckpt,
            Err(e) => {
                // The file's own findings (in line order) are still worth having.
                report(&set, &findings, &[], args.format)?;
                return Err(
                    e.context("the model checks need a model; --no-model checks the file alone")
                );
            }
        };
        findings.extend(check::truncated_names(&set, &templates, &ckpt.tokenizer)?);
        if let Some(entry) = ckpt.source.entry(&cx.registry) {
            findings.extend(check::language_mismatch(&set, entry, &cx.registry));
        }
        if set.classes.len() > 1 {
            let classifier = cx.classifier(&ckpt, &set, &templates)?;
            pairs = check::confusable_pairs(classifier.embeddings(), args.pairs)?;
            findings.extend(check::confusable_findings(&set, &pairs));
        }
    }
    findings.sort_by_key(|f| f.line.unwrap_or(usize::MAX));
    report(&set, &findings, &pairs, args.format)?;
    Ok(if findings.iter().any(|f| f.severity == Severity::Error) {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

/// Prints groups, classes, their names and the final prompts.
fn print_set(set: &LabelSet, templates: &Templates, format: Format) -> Result<()> {
    let prompts = |names: &[String]| -> Vec<String> {
        names.iter().flat_map(|n| templates.prompts(n)).collect()
    };
    to_stdout(|out| {
        if matches!(format, Format::Json | Format::Jsonl) {
            let value = json!({
                "path": set.path.display().to_string(),
                "groups": set.groups.iter().map(|g| json!({
                    "name": g.display(), "names": g.names, "line": g.line,
                })).collect::<Vec<_>>(),
                "classes": set.classes.iter().map(|c| json!({
                    "name": c.display(),
                    "names": c.names,
                    "line": c.line,
                    "group": c.group.map(|g| set.groups[g].display()),
                    "prompts": prompts(&c.names),
                })).collect::<Vec<_>>(),
            });
            write_json(out, &value)
        } else {
            writeln!(out, "{}", headline(set))?;
            let mut group = None;
            for c in &set.classes {
                if c.group != group {
                    group = c.group;
                    if let Some(g) = group.map(|g| &set.groups[g]) {
                        writeln!(out, "\n[{}]  line {}", g.names.join(" | "), g.line)?;
                    }
                }
                writeln!(out, "  {}  line {}", c.display(), c.line)?;
                if c.names.len() > 1 {
                    writeln!(out, "    also: {}", c.names[1..].join(", "))?;
                }
                for p in prompts(&c.names) {
                    writeln!(out, "    > {p}")?;
                }
            }
            Ok(())
        }
    })
}

/// Prints the findings of `labels check` and the most similar class pairs.
fn report(
    set: &LabelSet,
    findings: &[Finding],
    pairs: &[ConfusablePair],
    format: Format,
) -> Result<()> {
    let of = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings) = (of(Severity::Error), of(Severity::Warning));
    to_stdout(|out| {
        if matches!(format, Format::Json | Format::Jsonl) {
            let value = json!({
                "path": set.path.display().to_string(),
                "classes": set.classes.len(),
                "groups": set.groups.len(),
                "errors": errors,
                "warnings": warnings,
                "findings": findings.iter().map(|f| json!({
                    "severity": f.severity.to_string(), "line": f.line, "message": f.message,
                })).collect::<Vec<_>>(),
                "similar_pairs": pairs.iter().map(|p| json!({
                    "a": set.classes[p.a].display(), "a_line": set.classes[p.a].line,
                    "b": set.classes[p.b].display(), "b_line": set.classes[p.b].line,
                    "cosine": p.cosine,
                })).collect::<Vec<_>>(),
            });
            write_json(out, &value)
        } else {
            for f in findings {
                let place = match f.line {
                    Some(line) => format!("{}:{line}", set.path.display()),
                    None => set.path.display().to_string(),
                };
                writeln!(out, "{place}: {}: {}", f.severity, f.message)?;
            }
            if !pairs.is_empty() {
                writeln!(out, "most similar classes (cosine of class embeddings):")?;
                for p in pairs {
                    let (a, b) = (&set.classes[p.a], &set.classes[p.b]);
                    writeln!(
                        out,
                        "  {:.4}  {} (line {})  ~  {} (line {})",
                        p.cosine,
                        a.display(),
                        a.line,
                        b.display(),
                        b.line
                    )?;
                }
            }
            writeln!(
                out,
                "{}: {}, {}",
                headline(set),
                count(errors, "error", "errors"),
                count(warnings, "warning", "warnings")
            )
        }
    })
}

/// `FILE: N classes, M groups`.
fn headline(set: &LabelSet) -> String {
    format!(
        "{}: {}, {}",
        set.path.display(),
        count(set.classes.len(), "class", "classes"),
        count(set.groups.len(), "group", "groups")
    )
}
