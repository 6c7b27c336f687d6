//! Printing for `foodclip labels show` and `foodclip labels check`.

use super::{quiet_on_closed_pipe, write_json};
use crate::labels::check::ConfusablePair;
use crate::labels::{Finding, LabelSet, Severity, Templates};
use crate::output::Format;
use anyhow::Result;
use serde_json::json;
use std::io::{self, Write};

/// Prints groups, classes, their names and the final prompts.
pub fn show(set: &LabelSet, templates: &Templates, format: Format) -> Result<()> {
    let prompts = |names: &[String]| -> Vec<String> {
        names.iter().flat_map(|n| templates.prompts(n)).collect()
    };
    let mut out = io::stdout().lock();
    let r = if matches!(format, Format::Json | Format::Jsonl) {
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
        write_json(&mut out, &value)
    } else {
        (|| {
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
        })()
    };
    quiet_on_closed_pipe(r)
}

/// Prints the findings of `labels check` and the most similar class pairs.
pub fn report(
    set: &LabelSet,
    findings: &[Finding],
    pairs: &[ConfusablePair],
    format: Format,
) -> Result<()> {
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    let mut out = io::stdout().lock();
    let r = if matches!(format, Format::Json | Format::Jsonl) {
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
        write_json(&mut out, &value)
    } else {
        (|| {
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
                "{}: {errors} errors, {warnings} warnings",
                headline(set)
            )
        })()
    };
    quiet_on_closed_pipe(r)
}

/// `FILE: N classes, M groups`.
fn headline(set: &LabelSet) -> String {
    format!(
        "{}: {} classes, {} groups",
        set.path.display(),
        set.classes.len(),
        set.groups.len()
    )
}
