//! The planned menu (`--menu plan.csv`): `date,dish[,servings][,portion_g]`, several dishes per
//! date, a header row optional. Each dish must name a class of the label file.

use super::{Day, Dishes};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// One planned dish.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The day it is served.
    pub day: Day,
    /// Index into [`Dishes`].
    pub dish: usize,
    /// Trays it will be served on.
    pub servings: Option<f64>,
    /// Grams of one portion.
    pub portion_g: Option<f64>,
    /// Its line in the file.
    pub line: usize,
}

/// Reads a plan, naming its dishes in `dishes`. A dish that names no class, a date that does
/// not parse or a negative number is an error naming the file and line.
pub fn load(path: &Path, dishes: &mut Dishes) -> Result<Vec<Planned>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read menu {}", path.display()))?;
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(
            bytes
                .strip_prefix(b"\xEF\xBB\xBF".as_slice())
                .unwrap_or(&bytes),
        );
    const COLUMNS: [&str; 4] = ["date", "dish", "servings", "portion_g"];
    let mut order: Vec<String> = COLUMNS.map(String::from).to_vec();
    let mut planned = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let more = csv
            .read_record(&mut record)
            .with_context(|| format!("{}:{}", path.display(), csv.position().line()))?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line()) as usize;
        if std::mem::take(&mut first) && record.iter().any(|f| f == "date") {
            if let Some(other) = record.iter().find(|f| !COLUMNS.contains(f)) {
                bail!(
                    "{}:{line}: unknown column {other:?}; the columns are date,dish[,servings][,portion_g]",
                    path.display()
                );
            }
            if !record.iter().any(|f| f == "dish") {
                bail!("{}:{line}: the header has no dish column", path.display());
            }
            order = record.iter().map(String::from).collect();
            continue;
        }
        let p =
            parse(&record, &order, dishes).with_context(|| format!("{}:{line}", path.display()))?;
        planned.push(Planned { line, ..p });
    }
    if planned.is_empty() {
        bail!(
            "{}: no planned dishes (rows date,dish[,servings][,portion_g])",
            path.display()
        );
    }
    Ok(planned)
}

/// One planned dish as a request gives it (`serve`'s `POST /v1/forecast`), or a CSV row.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Any name of a class of the label file.
    pub dish: String,
    /// Trays it will be served on.
    #[serde(default)]
    pub servings: Option<f64>,
    /// Grams of one portion.
    #[serde(default)]
    pub portion_g: Option<f64>,
}

/// Checks `item` and names its dish in `dishes`.
pub fn planned(item: &Item, dishes: &mut Dishes) -> Result<Planned> {
    let day = Day::parse(&item.date)?;
    let name = item.dish.trim();
    if name.is_empty() {
        bail!("no dish");
    }
    if dishes.class(name).is_none() {
        bail!(
            "{name:?} names no class of {}; add it there (under its [group]) or fix the spelling",
            dishes.labels().path.display()
        );
    }
    for (what, v) in [("servings", item.servings), ("portion_g", item.portion_g)] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            bail!("{what} {v} is not a number of 0 or more");
        }
    }
    Ok(Planned {
        day,
        dish: dishes.intern(name),
        servings: item.servings,
        portion_g: item.portion_g,
        line: 0,
    })
}

fn parse(r: &csv::StringRecord, order: &[String], dishes: &mut Dishes) -> Result<Planned> {
    let field = |name: &str| {
        order
            .iter()
            .position(|c| c == name)
            .and_then(|i| r.get(i))
            .filter(|s| !s.is_empty())
    };
    let number = |name: &str| -> Result<Option<f64>> {
        field(name)
            .map(|s| {
                s.parse::<f64>()
                    .map_err(|_| anyhow!("{name} {s:?} is not a number"))
            })
            .transpose()
    };
    let item = Item {
        date: field("date").ok_or_else(|| anyhow!("no date"))?.to_string(),
        dish: field("dish").unwrap_or_default().to_string(),
        servings: number("servings")?,
        portion_g: number("portion_g")?,
    };
    planned(&item, dishes)
}
