//! Printing results, one record per input, flushed as written; and atomic file writes.

use crate::classify::{GroupScore, Prediction, Ranking};
use serde::Serialize;
use std::io::{self, Write};
use std::path::Path;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    Table,
    /// One JSON object per line.
    Jsonl,
    /// One JSON array (streamed).
    Json,
    /// Comma-separated: path, \[decision,\] rank, label, \[group, group_prob,\] score, prob, error.
    Csv,
    /// Tab-separated, same columns as CSV.
    Tsv,
}

#[derive(Serialize)]
struct PredictionsRecord<'a> {
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    predictions: &'a [Prediction],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    groups: &'a [GroupScore],
}

#[derive(Serialize)]
struct EmbeddingRecord<'a> {
    path: &'a str,
    embedding: &'a [f32],
}

#[derive(Serialize)]
struct ErrorRecord<'a> {
    path: &'a str,
    error: &'a str,
}

impl Serialize for Prediction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Prediction", 4)?;
        st.serialize_field("label", &self.label)?;
        if let Some(g) = &self.group {
            st.serialize_field("group", g)?;
        }
        st.serialize_field("score", &self.score)?;
        st.serialize_field("prob", &self.prob)?;
        st.end()
    }
}

impl Serialize for GroupScore {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("GroupScore", 2)?;
        st.serialize_field("group", &self.group)?;
        st.serialize_field("prob", &self.prob)?;
        st.end()
    }
}

/// Writes records in one format to `out`, flushing after each.
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    records: usize,
    continuing: bool,
    groups: bool,
    decision: bool,
}

impl<W: Write> Printer<W> {
    /// A printer; nothing is written until the first record.
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            records: 0,
            continuing: false,
            groups: false,
            decision: false,
        }
    }

    /// Adds a `decision` column to CSV and TSV (the class, or `unknown`, under an open-set rule).
    pub fn with_decision(mut self) -> Self {
        self.decision = true;
        self
    }

    /// Adds `group` and `group_prob` columns to CSV and TSV (for label files with groups).
    pub fn with_groups(mut self) -> Self {
        self.groups = true;
        self
    }

    /// A printer appending to output that already has its CSV/TSV header (`--resume`).
    pub fn continuing(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            records: 0,
            continuing: true,
            groups: false,
            decision: false,
        }
    }

    /// Starts a record: the JSON array's separator, or the CSV/TSV header before the first
    /// prediction record.
    fn begin_record(&mut self, header: bool) -> io::Result<()> {
        match self.format {
            Format::Json => self
                .out
                .write_all(if self.records == 0 { b"[\n" } else { b",\n" })?,
            Format::Csv | Format::Tsv if header && self.records == 0 && !self.continuing => {
                let columns = self.columns();
                self.row(&columns)?
            }
            _ => {}
        }
        self.records += 1;
        Ok(())
    }

    /// The CSV/TSV columns of prediction records.
    fn columns(&self) -> Vec<&'static str> {
        let mut c = vec!["path"];
        if self.decision {
            c.push("decision");
        }
        c.extend(["rank", "label"]);
        if self.groups {
            c.extend(["group", "group_prob"]);
        }
        c.extend(["score", "prob", "error"]);
        c
    }

    fn json_line<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        if self.format == Format::Jsonl {
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn row(&mut self, fields: &[&str]) -> io::Result<()> {
        let line: Vec<String> = match self.format {
            Format::Csv => fields.iter().map(|f| csv_field(f)).collect(),
            _ => fields
                .iter()
                .map(|f| f.replace(['\t', '\n', '\r'], " "))
                .collect(),
        };
        writeln!(
            self.out,
            "{}",
            line.join(if self.format == Format::Csv {
                ","
            } else {
                "\t"
            })
        )
    }

    /// One photo's ranking (predictions already cut to top-k; `groups` empty unless group
    /// scores were asked for), or its error.
    pub fn predictions(&mut self, path: &str, result: &Result<Ranking, String>) -> io::Result<()> {
        self.begin_record(true)?;
        match (self.format, result) {
            (Format::Json | Format::Jsonl, Ok(r)) => self.json_line(&PredictionsRecord {
                path,
                label: r.decision.as_deref(),
                predictions: &r.predictions,
                groups: &r.groups,
            })?,
            (Format::Json | Format::Jsonl, Err(e)) => {
                self.json_line(&ErrorRecord { path, error: e })?
            }
            (Format::Csv | Format::Tsv, Ok(r)) => {
                for (i, p) in r.predictions.iter().enumerate() {
                    let mut row = vec![path.to_string()];
                    if self.decision {
                        row.push(r.decision.clone().unwrap_or_default());
                    }
                    row.extend([(i + 1).to_string(), p.label.clone()]);
                    if self.groups {
                        let group = p.group.clone().unwrap_or_default();
                        let group_prob = r
                            .groups
                            .iter()
                            .find(|g| g.group == group)
                            .map_or(String::new(), |g| g.prob.to_string());
                        row.extend([group, group_prob]);
                    }
                    row.extend([p.score.to_string(), p.prob.to_string(), String::new()]);
                    let row: Vec<&str> = row.iter().map(String::as_str).collect();
                    self.row(&row)?;
                }
            }
            (Format::Csv | Format::Tsv, Err(e)) => {
                let mut row = vec![""; self.columns().len()];
                row[0] = path;
                *row.last_mut().expect("columns") = e;
                self.row(&row)?
            }
            (Format::Table, Ok(r)) => {
                match &r.decision {
                    Some(d) => writeln!(self.out, "{path}  -> {d}")?,
                    None => writeln!(self.out, "{path}")?,
                }
                for (i, p) in r.predictions.iter().enumerate() {
                    let group = p
                        .group
                        .as_ref()
                        .map_or(String::new(), |g| format!("  [{g}]"));
                    writeln!(
                        self.out,
                        "  {:>3}  {:>7.4}  {:>6.2}%  {}{group}",
                        i + 1,
                        p.score,
                        p.prob * 100.0,
                        p.label
                    )?;
                }
                if !r.groups.is_empty() {
                    let top: Vec<String> = r
                        .groups
                        .iter()
                        .take(3)
                        .map(|g| format!("{} {:.1}%", g.group, g.prob * 100.0))
                        .collect();
                    writeln!(self.out, "  groups: {}", top.join(", "))?;
                }
            }
            (Format::Table, Err(e)) => writeln!(self.out, "{path}\n  error: {e}")?,
        }
        self.out.flush()
    }

    /// One photo's embedding, or its error.
    pub fn embedding(&mut self, path: &str, result: &Result<Vec<f32>, String>) -> io::Result<()> {
        self.begin_record(false)?;
        match (self.format, result) {
            (Format::Json | Format::Jsonl, Ok(e)) => {
                self.json_line(&EmbeddingRecord { path, embedding: e })?
            }
            (Format::Json | Format::Jsonl, Err(e)) => {
                self.json_line(&ErrorRecord { path, error: e })?
            }
            (Format::Csv | Format::Tsv | Format::Table, Ok(e)) => {
                let values: Vec<String> = e.iter().map(f32::to_string).collect();
                let sep = if self.format == Format::Csv {
                    ","
                } else {
                    "\t"
                };
                writeln!(self.out, "{}{sep}{}", csv_field(path), values.join(sep))?
            }
            (Format::Csv | Format::Tsv | Format::Table, Err(e)) => {
                writeln!(self.out, "{path}\terror: {e}")?
            }
        }
        self.out.flush()
    }

    /// Closes the output (the JSON array's bracket).
    pub fn finish(&mut self) -> io::Result<()> {
        if self.format == Format::Json {
            self.out
                .write_all(if self.records == 0 { b"[]\n" } else { b"\n]\n" })?;
        }
        self.out.flush()
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over the target, so readers see the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds() -> Ranking {
        Ranking {
            predictions: vec![Prediction {
                class: 0,
                label: "김치, \"찌개\"".into(),
                group: None,
                score: 0.5,
                prob: 0.75,
            }],
            groups: Vec::new(),
            decision: None,
        }
    }

    #[test]
    fn json_array_is_valid_with_and_without_records() {
        let mut p = Printer::new(Vec::new(), Format::Json);
        p.finish().unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&p.out).unwrap(),
            serde_json::json!([])
        );
        let mut p = Printer::new(Vec::new(), Format::Json);
        p.predictions("a.jpg", &Ok(preds())).unwrap();
        p.predictions("b.jpg", &Err("bad".into())).unwrap();
        p.finish().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.out).unwrap();
        assert_eq!(v[0]["predictions"][0]["prob"], 0.75);
        assert_eq!(v[1]["error"], "bad");
    }

    #[test]
    fn csv_quotes_and_tsv_flattens() {
        let mut p = Printer::new(Vec::new(), Format::Csv);
        p.predictions("a.jpg", &Ok(preds())).unwrap();
        let text = String::from_utf8(p.out).unwrap();
        assert_eq!(
            text,
            "path,rank,label,score,prob,error\na.jpg,1,\"김치, \"\"찌개\"\"\",0.5,0.75,\n"
        );
        let mut p = Printer::new(Vec::new(), Format::Tsv);
        p.predictions("a\tb.jpg", &Err("x".into())).unwrap();
        assert_eq!(
            String::from_utf8(p.out).unwrap().lines().nth(1).unwrap(),
            "a b.jpg\t\t\t\t\tx"
        );
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
