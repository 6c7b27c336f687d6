//! Printing results, one record per input, flushed as written; and reading those records back
//! for `--resume`. CSV and TSV go through the `csv` crate, paths losslessly (see
//! [`crate::fsutil`]).

use crate::classify::{GroupScore, Prediction, Ranking};
use crate::fsutil::{path_from_bytes, path_from_json, PathJson};
use crate::regions::Region;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// A COCO results array (`image_id`, `bbox`, `category_id`, `score`, and `segmentation`
    /// for found regions), for regions read from COCO JSON or found by `--regions auto`.
    Coco,
}

impl Format {
    /// Every format's name, as `--format` takes them.
    pub const NAMES: [&'static str; 6] = ["table", "jsonl", "json", "csv", "tsv", "coco"];

    /// The format a file's extension names (any case): `.jsonl` or `.ndjson`, `.json`, `.csv`,
    /// `.tsv`; `None` for any other.
    ///
    /// ```
    /// use foodclip::output::Format;
    /// assert_eq!(Format::of_file("day1/trays.CSV".as_ref()), Some(Format::Csv));
    /// assert_eq!(Format::of_file("trays.out".as_ref()), None);
    /// ```
    pub fn of_file(path: &Path) -> Option<Format> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match extension.as_str() {
            "jsonl" | "ndjson" => Format::Jsonl,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            _ => return None,
        })
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    /// ```
    /// use foodclip::output::Format;
    /// assert_eq!("tsv".parse::<Format>(), Ok(Format::Tsv));
    /// assert!("xml".parse::<Format>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "table" => Format::Table,
            "jsonl" => Format::Jsonl,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "coco" => Format::Coco,
            other => {
                return Err(format!(
                    "unknown format {other:?} ({})",
                    Self::NAMES.join(", ")
                ))
            }
        })
    }
}

/// One CSV or TSV row as bytes, newline included. CSV quotes as needed; TSV has no quoting, so
/// tabs and line breaks inside a field become spaces.
pub fn csv_row<F: AsRef<[u8]>>(format: Format, fields: &[F]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .delimiter(if format == Format::Tsv { b'\t' } else { b',' })
        .quote_style(if format == Format::Tsv {
            csv::QuoteStyle::Never
        } else {
            csv::QuoteStyle::Necessary
        })
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let flat = |f: &[u8]| -> Vec<u8> {
        f.iter()
            .map(|&b| {
                if matches!(b, b'\t' | b'\n' | b'\r') {
                    b' '
                } else {
                    b
                }
            })
            .collect()
    };
    let record: Vec<Vec<u8>> = fields
        .iter()
        .map(|f| match format {
            Format::Tsv => flat(f.as_ref()),
            _ => f.as_ref().to_vec(),
        })
        .collect();
    w.write_record(&record).expect("writing to memory");
    w.into_inner().expect("writing to memory")
}

/// The path (first field) of every CSV/TSV row written by [`csv_row`] in `bytes` (after a
/// header line if `header`), failing on the first row that `is_record` refuses.
fn csv_paths(
    format: Format,
    bytes: &[u8],
    header: bool,
    what: &str,
    is_record: impl Fn(&csv::ByteRecord) -> bool,
) -> Result<Vec<PathBuf>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(if format == Format::Tsv { b'\t' } else { b',' })
        .quoting(format != Format::Tsv)
        .has_headers(header)
        .flexible(true)
        .from_reader(bytes);
    let mut paths = Vec::new();
    for row in reader.byte_records() {
        let row = row.context("unreadable CSV")?;
        if !is_record(&row) {
            let line = row.position().map_or(0, |p| p.line());
            bail!("line {line}: not a foodclip {what} record");
        }
        paths.push(path_from_bytes(row[0].to_vec()));
    }
    Ok(paths)
}

/// What a printer's records hold: the rankings of `classify` or the embeddings of `embed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Ranked predictions per photo.
    Predictions,
    /// One embedding per photo.
    Embedding,
    /// Search results: a photo (or region) and its score.
    Hits,
}

/// Everything that fixes the shape of a printer's records: format, kind and optional columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The format.
    pub format: Format,
    /// What the records hold.
    pub kind: RecordKind,
    /// `group` and `group_prob` columns in CSV and TSV (for label files with groups).
    pub groups: bool,
    /// A `decision` column in CSV and TSV (the class, or `unknown`, under an open-set rule).
    pub decision: bool,
    /// Records are regions of photos: `region,x1,y1,x2,y2` columns in CSV and TSV.
    pub regions: bool,
}

impl Layout {
    /// A layout without optional columns.
    pub fn new(format: Format, kind: RecordKind) -> Self {
        Self {
            format,
            kind,
            groups: false,
            decision: false,
            regions: false,
        }
    }

    /// The leading CSV/TSV columns of every record: the path, and the region.
    fn lead(&self) -> Vec<&'static str> {
        let mut c = vec!["path"];
        if self.regions {
            c.extend(["region", "x1", "y1", "x2", "y2"]);
        }
        c
    }

    /// The CSV/TSV columns of prediction records (and of search results).
    fn columns(&self) -> Vec<&'static str> {
        let mut c = self.lead();
        if self.kind == RecordKind::Hits {
            c.push("score");
            return c;
        }
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

    /// The photos recorded in output this layout wrote (for `--resume`): `whole` holds the
    /// complete lines, `partial` an unfinished last line. Fails, naming the line, on anything
    /// that is not such a record, and on an unfinished line that cannot be the start of one.
    pub fn recorded(&self, whole: &[u8], partial: &[u8]) -> Result<Vec<PathBuf>> {
        let what = match self.kind {
            RecordKind::Predictions => "classify",
            RecordKind::Embedding => "embed",
            RecordKind::Hits => bail!("search results are not resumed"),
        };
        match (self.format, self.kind) {
            (Format::Jsonl, _) => {
                let starts_a_record = |line: &[u8]| {
                    let rest = line.strip_prefix(b"{").unwrap_or(b"");
                    rest.trim_ascii_start().starts_with(b"\"path\"")
                };
                if !partial.is_empty() && !starts_a_record(partial) {
                    bail!("its last line is not the start of a foodclip record");
                }
                let body = if self.kind == RecordKind::Predictions {
                    "predictions"
                } else {
                    "embedding"
                };
                let mut paths = Vec::new();
                for (i, line) in whole.split_inclusive(|&b| b == b'\n').enumerate() {
                    let record: Option<serde_json::Value> = serde_json::from_slice(line).ok();
                    let path = record.as_ref().and_then(|r| {
                        let has_body = r.get(body).is_some() || r.get("error").is_some();
                        has_body
                            .then(|| r.get("path").and_then(path_from_json))
                            .flatten()
                    });
                    match path {
                        Some(p) => paths.push(p),
                        None => bail!("line {}: not a foodclip {what} record", i + 1),
                    }
                }
                Ok(paths)
            }
            (Format::Csv | Format::Tsv, RecordKind::Predictions | RecordKind::Hits) => {
                let columns = self.columns();
                let header = csv_row(self.format, &columns);
                if whole.is_empty() {
                    if !header.starts_with(partial) {
                        bail!("line 1 is not the header of this command's CSV/TSV records");
                    }
                    return Ok(Vec::new());
                }
                if !whole.starts_with(&header) {
                    bail!(
                        "line 1 is not this command's header ({}); were other flags given?",
                        columns.join(",")
                    );
                }
                let rank = columns.iter().position(|&c| c == "rank").expect("a column");
                csv_paths(self.format, whole, true, what, |row| {
                    row.len() == columns.len()
                        && (std::str::from_utf8(&row[rank]).is_ok_and(|r| r.parse::<u32>().is_ok())
                            || (row[rank].is_empty() && !row[row.len() - 1].is_empty()))
                })
            }
            (Format::Csv | Format::Tsv, RecordKind::Embedding) => {
                if whole.is_empty() && !partial.is_empty() {
                    bail!("its only line is unfinished, so it cannot be told from another file");
                }
                let number =
                    |f: &[u8]| std::str::from_utf8(f).is_ok_and(|v| v.parse::<f32>().is_ok());
                let lead = self.lead().len();
                csv_paths(self.format, whole, false, what, |row| {
                    row.len() > lead
                        && (row.iter().skip(lead).all(number)
                            || (row.len() == lead + 1 && row[lead].starts_with(b"error: ")))
                })
            }
            (Format::Table | Format::Json | Format::Coco, _) => {
                bail!("--resume needs a line format: --format jsonl, csv or tsv")
            }
        }
    }
}

/// Whose record it is: a photo's path (the commands), or an upload's (the server), with the
/// form field's file name when it has one.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A photo read from this path.
    Path(&'a Path),
    /// A photo sent to the server, and its file name if the form gave one.
    Upload(Option<&'a str>),
}

/// One JSON record, as `--format json` and `jsonl` write it: whose it is, and a ranking, an
/// embedding, or the error that stands in its place.
#[derive(Serialize)]
pub struct JsonRecord<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a Region>,
    #[serde(flatten)]
    body: Body<'a>,
}

/// What a [`JsonRecord`] holds.
#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Predictions {
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<&'a str>,
        predictions: &'a [Prediction],
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        groups: &'a [GroupScore],
    },
    Embedding {
        embedding: &'a [f32],
    },
    Error {
        error: &'a str,
    },
}

impl<'a> JsonRecord<'a> {
    fn new(origin: Origin<'a>, region: Option<&'a Region>, body: Body<'a>) -> Self {
        let (path, file) = match origin {
            Origin::Path(p) => (Some(PathJson(p)), None),
            Origin::Upload(file) => (None, file),
        };
        Self {
            path,
            file,
            region,
            body,
        }
    }

    /// The record of a ranking (or its error).
    pub fn predictions(
        origin: Origin<'a>,
        region: Option<&'a Region>,
        result: &'a Result<Ranking, String>,
    ) -> Self {
        let body = match result {
            Ok(r) => Body::Predictions {
                label: r.decision.as_deref(),
                predictions: &r.predictions,
                groups: &r.groups,
            },
            Err(error) => Body::Error { error },
        };
        Self::new(origin, region, body)
    }

    /// The record of an embedding (or its error).
    pub fn embedding(
        origin: Origin<'a>,
        region: Option<&'a Region>,
        result: &'a Result<Vec<f32>, String>,
    ) -> Self {
        let body = match result {
            Ok(embedding) => Body::Embedding { embedding },
            Err(error) => Body::Error { error },
        };
        Self::new(origin, region, body)
    }
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

/// One result of a COCO results array.
#[derive(Serialize)]
struct CocoResult<'a> {
    image_id: u64,
    bbox: [u32; 4],
    category_id: u64,
    score: f32,
    /// The region's mask, for regions found with one (`--regions auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    segmentation: Option<&'a crate::regions::mask::Rle>,
}

/// Writes records of one [`Layout`] to `out`; [`Printer::flush`] after each photo's records.
pub struct Printer<W: Write> {
    out: W,
    layout: Layout,
    records: usize,
    continuing: bool,
    /// For [`Format::Coco`]: each class's COCO category id, if it has one.
    categories: Vec<Option<u64>>,
    /// For [`Format::Coco`] without a COCO file's ids: each photo's id, in order of appearance
    /// from 1.
    image_ids: std::collections::HashMap<PathBuf, u64>,
}

impl<W: Write> Printer<W> {
    /// A printer; nothing is written until the first record.
    pub fn new(out: W, layout: Layout) -> Self {
        Self {
            out,
            layout,
            records: 0,
            continuing: false,
            categories: Vec::new(),
            image_ids: std::collections::HashMap::new(),
        }
    }

    /// Sets each class's COCO category id, for [`Format::Coco`].
    pub fn with_categories(self, categories: Vec<Option<u64>>) -> Self {
        Self { categories, ..self }
    }

    /// A printer appending to output that already has its CSV/TSV header (`--resume`).
    pub fn continuing(out: W, layout: Layout) -> Self {
        Self {
            continuing: true,
            ..Self::new(out, layout)
        }
    }

    /// Starts a record: the JSON array's separator, or the CSV/TSV header before the first
    /// prediction record.
    fn begin_record(&mut self) -> io::Result<()> {
        let header = self.layout.kind != RecordKind::Embedding;
        match self.layout.format {
            Format::Json | Format::Coco => {
                self.out
                    .write_all(if self.records == 0 { b"[\n" } else { b",\n" })?
            }
            Format::Csv | Format::Tsv if header && self.records == 0 && !self.continuing => {
                let columns = self.layout.columns();
                self.row(&columns)?
            }
            _ => {}
        }
        self.records += 1;
        Ok(())
    }

    fn json_line<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        if self.layout.format == Format::Jsonl {
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn row<F: AsRef<[u8]>>(&mut self, fields: &[F]) -> io::Result<()> {
        self.out.write_all(&csv_row(self.layout.format, fields))
    }

    /// The leading CSV/TSV fields of a record: the path, and the region's tag and box.
    fn lead(&self, path: &Path, region: Option<&Region>) -> Vec<Vec<u8>> {
        let mut row = vec![crate::fsutil::path_bytes(path).into_owned()];
        if self.layout.regions {
            row.push(region.map_or(String::new(), Region::tag).into_bytes());
            let rect = region.and_then(|r| r.rect);
            for i in 0..4 {
                row.push(
                    rect.map_or(String::new(), |b| b[i].to_string())
                        .into_bytes(),
                );
            }
        }
        row
    }

    /// How a record is named in tables: the path, and the region.
    fn title(path: &Path, region: Option<&Region>) -> String {
        match region {
            None => path.display().to_string(),
            Some(r) => match r.rect {
                Some([x1, y1, x2, y2]) => {
                    format!("{}  [{}: {x1},{y1},{x2},{y2}]", path.display(), r.tag())
                }
                None => format!("{}  [{}]", path.display(), r.tag()),
            },
        }
    }

    /// One COCO result for a region's ranking: the best class that has a category. Errors and
    /// rankings without such a class write nothing.
    fn coco(
        &mut self,
        path: &Path,
        region: Option<&Region>,
        result: &Result<Ranking, String>,
    ) -> io::Result<()> {
        let (Some(r), Ok(ranking)) = (region, result) else {
            return Ok(());
        };
        let Some([x1, y1, x2, y2]) = r.rect else {
            return Ok(());
        };
        let image_id = match r.image_id {
            Some(id) => id,
            None => {
                let next = self.image_ids.len() as u64 + 1;
                *self.image_ids.entry(path.to_path_buf()).or_insert(next)
            }
        };
        let best = ranking.predictions.iter().find_map(|p| {
            let category = self.categories.get(p.class).copied().flatten()?;
            Some((category, p.prob))
        });
        if let Some((category_id, score)) = best {
            self.begin_record()?;
            self.json_line(&CocoResult {
                image_id,
                bbox: [x1, y1, x2 - x1, y2 - y1],
                category_id,
                score,
                segmentation: r.segmentation.as_ref(),
            })?;
        }
        Ok(())
    }

    /// One record's ranking (predictions already cut to top-k; `groups` empty unless group
    /// scores were asked for), or its error: a photo's, or a region's.
    pub fn predictions(
        &mut self,
        path: &Path,
        region: Option<&Region>,
        result: &Result<Ranking, String>,
    ) -> io::Result<()> {
        if self.layout.format == Format::Coco {
            return self.coco(path, region, result);
        }
        self.begin_record()?;
        let layout = self.layout;
        match (layout.format, result) {
            (Format::Json | Format::Jsonl, _) => {
                self.json_line(&JsonRecord::predictions(Origin::Path(path), region, result))?
            }
            (Format::Csv | Format::Tsv, Ok(r)) => {
                let lead = self.lead(path, region);
                for (i, p) in r.predictions.iter().enumerate() {
                    let mut row: Vec<Vec<u8>> = lead.clone();
                    let mut text = |s: String| row.push(s.into_bytes());
                    if layout.decision {
                        text(r.decision.clone().unwrap_or_default());
                    }
                    text((i + 1).to_string());
                    text(p.label.clone());
                    if layout.groups {
                        let group = p.group.clone().unwrap_or_default();
                        let group_prob = r
                            .groups
                            .iter()
                            .find(|g| g.group == group)
                            .map_or(String::new(), |g| g.prob.to_string());
                        text(group);
                        text(group_prob);
                    }
                    text(p.score.to_string());
                    text(p.prob.to_string());
                    text(String::new());
                    self.row(&row)?;
                }
            }
            (Format::Csv | Format::Tsv, Err(e)) => {
                let mut row = self.lead(path, region);
                row.resize(layout.columns().len(), Vec::new());
                *row.last_mut().expect("columns") = e.as_bytes().to_vec();
                self.row(&row)?
            }
            (Format::Table, Ok(r)) => {
                let path = Self::title(path, region);
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
            (Format::Table, Err(e)) => {
                writeln!(self.out, "{}\n  error: {e}", Self::title(path, region))?
            }
            (Format::Coco, _) => unreachable!("written above"),
        }
        Ok(())
    }

    /// One record's embedding, or its error: a photo's, or a region's.
    pub fn embedding(
        &mut self,
        path: &Path,
        region: Option<&Region>,
        result: &Result<Vec<f32>, String>,
    ) -> io::Result<()> {
        self.begin_record()?;
        match (self.layout.format, result) {
            (Format::Json | Format::Jsonl | Format::Coco, _) => {
                self.json_line(&JsonRecord::embedding(Origin::Path(path), region, result))?
            }
            (Format::Csv | Format::Tsv, result) => {
                let mut row = self.lead(path, region);
                match result {
                    Ok(e) => row.extend(e.iter().map(|v| v.to_string().into_bytes())),
                    Err(e) => row.push(format!("error: {e}").into_bytes()),
                }
                self.row(&row)?
            }
            (Format::Table, Ok(e)) => {
                let values: Vec<String> = e.iter().map(f32::to_string).collect();
                writeln!(
                    self.out,
                    "{}\t{}",
                    Self::title(path, region),
                    values.join("\t")
                )?
            }
            (Format::Table, Err(e)) => {
                writeln!(self.out, "{}\terror: {e}", Self::title(path, region))?
            }
        }
        Ok(())
    }

    /// One search result: a photo (or region of one) and its score.
    pub fn hit(&mut self, path: &Path, region: Option<&Region>, score: f32) -> io::Result<()> {
        #[derive(Serialize)]
        struct Hit<'a> {
            path: PathJson<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            region: Option<&'a Region>,
            score: f32,
        }
        self.begin_record()?;
        match self.layout.format {
            Format::Json | Format::Jsonl | Format::Coco => self.json_line(&Hit {
                path: PathJson(path),
                region,
                score,
            })?,
            Format::Csv | Format::Tsv => {
                let mut row = self.lead(path, region);
                row.push(score.to_string().into_bytes());
                self.row(&row)?
            }
            Format::Table => writeln!(self.out, "{score:>8.4}  {}", Self::title(path, region))?,
        }
        Ok(())
    }

    /// Flushes the records written so far: after each photo's records, so that a photo's
    /// regions reach the file together.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The writer, once the printer is done with it.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Closes the output (the JSON array's bracket).
    pub fn finish(&mut self) -> io::Result<()> {
        if matches!(self.layout.format, Format::Json | Format::Coco) {
            self.out
                .write_all(if self.records == 0 { b"[]\n" } else { b"\n]\n" })?;
        }
        self.out.flush()
    }
}

/// Records of one fixed shape, other than rankings and embeddings (leftovers' records, their
/// summaries): JSON Lines, a streamed JSON array, CSV/TSV under a header, or a line of text each
/// for [`Format::Table`].
pub struct RowPrinter<W: Write> {
    out: W,
    format: Format,
    columns: Vec<&'static str>,
    records: usize,
}

impl<W: Write> RowPrinter<W> {
    /// A printer of records with these CSV/TSV `columns`; nothing is written until the first.
    pub fn new(out: W, format: Format, columns: &[&'static str]) -> Self {
        Self {
            out,
            format,
            columns: columns.to_vec(),
            records: 0,
        }
    }

    /// Writes one record: `json` for JSON and JSON Lines, `fields` (one per column) for CSV and
    /// TSV, `line` for a table.
    pub fn record(
        &mut self,
        json: &impl Serialize,
        fields: &[String],
        line: &str,
    ) -> io::Result<()> {
        let first = self.records == 0;
        self.records += 1;
        match self.format {
            Format::Jsonl => {
                serde_json::to_writer(&mut self.out, json)?;
                self.out.write_all(b"\n")
            }
            Format::Json | Format::Coco => {
                self.out.write_all(if first { b"[\n" } else { b",\n" })?;
                serde_json::to_writer(&mut self.out, json).map_err(io::Error::from)
            }
            Format::Csv | Format::Tsv => {
                if first {
                    self.out.write_all(&csv_row(self.format, &self.columns))?;
                }
                self.out.write_all(&csv_row(self.format, fields))
            }
            Format::Table => writeln!(self.out, "{line}"),
        }
    }

    /// Flushes what was written.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Ends the output (closes the JSON array; a CSV/TSV header alone when there was no
    /// record), and flushes. Returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        match self.format {
            Format::Json | Format::Coco if self.records == 0 => self.out.write_all(b"[]\n")?,
            Format::Json | Format::Coco => self.out.write_all(b"\n]\n")?,
            Format::Csv | Format::Tsv if self.records == 0 => {
                self.out.write_all(&csv_row(self.format, &self.columns))?
            }
            _ => {}
        }
        self.out.flush()?;
        Ok(self.out)
    }
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

    fn printer(format: Format) -> Printer<Vec<u8>> {
        Printer::new(Vec::new(), Layout::new(format, RecordKind::Predictions))
    }

    #[test]
    fn json_array_is_valid_with_and_without_records() {
        let mut p = printer(Format::Json);
        p.finish().unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&p.out).unwrap(),
            serde_json::json!([])
        );
        let mut p = printer(Format::Json);
        p.predictions("a.jpg".as_ref(), None, &Ok(preds())).unwrap();
        p.predictions("b.jpg".as_ref(), None, &Err("bad".into()))
            .unwrap();
        p.finish().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.out).unwrap();
        assert_eq!(v[0]["predictions"][0]["prob"], 0.75);
        assert_eq!(v[1]["error"], "bad");
    }

    #[test]
    fn csv_quotes_and_tsv_flattens() {
        let mut p = printer(Format::Csv);
        p.predictions("a.jpg".as_ref(), None, &Ok(preds())).unwrap();
        let text = String::from_utf8(p.out).unwrap();
        assert_eq!(
            text,
            "path,rank,label,score,prob,error\na.jpg,1,\"김치, \"\"찌개\"\"\",0.5,0.75,\n"
        );
        let mut p = printer(Format::Tsv);
        p.predictions("a\tb.jpg".as_ref(), None, &Err("x".into()))
            .unwrap();
        assert_eq!(
            String::from_utf8(p.out).unwrap().lines().nth(1).unwrap(),
            "a b.jpg\t\t\t\t\tx"
        );
    }

    #[test]
    fn records_read_back_for_resume_and_foreign_lines_are_refused() {
        for format in [Format::Jsonl, Format::Csv, Format::Tsv] {
            for (kind, regions) in [
                (RecordKind::Predictions, false),
                (RecordKind::Embedding, false),
                (RecordKind::Predictions, true),
                (RecordKind::Embedding, true),
            ] {
                let layout = Layout {
                    groups: true,
                    regions,
                    ..Layout::new(format, kind)
                };
                let region = regions.then(|| Region {
                    index: 2,
                    name: Some("밥, rice".into()),
                    rect: Some([0, 1, 20, 30]),
                    ..Region::default()
                });
                let region = region.as_ref();
                let mut p = Printer::new(Vec::new(), layout);
                let paths = ["a,\"b\".jpg", "z.jpg", "c.jpg"];
                for (i, path) in paths.iter().enumerate() {
                    let path = Path::new(path);
                    match (kind, i) {
                        (_, 1) => match kind {
                            RecordKind::Predictions => {
                                p.predictions(path, region, &Err("bad".into()))
                            }
                            RecordKind::Embedding => p.embedding(path, region, &Err("bad".into())),
                            RecordKind::Hits => unreachable!("search results are not resumed"),
                        },
                        (RecordKind::Predictions, _) => p.predictions(path, region, &Ok(preds())),
                        (RecordKind::Embedding, _) => {
                            p.embedding(path, region, &Ok(vec![0.5, -1.0]))
                        }
                        (RecordKind::Hits, _) => unreachable!("search results are not resumed"),
                    }
                    .unwrap();
                }
                let out = p.out;
                let cut = out.len() - 4;
                let whole_end = out[..cut].iter().rposition(|&b| b == b'\n').unwrap() + 1;
                let got = layout
                    .recorded(&out[..whole_end], &out[whole_end..cut])
                    .unwrap();
                let want: Vec<PathBuf> = paths[..2].iter().map(PathBuf::from).collect();
                assert_eq!(got, want, "{format:?} {kind:?} {regions}");
                // Lines that are not records, and other columns.
                let foreign = layout.recorded(b"my notes\n", b"");
                assert!(foreign.is_err(), "{format:?} {kind:?}");
                let other = Layout::new(format, kind).recorded(&out[..whole_end], b"");
                assert_eq!(
                    other.is_err(),
                    (kind == RecordKind::Predictions || regions) && format != Format::Jsonl,
                    "{format:?} {kind:?} {regions}"
                );
            }
        }
    }
}
