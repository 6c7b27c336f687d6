//! Records of a run: what was measured in a tray's compartments, named by the menu or the
//! classifier, as [`Record`]s.

use super::menu::Menu;
use super::summary::{Placement, Record};
use super::Measured;
use crate::classify::{OpenSet, Ranking, UNKNOWN};

/// Whose records they are: the tray's name, its photos as records show them, and its day.
#[derive(Debug, Clone, Default)]
pub struct Tray {
    /// The tray's name.
    pub name: String,
    /// The served photo's path (or upload name).
    pub served: Option<String>,
    /// The returned photo's.
    pub returned: Option<String>,
    /// The day, `YYYY-MM-DD`.
    pub date: Option<String>,
}

/// Turns a tray's measurement and the classifier's rankings of its compartments into records.
#[derive(Debug, Clone, Copy)]
pub struct Recorder<'a> {
    /// The day's dishes, when a menu was given.
    pub menu: Option<&'a Menu>,
    /// When the classifier's answer is `unknown`.
    pub open_set: OpenSet,
}

impl Recorder<'_> {
    /// The records of one tray (rankings in the compartments' order, one per compartment): one per compartment, or one for the tray when it could not be
    /// measured at all.
    pub fn records(
        &self,
        tray: Tray,
        measured: Result<Measured, String>,
        rankings: Vec<Result<Ranking, String>>,
    ) -> Vec<Record> {
        let base = Record {
            tray: tray.name,
            served: tray.served,
            returned: tray.returned,
            date: tray.date,
            ..Record::default()
        };
        let measured = match measured {
            Ok(m) => m,
            Err(e) => {
                return vec![Record {
                    error: Some(e),
                    ..base
                }]
            }
        };
        let registration = measured.registration.map(|r| Placement {
            dx: r.motion.dx,
            dy: r.motion.dy,
            angle: r.motion.angle,
            score: r.score,
        });
        let mut rankings = rankings.into_iter();
        measured
            .compartments
            .into_iter()
            .map(|(region, amount)| {
                let ranking = rankings.next().unwrap_or_else(|| Err("no picture".into()));
                let compartment = region.tag();
                let mut r = Record {
                    compartment: Some(compartment.clone()),
                    rect: region.rect,
                    registration,
                    ..base.clone()
                };
                self.name_dish(&mut r, &compartment, ranking.as_ref());
                match amount {
                    Ok(a) => {
                        r.served_coverage = Some(a.served);
                        r.returned_coverage = Some(a.returned);
                        r.leftover = a.leftover;
                        r.leftover_g = r.portion_g.zip(a.leftover).map(|(g, l)| g * l);
                        r.error = ranking.err();
                    }
                    Err(e) => r.error = Some(e),
                }
                r.rounded()
            })
            .collect()
    }

    /// Sets the dish of a compartment: the menu's for the day, checked against the classifier,
    /// else the classifier's best class (or `unknown` under --threshold).
    fn name_dish(&self, r: &mut Record, compartment: &str, ranking: Result<&Ranking, &String>) {
        let mut ranking = ranking.ok().cloned();
        if let Some(rk) = &mut ranking {
            self.open_set.decide(rk);
        }
        let top = ranking.as_ref().map(|rk| {
            let best = &rk.predictions[0];
            let label = rk.decision.clone().unwrap_or_else(|| best.label.clone());
            (best, label)
        });
        let planned = self
            .menu
            .and_then(|m| m.dish(compartment, r.date.as_deref()));
        match planned {
            Some(d) => {
                r.portion_g = d.portion_g;
                match d.class {
                    Some(c) => {
                        r.dish = d.label.clone();
                        if let Some(rk) = &ranking {
                            let mine = rk.predictions.iter().find(|p| p.class == c);
                            r.score = mine.map(|p| p.score);
                            r.prob = mine.map(|p| p.prob);
                            r.group = mine.and_then(|p| p.group.clone());
                        }
                        if let Some((best, label)) = &top {
                            if best.class != c || unknown(ranking.as_ref()) {
                                r.classified_as = Some(label.clone());
                            }
                        }
                    }
                    None => r.dish = Some(d.dish.clone()),
                }
            }
            None => {
                if let Some((best, label)) = top {
                    r.dish = Some(label);
                    r.group = best.group.clone();
                    r.score = Some(best.score);
                    r.prob = Some(best.prob);
                }
            }
        }
    }
}

/// Whether the open-set rule answered `unknown`.
fn unknown(ranking: Option<&Ranking>) -> bool {
    ranking.is_some_and(|r| r.decision.as_deref() == Some(UNKNOWN))
}
