//! Printing results, one record per input, flushed as written; and atomic file writes.

use crate::classify::Prediction;
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
    /// Comma-separated: path, rank, label, score, prob, error.
    Csv,
    /// Tab-separated, same columns as CSV.
    Tsv,
}

#[derive(Serialize)]
struct PredictionsRecord<'a> {
    path: &'a str,
    predictions: &'a [Prediction],
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
        let mut st = s.serialize_struct("Prediction", 3)?;
        st.serialize_field("label", &self.label)?;
        st.serialize_field("score", &self.score)?;
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
}

impl<W: Write> Printer<W> {
    /// A printer; nothing is written until the first record.
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            records: 0,
            continuing: false,
        }
    }

    /// A printer appending to output that already has its CSV/TSV header (`--resume`).
    pub fn continuing(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            records: 0,
            continuing: true,
        }
    }

    fn begin_record(&mut self) -> io::Result<()> {
        match self.format {
            Format::Json => self
                .out
                .write_all(if self.records == 0 { b"[\n" } else { b",\n" })?,
            Format::Csv | Format::Tsv if self.records == 0 && !self.continuing => {
                let sep = if self.format == Format::Csv {
                    ","
                } else {
                    "\t"
                };
                writeln!(
                    self.out,
                    "{}",
                    ["path", "rank", "label", "score", "prob", "error"].join(sep)
                )?
            }
            _ => {}
        }
        self.records += 1;
        Ok(())
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

    /// One photo's ranked predictions (already cut to top-k), or its error.
    pub fn predictions(
        &mut self,
        path: &str,
        result: &Result<Vec<Prediction>, String>,
    ) -> io::Result<()> {
        self.begin_record()?;
        match (self.format, result) {
            (Format::Json | Format::Jsonl, Ok(p)) => self.json_line(&PredictionsRecord {
                path,
                predictions: p,
            })?,
            (Format::Json | Format::Jsonl, Err(e)) => {
                self.json_line(&ErrorRecord { path, error: e })?
            }
            (Format::Csv | Format::Tsv, Ok(preds)) => {
                for (i, p) in preds.iter().enumerate() {
                    let (rank, score, prob) =
                        ((i + 1).to_string(), p.score.to_string(), p.prob.to_string());
                    self.row(&[path, &rank, &p.label, &score, &prob, ""])?;
                }
            }
            (Format::Csv | Format::Tsv, Err(e)) => self.row(&[path, "", "", "", "", e])?,
            (Format::Table, Ok(preds)) => {
                writeln!(self.out, "{path}")?;
                for (i, p) in preds.iter().enumerate() {
                    writeln!(
                        self.out,
                        "  {:>3}  {:>7.4}  {:>6.2}%  {}",
                        i + 1,
                        p.score,
                        p.prob * 100.0,
                        p.label
                    )?;
                }
            }
            (Format::Table, Err(e)) => writeln!(self.out, "{path}\n  error: {e}")?,
        }
        self.out.flush()
    }

    /// One photo's embedding, or its error.
    pub fn embedding(&mut self, path: &str, result: &Result<Vec<f32>, String>) -> io::Result<()> {
        self.begin_record()?;
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

    fn preds() -> Vec<Prediction> {
        vec![Prediction {
            label: "김치, \"찌개\"".into(),
            score: 0.5,
            prob: 0.75,
        }]
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
