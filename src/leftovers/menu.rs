//! The menu (`--menu menu.toml`): the dish served in each compartment, optionally the grams of
//! one portion and the day it applies to.
//!
//! ```toml
//! [[compartment]]
//! name = "rice"          # a compartment of the layout
//! dish = "쌀밥"           # any name of a class in --labels (or, failing that, kept as written)
//! portion_g = 210        # optional: grams served per tray
//! date = "2026-12-04"    # optional: only on that day (entries without a date apply every day)
//! ```

use super::pairs::check_day;
use crate::eval::ClassNames;
use crate::fsutil::{line_at, read_toml};
use crate::labels::LabelSet;
use anyhow::{bail, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MenuFile {
    #[serde(default)]
    compartment: Vec<toml::Spanned<Item>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    name: String,
    dish: String,
    portion_g: Option<f64>,
    date: Option<String>,
}

/// One dish of the menu.
#[derive(Debug, Clone, PartialEq)]
pub struct Dish {
    /// The compartment's name.
    pub compartment: String,
    /// The dish as the menu writes it.
    pub dish: String,
    /// The class of the label file it names, if any.
    pub class: Option<usize>,
    /// That class's display name.
    pub label: Option<String>,
    /// Grams per portion.
    pub portion_g: Option<f64>,
    /// The day it applies to (`YYYY-MM-DD`), or every day.
    pub date: Option<String>,
    /// Its line in the file.
    pub line: usize,
}

/// A menu file.
#[derive(Debug, Clone)]
pub struct Menu {
    /// The file, for messages.
    pub file: PathBuf,
    /// Its dishes, in the file's order.
    pub dishes: Vec<Dish>,
}

impl Menu {
    /// Reads a menu. A file that cannot be parsed, a negative portion or a malformed date is an
    /// error naming the file and line.
    pub fn load(path: &Path) -> Result<Self> {
        let (file, text): (MenuFile, _) = read_toml(path, "menu")?;
        if file.compartment.is_empty() {
            bail!(
                "{}: no [[compartment]] tables (each with a name and a dish)",
                path.display()
            );
        }
        let mut dishes = Vec::new();
        for item in file.compartment {
            let line = line_at(&text, item.span().start);
            let item = item.into_inner();
            let at = format!("{}:{line}", path.display());
            if item.dish.trim().is_empty() {
                bail!("{at}: the dish is empty");
            }
            if let Some(g) = item.portion_g.filter(|g| !(g.is_finite() && *g >= 0.0)) {
                bail!("{at}: portion_g is {g}; give the grams of one portion (0 or more)");
            }
            if let Some(e) = item.date.as_deref().and_then(|d| check_day(d).err()) {
                bail!("{at}: {e}");
            }
            if dishes
                .iter()
                .any(|d: &Dish| d.compartment == item.name && d.date == item.date)
            {
                bail!(
                    "{at}: compartment {:?} has a dish already{}",
                    item.name,
                    item.date
                        .as_ref()
                        .map_or(String::new(), |d| format!(" on {d}"))
                );
            }
            dishes.push(Dish {
                compartment: item.name,
                dish: item.dish.trim().to_string(),
                class: None,
                label: None,
                portion_g: item.portion_g,
                date: item.date,
                line,
            });
        }
        Ok(Self {
            file: path.to_path_buf(),
            dishes,
        })
    }

    /// Finds each dish's class by any of its names; returns a warning for each dish that names
    /// none (it is kept as written).
    pub fn resolve(&mut self, labels: &LabelSet) -> Vec<String> {
        let names = ClassNames::new(labels);
        let mut warnings = Vec::new();
        for d in &mut self.dishes {
            d.class = names.class(&d.dish);
            d.label = d.class.map(|c| labels.classes[c].display().to_string());
            if d.class.is_none() {
                warnings.push(format!(
                    "{}:{}: {:?} names no class of {}; kept as written, not checked against the photos",
                    self.file.display(),
                    d.line,
                    d.dish,
                    labels.path.display()
                ));
            }
        }
        warnings
    }

    /// Refuses a compartment that is not among `known` (the layout's names).
    pub fn check_compartments(&self, known: &[String]) -> Result<()> {
        for d in &self.dishes {
            if !known.contains(&d.compartment) {
                bail!(
                    "{}:{}: compartment {:?} is not in the layout ({})",
                    self.file.display(),
                    d.line,
                    d.compartment,
                    known.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The dish of `compartment` on `date`: the entry for that day, else the one for every day.
    pub fn dish(&self, compartment: &str, date: Option<&str>) -> Option<&Dish> {
        let of = |d: &&Dish| d.compartment == compartment;
        let dated = self
            .dishes
            .iter()
            .filter(of)
            .find(|d| d.date.is_some() && d.date.as_deref() == date);
        dated.or_else(|| self.dishes.iter().filter(of).find(|d| d.date.is_none()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_dishes_before_daily_ones_and_errors_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("menu.toml");
        std::fs::write(
            &f,
            "[[compartment]]\nname = \"rice\"\ndish = \"밥\"\nportion_g = 210\n\n\
             [[compartment]]\nname = \"rice\"\ndish = \"볶음밥\"\ndate = \"2026-12-04\"\n",
        )
        .unwrap();
        let m = Menu::load(&f).unwrap();
        assert_eq!(m.dish("rice", Some("2026-12-04")).unwrap().dish, "볶음밥");
        assert_eq!(
            m.dish("rice", Some("2026-12-05")).unwrap().portion_g,
            Some(210.0)
        );
        assert_eq!(m.dish("rice", None).unwrap().line, 1);
        assert!(m.dish("soup", None).is_none());
        let e = m
            .check_compartments(&["soup".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("menu.toml:1: compartment \"rice\" is not in the layout (soup)"),
            "{e}"
        );
        std::fs::write(
            &f,
            "[[compartment]]\nname = \"rice\"\ndish = \"밥\"\nportion_g = -1\n",
        )
        .unwrap();
        let e = Menu::load(&f).unwrap_err().to_string();
        assert!(e.contains("menu.toml:1: portion_g is -1"), "{e}");
    }
}
