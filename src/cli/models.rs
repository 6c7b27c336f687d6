//! `foodclip models list`: the registry of known checkpoints.

use super::ui::{to_stdout, write_json};
use super::Outcome;
use crate::output::Format;
use crate::registry::Registry;
use crate::text::{columns, pad};
use anyhow::Result;
use std::io::Write;

pub(super) fn list(registry: &Registry, format: Format) -> Result<Outcome> {
    to_stdout(|out| match format {
        Format::Json | Format::Jsonl => write_json(out, &registry.entries),
        _ => {
            let rows: Vec<[String; 5]> = registry
                .entries
                .iter()
                .map(|e| {
                    let name = match e.default {
                        true => format!("{} (default)", e.name),
                        false => e.name.clone(),
                    };
                    let languages = e.languages.join(",");
                    [
                        name,
                        e.hub_id.clone(),
                        languages,
                        e.license.clone(),
                        e.notes.clone(),
                    ]
                })
                .collect();
            let header = ["NAME", "HUB ID", "LANGS", "LICENSE", "NOTES"].map(String::from);
            // Each column as wide as its widest cell; the notes run on at the end.
            let widths: [usize; 4] = std::array::from_fn(|i| {
                let all = rows.iter().chain([&header]);
                all.map(|r| columns(&r[i])).max().unwrap_or(0)
            });
            for row in [&header].into_iter().chain(&rows) {
                let mut line: String = (0..4).map(|i| pad(&row[i], widths[i] + 2)).collect();
                line.push_str(&row[4]);
                writeln!(out, "{}", line.trim_end())?;
            }
            Ok(())
        }
    })?;
    Ok(Outcome::Success)
}
