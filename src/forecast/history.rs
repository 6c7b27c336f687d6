//! The kitchen's history: what came back of each dish on each day, read (streamed) from the
//! records `leftovers` writes (JSON Lines, a JSON array, CSV or TSV; or the `leftovers` table of
//! the store `leftovers --db` writes to) or from a plain CSV
//! `date,dish,leftover[,trays][,served_g]`, one row per dish and day or per tray and compartment.
//!
//! Rows are folded into one [`Observation`] per dish and day as they are read, so memory grows
//! with days times dishes, never with rows.

use super::{Day, Dishes};
use anyhow::{anyhow, bail, Context, Result};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// One dish on one day: the mean leftover share over its trays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// The day.
    pub day: Day,
    /// Index into [`Dishes`].
    pub dish: usize,
    /// Mean share left, in [0, 1], weighted by trays.
    pub share: f64,
    /// Trays it rests on (rows, or the `trays` column summed).
    pub trays: f64,
}

/// Every observation, sorted by day then dish, and what was passed over.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The observations.
    pub observations: Vec<Observation>,
    /// Rows read.
    pub rows: u64,
    /// Rows without a measurement (an `error`, an empty `leftover`) or naming `unknown`.
    pub skipped: u64,
}

impl History {
    /// The observations of the days before `day`.
    pub fn before(&self, day: Day) -> &[Observation] {
        let end = self.observations.partition_point(|o| o.day < day);
        &self.observations[..end]
    }

    /// The first and last day, if any.
    pub fn span(&self) -> Option<(Day, Day)> {
        Some((
            self.observations.first()?.day,
            self.observations.last()?.day,
        ))
    }
}

/// One row, whatever file it came from.
#[derive(Debug, Default, Deserialize)]
struct Row {
    date: Option<String>,
    dish: Option<String>,
    leftover: Option<f64>,
    trays: Option<f64>,
    served_g: Option<f64>,
    error: Option<String>,
}

/// Folds rows into observations.
struct Folder<'a> {
    dishes: &'a mut Dishes,
    sums: HashMap<(Day, usize), (f64, f64)>,
    rows: u64,
    skipped: u64,
}

impl Folder<'_> {
    fn add(&mut self, row: Row) -> Result<()> {
        self.rows += 1;
        if row.error.is_some() {
            self.skipped += 1;
            return Ok(());
        }
        let dish = match row.dish.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() && d != crate::classify::UNKNOWN => d,
            _ => {
                self.skipped += 1;
                return Ok(());
            }
        };
        let Some(leftover) = row.leftover else {
            self.skipped += 1;
            return Ok(());
        };
        if !(0.0..=1.0).contains(&leftover) {
            bail!("leftover {leftover} is outside [0, 1] (the share of the portion left)");
        }
        let date = row
            .date
            .as_deref()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| anyhow!("the row has no date; a forecast needs the day of each row"))?;
        let day = Day::parse(date)?;
        let trays = row.trays.unwrap_or(1.0);
        if !(trays.is_finite() && trays > 0.0) {
            bail!("trays is {trays}; give the number of trays (more than 0)");
        }
        if let Some(g) = row.served_g.filter(|g| !(g.is_finite() && *g >= 0.0)) {
            bail!("served_g is {g}; give the grams served (0 or more)");
        }
        let dish = self.dishes.intern(dish);
        let sum = self.sums.entry((day, dish)).or_insert((0.0, 0.0));
        sum.0 += leftover * trays;
        sum.1 += trays;
        Ok(())
    }

    fn finish(self) -> History {
        let mut observations: Vec<Observation> = self
            .sums
            .into_iter()
            .map(|((day, dish), (sum, trays))| Observation {
                day,
                dish,
                share: sum / trays,
                trays,
            })
            .collect();
        observations.sort_by_key(|o| (o.day, o.dish));
        History {
            observations,
            rows: self.rows,
            skipped: self.skipped,
        }
    }
}

/// How a history file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    JsonLines,
    JsonArray,
    Delimited(u8),
    Store,
}

fn kind_of(path: &Path, head: &[u8]) -> Kind {
    if head.starts_with(b"SQLite format 3\0") {
        return Kind::Store;
    }
    let first = head.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("jsonl" | "ndjson") => Kind::JsonLines,
        Some("json") => Kind::JsonArray,
        Some("tsv" | "tab") => Kind::Delimited(b'\t'),
        Some("csv") => Kind::Delimited(b','),
        _ => match first {
            Some(b'[') => Kind::JsonArray,
            Some(b'{') => Kind::JsonLines,
            _ => Kind::Delimited(b','),
        },
    }
}

/// Reads history files into one [`History`], naming dishes in `dishes`. Errors name the file
/// and line (or record, in a JSON array).
pub fn load(
    paths: &[impl AsRef<Path>],
    site: Option<&str>,
    dishes: &mut Dishes,
) -> Result<History> {
    let mut folder = Folder {
        dishes,
        sums: HashMap::new(),
        rows: 0,
        skipped: 0,
    };
    for path in paths {
        let path = path.as_ref();
        if crate::store::is_postgres(path) {
            store_rows(path, site, &mut folder)?;
            continue;
        }
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open history {}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let head = reader
            .fill_buf()
            .with_context(|| format!("cannot read history {}", path.display()))?;
        // A byte-order mark (spreadsheets write one) is not part of the first field.
        let bom = head.starts_with(b"\xEF\xBB\xBF");
        let kind = kind_of(path, &head[if bom { 3 } else { 0 }..]);
        if bom {
            reader.consume(3);
        }
        let at = path.display();
        match kind {
            Kind::Store => {
                drop(reader);
                store_rows(path, site, &mut folder)?;
            }
            Kind::JsonLines => json_lines(reader, &mut folder, path)?,
            Kind::JsonArray => {
                let mut de = serde_json::Deserializer::from_reader(reader);
                let mut record = 0usize;
                Rows {
                    folder: &mut folder,
                    record: &mut record,
                }
                .deserialize(&mut de)
                .map_err(|e| anyhow!("{at}: record {}: {e}", record + 1))?;
            }
            Kind::Delimited(delimiter) => delimited(reader, delimiter, &mut folder, path)?,
        }
    }
    let history = folder.finish();
    if history.observations.is_empty() {
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.as_ref().display().to_string())
            .collect();
        bail!(
            "{}: no measured leftovers ({} rows read, {} without a measurement); a forecast needs history",
            names.join(", "),
            history.rows,
            history.skipped
        );
    }
    Ok(history)
}

fn json_lines(reader: impl BufRead, folder: &mut Folder, path: &Path) -> Result<()> {
    for (i, line) in reader.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line).with_context(at)?;
        folder.add(row).with_context(at)?;
    }
    Ok(())
}

fn delimited(reader: impl Read, delimiter: u8, folder: &mut Folder, path: &Path) -> Result<()> {
    let mut csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(reader);
    let mut columns: Option<Columns> = None;
    let mut record = csv::StringRecord::new();
    loop {
        let at = |line: u64| format!("{}:{line}", path.display());
        let more = csv
            .read_record(&mut record)
            .with_context(|| at(csv.position().line()))?;
        if !more {
            return Ok(());
        }
        let line = record.position().map_or(0, |p| p.line());
        let cols = match &columns {
            Some(c) => c,
            None => {
                let (c, header) = Columns::of(&record);
                columns = Some(c);
                if header {
                    continue;
                }
                columns.as_ref().expect("just set")
            }
        };
        let row = cols.row(&record).with_context(|| at(line))?;
        folder.add(row).with_context(|| at(line))?;
    }
}

/// Where the fields are in a CSV/TSV row: by a header's names, else `date,dish,leftover,trays,
/// served_g` in that order.
struct Columns {
    date: usize,
    dish: usize,
    leftover: usize,
    trays: Option<usize>,
    served_g: Option<usize>,
    error: Option<usize>,
}

impl Columns {
    /// The columns, and whether `first` was a header.
    fn of(first: &csv::StringRecord) -> (Self, bool) {
        let find = |name: &str| first.iter().position(|f| f.trim() == name);
        match (find("date"), find("dish"), find("leftover")) {
            (Some(date), Some(dish), Some(leftover)) => (
                Self {
                    date,
                    dish,
                    leftover,
                    trays: find("trays"),
                    served_g: find("served_g"),
                    error: find("error"),
                },
                true,
            ),
            _ => (
                Self {
                    date: 0,
                    dish: 1,
                    leftover: 2,
                    trays: Some(3),
                    served_g: Some(4),
                    error: None,
                },
                false,
            ),
        }
    }

    fn row(&self, r: &csv::StringRecord) -> Result<Row> {
        let text = |i: usize| r.get(i).map(str::trim).filter(|s| !s.is_empty());
        let number = |name: &str, i: Option<usize>| -> Result<Option<f64>> {
            match i.and_then(text) {
                None => Ok(None),
                Some(s) => s
                    .parse::<f64>()
                    .map(Some)
                    .map_err(|_| anyhow!("{name} {s:?} is not a number")),
            }
        };
        if r.len() < 3 {
            bail!(
                "expected date,dish,leftover[,trays][,served_g]; got {} fields",
                r.len()
            );
        }
        Ok(Row {
            date: text(self.date).map(str::to_string),
            dish: text(self.dish).map(str::to_string),
            leftover: number("leftover", Some(self.leftover))?,
            trays: number("trays", self.trays)?,
            served_g: number("served_g", self.served_g)?,
            error: self.error.and_then(text).map(str::to_string),
        })
    }
}

/// A JSON array of rows, each folded as it is parsed.
struct Rows<'a, 'b> {
    folder: &'a mut Folder<'b>,
    record: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for Rows<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of leftovers records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(row) = seq.next_element::<Row>()? {
            self.folder.add(row).map_err(serde::de::Error::custom)?;
            *self.record += 1;
        }
        Ok(())
    }
}

/// Folds the leftovers rows of the store at `path` (a SQLite file, or `site`'s rows of a
/// shared PostgreSQL store).
fn store_rows(path: &Path, site: Option<&str>, folder: &mut Folder) -> Result<()> {
    let mut store = crate::store::Store::open(path, false, site)?;
    let at = store.describe();
    store.leftovers(|row| {
        let at = || {
            format!(
                "{at}: day {} tray {} compartment {}",
                row.date, row.tray, row.compartment
            )
        };
        folder
            .add(Row {
                date: Some(row.date.clone()).filter(|d| !d.is_empty()),
                dish: row.dish.clone(),
                leftover: row.leftover,
                trays: None,
                served_g: None,
                error: row.error.clone(),
            })
            .with_context(at)
    })?;
    Ok(())
}
