//! `foodclip models list`: the registry of known checkpoints.

use super::ui::{to_stdout, write_json};
use super::Outcome;
use crate::output::Format;
use crate::registry::Registry;
use anyhow::Result;
use std::io::Write;

pub(super) fn list(registry: &Registry, format: Format) -> Result<Outcome> {
    to_stdout(|out| match format {
        Format::Json | Format::Jsonl => write_json(out, &registry.entries),
        _ => {
            writeln!(
                out,
                "{:<28} {:<36} {:<8} {:<8} NOTES",
                "NAME", "HUB ID", "LANGS", "LICENSE"
            )?;
            for e in &registry.entries {
                let name = if e.default {
                    format!("{} (default)", e.name)
                } else {
                    e.name.clone()
                };
                writeln!(
                    out,
                    "{:<28} {:<36} {:<8} {:<8} {}",
                    name,
                    e.hub_id,
                    e.languages.join(","),
                    e.license,
                    e.notes
                )?;
            }
            Ok(())
        }
    })?;
    Ok(Outcome::Success)
}
