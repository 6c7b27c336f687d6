//! Forecasts of what will come back: for each dish of a planned menu, the expected leftover
//! share with an 80% interval and the grams to cook, learnt from the kitchen's history without
//! training a model.
//!
//! - [`history`]: the records `leftovers` wrote (or a plain CSV), folded per dish and day;
//! - [`plan`]: the menu to forecast, dishes named as in the label file;
//! - [`model`]: the forecaster, an additive model of kitchen, group, dish, weekday and
//!   served-together effects, each shrunk toward zero by how much history it rests on, with
//!   recent days weighing more;
//! - [`backtest`]: rolling-origin evaluation against three baselines, which also chooses the
//!   forecaster's half-life and shrinkage and calibrates its intervals.

pub mod backtest;
pub mod history;
pub mod model;
pub mod plan;

use crate::eval::ClassNames;
use crate::labels::LabelSet;
use anyhow::{anyhow, Result};
use backtest::Tuned;
use chrono::{Datelike, NaiveDate};
use history::History;
use model::{Basis, Fit, Parts};
use plan::Planned;
use serde::Serialize;
use std::collections::HashMap;

/// A day, counted from the common era, so that differences are days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i32);

impl Day {
    /// Parses `YYYY-MM-DD`.
    ///
    /// ```
    /// use foodclip::forecast::Day;
    /// let d = Day::parse("2026-12-07").unwrap();
    /// assert_eq!(d.weekday(), 0); // a Monday
    /// assert_eq!(d.to_string(), "2026-12-07");
    /// assert!(Day::parse("7/12/2026").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let date = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .map_err(|_| anyhow!("date {text:?} is not YYYY-MM-DD"))?;
        Ok(Self(date.num_days_from_ce()))
    }

    /// Monday 0 to Sunday 6.
    pub fn weekday(self) -> usize {
        // Day 1 of the common era (0001-01-01) was a Monday.
        (self.0 - 1).rem_euclid(7) as usize
    }

    /// The day `n` days later.
    pub fn plus(self, n: i32) -> Self {
        Self(self.0 + n)
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match NaiveDate::from_num_days_from_ce_opt(self.0) {
            Some(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            None => write!(f, "day {}", self.0),
        }
    }
}

/// The dishes: each class of the label file is one dish, whatever name a row gives it; a name
/// that names no class is a dish of its own, in no group.
#[derive(Debug, Clone)]
pub struct Dishes {
    names: ClassNames,
    labels: LabelSet,
    by_name: HashMap<String, usize>,
    /// Each dish's display name and group.
    pub list: Vec<Dish>,
}

/// One dish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dish {
    /// The class's display name (or the name as written).
    pub name: String,
    /// The class of the label file, if the name is one of its names.
    pub class: Option<usize>,
    /// The label file's group (`[header]`), if any.
    pub group: Option<usize>,
}

impl Dishes {
    /// Every class of `labels` as a dish, in the file's order (so that a dish's index, and with
    /// it the fit, does not depend on the order files name them in).
    pub fn new(labels: &LabelSet) -> Self {
        let list: Vec<Dish> = labels
            .classes
            .iter()
            .enumerate()
            .map(|(class, c)| Dish {
                name: c.display().to_string(),
                class: Some(class),
                group: c.group,
            })
            .collect();
        Self {
            names: ClassNames::new(labels),
            labels: labels.clone(),
            by_name: HashMap::new(),
            list,
        }
    }

    /// The class `name` names, if any.
    pub fn class(&self, name: &str) -> Option<usize> {
        self.names.class(name)
    }

    /// The dish `name` names: its class's, else one of its own, added if new.
    pub fn intern(&mut self, name: &str) -> usize {
        if let Some(class) = self.names.class(name) {
            return class;
        }
        if let Some(&d) = self.by_name.get(name) {
            return d;
        }
        self.list.push(Dish {
            name: name.to_string(),
            class: None,
            group: None,
        });
        self.by_name.insert(name.to_string(), self.list.len() - 1);
        self.list.len() - 1
    }

    /// Each dish's group, by dish index.
    pub fn groups(&self) -> Vec<Option<usize>> {
        self.list.iter().map(|d| d.group).collect()
    }

    /// The number of groups of the label file.
    pub fn group_count(&self) -> usize {
        self.labels.groups.len()
    }

    /// The display name of group `g`.
    pub fn group_name(&self, g: usize) -> &str {
        self.labels.groups[g].display()
    }

    /// The label file, for messages.
    pub fn labels(&self) -> &LabelSet {
        &self.labels
    }
}

/// One planned dish's forecast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    /// The dish's display name.
    pub dish: String,
    /// Its group, if the label file has one for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The expected share left, in [0, 1].
    pub leftover: f64,
    /// The 80% interval's lower end.
    pub low: f64,
    /// Its upper end.
    pub high: f64,
    /// What the forecast rests on.
    pub basis: Basis,
    /// Days the dish was served in the history.
    pub history_days: usize,
    /// Trays planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servings: Option<f64>,
    /// Grams of a portion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portion_g: Option<f64>,
    /// Grams to cook so that what is eaten is covered at the service level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cook_g: Option<f64>,
    /// Grams saved against cooking every planned portion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_g: Option<f64>,
    /// The forecast's parts.
    pub parts: Parts,
}

impl Forecast {
    /// The CSV/TSV columns.
    pub const COLUMNS: [&'static str; 17] = [
        "date",
        "dish",
        "group",
        "leftover",
        "low",
        "high",
        "basis",
        "history_days",
        "servings",
        "portion_g",
        "cook_g",
        "saved_g",
        "kitchen",
        "group_effect",
        "dish_effect",
        "weekday_effect",
        "together_effect",
    ];

    /// The fields of [`Forecast::COLUMNS`], empty where absent.
    pub fn fields(&self) -> Vec<String> {
        let n = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
        let p = self.parts;
        vec![
            self.date.clone(),
            self.dish.clone(),
            self.group.clone().unwrap_or_default(),
            format!("{}", self.leftover),
            format!("{}", self.low),
            format!("{}", self.high),
            self.basis.name().to_string(),
            self.history_days.to_string(),
            n(self.servings),
            n(self.portion_g),
            n(self.cook_g),
            n(self.saved_g),
            format!("{}", p.kitchen),
            format!("{}", p.group),
            format!("{}", p.dish),
            format!("{}", p.weekday),
            format!("{}", p.together),
        ]
    }

    /// One line for a terminal.
    pub fn line(&self) -> String {
        let cook = match (self.cook_g, self.saved_g) {
            (Some(c), Some(s)) => {
                format!("  cook {:.1} kg, saves {:.1} kg", c / 1000.0, s / 1000.0)
            }
            _ => String::new(),
        };
        let days = match self.history_days {
            1 => "1 day".to_string(),
            n => format!("{n} days"),
        };
        format!(
            "{}  {} left {:>5.1}% [{:.1}-{:.1}]  from {} ({days}){cook}",
            self.date,
            crate::text::pad(&self.dish, 14),
            self.leftover * 100.0,
            self.low * 100.0,
            self.high * 100.0,
            self.basis.name(),
        )
    }
}

/// Rounds a share or an effect to 4 decimals, grams to 1, for output.
fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

/// The forecaster fitted on a whole history, its settings chosen and its intervals calibrated
/// by backtest over the history's last weeks.
#[derive(Debug, Clone)]
pub struct Forecaster {
    fit: Fit,
    /// How the settings were chosen.
    pub tuned: Tuned,
}

impl Forecaster {
    /// Tunes on the last [`backtest::TUNING_WEEKS`] weeks of `history`, then fits on all of it.
    pub fn new(history: &History, dishes: &Dishes) -> Self {
        let groups = dishes.groups();
        let end = history.span().map_or(Day(0), |(_, last)| last.plus(1));
        let tuned = backtest::tune(
            history,
            &groups,
            dishes.group_count(),
            end,
            backtest::TUNING_WEEKS,
        );
        let fit = Fit::new(
            &history.observations,
            &groups,
            dishes.group_count(),
            end,
            tuned.settings,
        );
        Self { fit, tuned }
    }

    /// The fitted model.
    pub fn fit(&self) -> &Fit {
        &self.fit
    }

    /// Forecasts every planned dish; those of the same day are each other's companions. Grams
    /// to cook cover what is eaten on `service_level` of days.
    pub fn forecast(&self, plan: &[Planned], dishes: &Dishes, service_level: f64) -> Vec<Forecast> {
        let cal = &self.tuned.calibration;
        let lo_q = (1.0 - backtest::COVERAGE) / 2.0;
        // Each day's menu, gathered once (a plan may be long: a month, or a request's).
        let mut menus: HashMap<Day, Vec<usize>> = HashMap::new();
        for p in plan {
            menus.entry(p.day).or_default().push(p.dish);
        }
        plan.iter()
            .map(|p| {
                let group = dishes.list[p.dish].group;
                let parts = self.fit.predict(p.dish, group, p.day, &menus[&p.day]);
                let share = parts.share();
                let days = self.fit.days(p.dish);
                let trays = p.servings.unwrap_or_else(|| self.fit.typical_trays(p.dish));
                let q = |q: f64| cal.share_quantile(share, trays, days, q);
                let (cook_g, saved_g) = match (p.servings, p.portion_g) {
                    (Some(s), Some(g)) => {
                        let full = s * g;
                        let cook = full * (1.0 - q(1.0 - service_level));
                        (Some(round(cook, 1)), Some(round(full - cook, 1)))
                    }
                    _ => (None, None),
                };
                let r = |v: f64| round(v, 4);
                Forecast {
                    date: p.day.to_string(),
                    dish: dishes.list[p.dish].name.clone(),
                    group: group.map(|g| dishes.group_name(g).to_string()),
                    leftover: r(share),
                    low: r(q(lo_q)),
                    high: r(q(1.0 - lo_q)),
                    basis: self.fit.basis(p.dish, group),
                    history_days: days,
                    servings: p.servings,
                    portion_g: p.portion_g,
                    cook_g,
                    saved_g,
                    parts: Parts {
                        kitchen: r(parts.kitchen),
                        group: r(parts.group),
                        dish: r(parts.dish),
                        weekday: r(parts.weekday),
                        together: r(parts.together),
                    },
                }
            })
            .collect()
    }
}

/// A forecaster fitted once with the dishes it knows, answering plan after plan (`serve`).
#[derive(Debug, Clone)]
pub struct Service {
    forecaster: Forecaster,
    dishes: Dishes,
    /// The history's first and last day.
    pub span: (Day, Day),
}

impl Service {
    /// Reads the history files and fits, naming dishes by `labels`.
    pub fn load(history: &[impl AsRef<std::path::Path>], labels: &LabelSet) -> Result<Self> {
        let mut dishes = Dishes::new(labels);
        let h = history::load(history, None, &mut dishes)?;
        let span = h.span().expect("a loaded history has days");
        Ok(Self {
            forecaster: Forecaster::new(&h, &dishes),
            dishes,
            span,
        })
    }

    /// Forecasts a plan; an item that cannot be read is an error naming its index.
    pub fn forecast(&self, plan: &[plan::Item], service_level: f64) -> Result<Vec<Forecast>> {
        if !(service_level > 0.0 && service_level < 1.0) {
            anyhow::bail!("service_level {service_level} must be between 0 and 1");
        }
        let mut dishes = self.dishes.clone();
        let planned = plan
            .iter()
            .enumerate()
            .map(|(i, item)| {
                plan::planned(item, &mut dishes).map_err(|e| anyhow!("plan[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.forecaster.forecast(&planned, &dishes, service_level))
    }
}
