//! What a run of `leftovers` reports: one [`Record`] per tray and compartment, a [`Summary`] per
//! dish (and per day and dish), and, given the truth, how far the measured leftovers are from it
//! ([`Accuracy`]).

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The registration of a tray's returned photo, in pixels of the served photo as displayed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Placement {
    /// Shift right.
    pub dx: f64,
    /// Shift down.
    pub dy: f64,
    /// Degrees, clockwise as displayed.
    pub angle: f64,
    /// Correlation of the two photos' edges once registered (1 is perfect).
    pub score: f64,
}

/// One tray and compartment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Record {
    /// The tray's name.
    pub tray: String,
    /// The served photo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served: Option<String>,
    /// The returned photo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returned: Option<String>,
    /// The day (`YYYY-MM-DD`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// The compartment's name (or index).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compartment: Option<String>,
    /// Its box on the served photo, `[x1, y1, x2, y2]`.
    #[serde(rename = "box", skip_serializing_if = "Option::is_none")]
    pub rect: Option<[u32; 4]>,
    /// The dish: the menu's, else the classifier's best class (or `unknown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dish: Option<String>,
    /// The dish's group (label file headers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The classifier's cosine score for the dish it chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// The classifier's probability for the dish it chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prob: Option<f32>,
    /// With a menu and a model: the classifier's best class, when it is not the menu's dish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classified_as: Option<String>,
    /// Share of the compartment covered by food when served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_coverage: Option<f64>,
    /// Share covered when returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returned_coverage: Option<f64>,
    /// `returned / served`, in [0, 1]; `null` when nothing was served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leftover: Option<f64>,
    /// Grams per portion (menu).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portion_g: Option<f64>,
    /// Grams left: the portion times the leftover ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leftover_g: Option<f64>,
    /// The returned photo's registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration: Option<Placement>,
    /// Why this tray or compartment has no measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Rounds a share to 4 decimals for output.
fn share(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

impl Record {
    /// The CSV/TSV columns.
    pub const COLUMNS: [&'static str; 24] = [
        "tray",
        "served",
        "returned",
        "date",
        "compartment",
        "x1",
        "y1",
        "x2",
        "y2",
        "dish",
        "group",
        "score",
        "prob",
        "classified_as",
        "served_coverage",
        "returned_coverage",
        "leftover",
        "portion_g",
        "leftover_g",
        "dx",
        "dy",
        "angle",
        "registration_score",
        "error",
    ];

    /// The fields of [`Record::COLUMNS`], empty where absent.
    pub fn fields(&self) -> Vec<String> {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        let n = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
        let f = |v: Option<f32>| v.map_or(String::new(), |v| format!("{v}"));
        let b = |i: usize| self.rect.map_or(String::new(), |r| r[i].to_string());
        let r = self.registration;
        vec![
            self.tray.clone(),
            o(&self.served),
            o(&self.returned),
            o(&self.date),
            o(&self.compartment),
            b(0),
            b(1),
            b(2),
            b(3),
            o(&self.dish),
            o(&self.group),
            f(self.score),
            f(self.prob),
            o(&self.classified_as),
            n(self.served_coverage),
            n(self.returned_coverage),
            n(self.leftover),
            n(self.portion_g),
            n(self.leftover_g),
            n(r.map(|r| r.dx)),
            n(r.map(|r| r.dy)),
            n(r.map(|r| r.angle)),
            n(r.map(|r| r.score)),
            o(&self.error),
        ]
    }

    /// Rounds the measured shares, grams and registration for output.
    pub fn rounded(mut self) -> Self {
        self.served_coverage = self.served_coverage.map(share);
        self.returned_coverage = self.returned_coverage.map(share);
        self.leftover = self.leftover.map(share);
        self.leftover_g = self.leftover_g.map(|g| (g * 10.0).round() / 10.0);
        self.registration = self.registration.map(|r| Placement {
            dx: (r.dx * 100.0).round() / 100.0,
            dy: (r.dy * 100.0).round() / 100.0,
            angle: (r.angle * 1000.0).round() / 1000.0,
            score: share(r.score),
        });
        self
    }
}

/// The leftovers of one dish (on one day, or over the run).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DishSummary {
    /// The day, in the per-day summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// The dish.
    pub dish: String,
    /// Compartments measured (one per tray that had the dish).
    pub trays: usize,
    /// Mean leftover ratio.
    pub mean_leftover: f64,
    /// Median leftover ratio.
    pub median_leftover: f64,
    /// Share of trays that returned more than half of it.
    pub over_half: f64,
    /// Grams served (trays with a portion size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_g: Option<f64>,
    /// Grams returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leftover_g: Option<f64>,
}

#[derive(Debug, Default, Clone)]
struct Tally {
    leftovers: Vec<f32>,
    served_g: Option<f64>,
    leftover_g: Option<f64>,
}

impl Tally {
    fn add(&mut self, leftover: f64, portion_g: Option<f64>) {
        self.leftovers.push(leftover as f32);
        if let Some(g) = portion_g {
            *self.served_g.get_or_insert(0.0) += g;
            *self.leftover_g.get_or_insert(0.0) += g * leftover;
        }
    }

    fn summary(&self, date: Option<&str>, dish: &str) -> DishSummary {
        let mut v: Vec<f64> = self.leftovers.iter().map(|&x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let round = |g: f64| (g * 10.0).round() / 10.0;
        DishSummary {
            date: date.map(str::to_string),
            dish: dish.to_string(),
            trays: n,
            mean_leftover: share(v.iter().sum::<f64>() / n as f64),
            median_leftover: share(median),
            over_half: share(v.iter().filter(|&&x| x > 0.5).count() as f64 / n as f64),
            served_g: self.served_g.map(round),
            leftover_g: self.leftover_g.map(round),
        }
    }
}

/// Leftovers gathered per dish and per day and dish, as records come.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    dishes: BTreeMap<String, Tally>,
    days: BTreeMap<(String, String), Tally>,
}

impl Summary {
    /// Counts a record that has a dish and a leftover ratio.
    pub fn add(&mut self, r: &Record) {
        let (Some(dish), Some(leftover)) = (&r.dish, r.leftover) else {
            return;
        };
        self.dishes
            .entry(dish.clone())
            .or_default()
            .add(leftover, r.portion_g);
        if let Some(date) = &r.date {
            let key = (date.clone(), dish.clone());
            self.days.entry(key).or_default().add(leftover, r.portion_g);
        }
    }

    /// Per dish, the most left first.
    pub fn dishes(&self) -> Vec<DishSummary> {
        let mut out: Vec<_> = self
            .dishes
            .iter()
            .map(|(d, t)| t.summary(None, d))
            .collect();
        out.sort_by(|a, b| {
            b.mean_leftover
                .total_cmp(&a.mean_leftover)
                .then(a.dish.cmp(&b.dish))
        });
        out
    }

    /// Per day and dish, by day, then the most left first.
    pub fn days(&self) -> Vec<DishSummary> {
        let mut out: Vec<_> = self
            .days
            .iter()
            .map(|((date, d), t)| t.summary(Some(date), d))
            .collect();
        out.sort_by(|a, b| {
            a.date
                .cmp(&b.date)
                .then(b.mean_leftover.total_cmp(&a.mean_leftover))
                .then(a.dish.cmp(&b.dish))
        });
        out
    }
}

/// Known leftover ratios (`--truth FILE.csv`: `tray,compartment,leftover` with that header;
/// other columns are ignored, a blank leftover is skipped).
#[derive(Debug, Clone)]
pub struct Truth {
    by_key: HashMap<(String, String), f64>,
}

impl Truth {
    /// Reads the file; a missing column or a ratio outside [0, 1] is an error naming the line.
    pub fn load(path: &Path) -> Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)
            .with_context(|| format!("cannot read --truth {}", path.display()))?;
        let headers = reader
            .headers()
            .with_context(|| format!("{}: unreadable CSV", path.display()))?
            .clone();
        let col = |name: &str| {
            headers.iter().position(|h| h == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: line 1: no {name:?} column (the header is tray,compartment,leftover)",
                    path.display()
                )
            })
        };
        let (t, c, l) = (col("tray")?, col("compartment")?, col("leftover")?);
        let mut by_key = HashMap::new();
        for (i, row) in reader.records().enumerate() {
            let line = i + 2;
            let row =
                row.with_context(|| format!("{}: line {line}: unreadable", path.display()))?;
            let value = row.get(l).unwrap_or("");
            if value.is_empty() {
                continue;
            }
            let v: f64 = match value.parse() {
                Ok(v) if (0.0..=1.0).contains(&v) => v,
                _ => bail!(
                    "{}: line {line}: leftover {value:?} is not a share in [0, 1]",
                    path.display()
                ),
            };
            let key = (
                row.get(t).unwrap_or("").to_string(),
                row.get(c).unwrap_or("").to_string(),
            );
            by_key.insert(key, v);
        }
        Ok(Self { by_key })
    }

    /// The known ratio of a tray's compartment.
    pub fn get(&self, tray: &str, compartment: &str) -> Option<f64> {
        self.by_key
            .get(&(tray.to_string(), compartment.to_string()))
            .copied()
    }

    /// How many ratios the file gives.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether it gives none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// How close measured ratios are to the truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accuracy {
    /// The dish (`None` for all of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dish: Option<String>,
    /// Compartments compared.
    pub n: usize,
    /// Mean absolute error.
    pub mae: f64,
    /// Mean of measured minus true.
    pub bias: f64,
    /// Root mean squared error.
    pub rmse: f64,
    /// Pearson's r (`None` when either side is constant).
    pub pearson_r: Option<f64>,
}

impl Accuracy {
    /// The figures of `(measured, true)` pairs; `None` for none.
    pub fn of(dish: Option<&str>, pairs: &[(f64, f64)]) -> Option<Self> {
        let n = pairs.len();
        if n == 0 {
            return None;
        }
        let nf = n as f64;
        let mae = pairs.iter().map(|(m, t)| (m - t).abs()).sum::<f64>() / nf;
        let bias = pairs.iter().map(|(m, t)| m - t).sum::<f64>() / nf;
        let rmse = (pairs.iter().map(|(m, t)| (m - t).powi(2)).sum::<f64>() / nf).sqrt();
        let (mm, mt) = (
            pairs.iter().map(|p| p.0).sum::<f64>() / nf,
            pairs.iter().map(|p| p.1).sum::<f64>() / nf,
        );
        let cov: f64 = pairs.iter().map(|(m, t)| (m - mm) * (t - mt)).sum();
        let vm: f64 = pairs.iter().map(|(m, _)| (m - mm).powi(2)).sum();
        let vt: f64 = pairs.iter().map(|(_, t)| (t - mt).powi(2)).sum();
        let pearson_r = (vm > 0.0 && vt > 0.0).then(|| share(cov / (vm * vt).sqrt()));
        Some(Self {
            dish: dish.map(str::to_string),
            n,
            mae: share(mae),
            bias: share(bias),
            rmse: share(rmse),
            pearson_r,
        })
    }
}

/// Measured ratios matched with the truth as records come: overall and per dish.
#[derive(Debug, Default, Clone)]
pub struct Comparison {
    all: Vec<(f64, f64)>,
    dishes: BTreeMap<String, Vec<(f64, f64)>>,
}

impl Comparison {
    /// Compares a record, when it has a ratio and the truth has one for it.
    pub fn add(&mut self, truth: &Truth, r: &Record) {
        let (Some(c), Some(m)) = (&r.compartment, r.leftover) else {
            return;
        };
        if let Some(t) = truth.get(&r.tray, c) {
            self.all.push((m, t));
            let dish = r.dish.clone().unwrap_or_else(|| c.clone());
            self.dishes.entry(dish).or_default().push((m, t));
        }
    }

    /// Overall, then per dish.
    pub fn accuracy(&self) -> (Option<Accuracy>, Vec<Accuracy>) {
        let per = self
            .dishes
            .iter()
            .filter_map(|(d, p)| Accuracy::of(Some(d), p))
            .collect();
        (Accuracy::of(None, &self.all), per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_by_hand() {
        let a = Accuracy::of(None, &[(0.5, 0.4), (0.2, 0.4), (1.0, 1.0)]).unwrap();
        assert_eq!(a.n, 3);
        assert!((a.mae - 0.1).abs() < 1e-9, "{a:?}");
        assert!((a.bias - (-0.0333)).abs() < 1e-4, "{a:?}");
        assert!((a.rmse - (0.05f64 / 3.0).sqrt()).abs() < 1e-4, "{a:?}");
        // r of (0.5, 0.2, 1.0) and (0.4, 0.4, 1.0): cov 0.26, var 0.3267 and 0.24.
        let r = 0.26 / (0.32666667f64 * 0.24).sqrt();
        assert!((a.pearson_r.unwrap() - r).abs() < 1e-4, "{a:?} {r}");
        assert_eq!(Accuracy::of(None, &[(0.3, 0.5)]).unwrap().pearson_r, None);
    }

    #[test]
    fn summaries_per_dish_and_day() {
        let mut s = Summary::default();
        let rec = |date: &str, dish: &str, leftover: f64, g: Option<f64>| Record {
            date: Some(date.into()),
            dish: Some(dish.into()),
            leftover: Some(leftover),
            portion_g: g,
            ..Record::default()
        };
        s.add(&rec("2026-12-01", "밥", 0.2, Some(200.0)));
        s.add(&rec("2026-12-02", "밥", 0.6, Some(200.0)));
        s.add(&rec("2026-12-02", "밥", 0.7, Some(200.0)));
        s.add(&rec("2026-12-01", "국", 0.9, None));
        let d = s.dishes();
        assert_eq!(d[0].dish, "국");
        assert_eq!(
            (d[1].trays, d[1].median_leftover, d[1].mean_leftover),
            (3, 0.6, 0.5)
        );
        assert_eq!(d[1].over_half, 0.6667);
        assert_eq!((d[1].served_g, d[1].leftover_g), (Some(600.0), Some(300.0)));
        let days = s.days();
        assert_eq!(days.len(), 3);
        assert_eq!(days[0].date.as_deref(), Some("2026-12-01"));
        assert_eq!(days[0].dish, "국");
        assert_eq!(days[2].mean_leftover, 0.65);
    }
}
