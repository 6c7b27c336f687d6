//! The forecaster: an additive model of the leftover share of dish `d` on day `t`,
//!
//! ```text
//! share(d, t) = kitchen + group(g(d)) + dish(d) + weekday(t) + Σ together(d, c) + noise
//!                                                          c served with d on t
//! ```
//!
//! fitted by ridge-penalised weighted least squares (coordinate descent over the effects).
//! Every effect but the kitchen's is shrunk toward zero by `strength`, counted in days of
//! history: a dish served on `n` days keeps `n / (n + strength)` of what its own days say and
//! takes the rest from its group, which in turn leans on the kitchen (partial pooling). A dish
//! never served takes its group's level. Each day weighs `0.5^(age / half_life)`, so the
//! levels follow slow drift. No training beyond these closed-form updates; the half-life and
//! strength are chosen by backtest ([`super::backtest`]).

use super::history::Observation;
use super::Day;
use serde::Serialize;
use std::collections::HashMap;

/// The forecaster's two knobs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Settings {
    /// Days after which a day's weight halves; `None`: every day weighs the same.
    pub half_life: Option<f64>,
    /// Shrinkage of each effect toward zero, in days of history.
    pub strength: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            half_life: Some(112.0),
            strength: 5.0,
        }
    }
}

impl Settings {
    /// The settings the backtest chooses among.
    pub fn grid() -> Vec<Settings> {
        let mut grid = Vec::new();
        for half_life in [Some(28.0), Some(56.0), Some(112.0), Some(224.0), None] {
            for strength in [1.0, 3.0, 10.0, 30.0] {
                grid.push(Settings {
                    half_life,
                    strength,
                });
            }
        }
        grid
    }
}

/// A forecast's parts, in shares; their sum is the forecast (before clamping to [0, 1]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Parts {
    /// The kitchen's level.
    pub kitchen: f64,
    /// The dish's group, against the kitchen.
    pub group: f64,
    /// The dish, against its group.
    pub dish: f64,
    /// The day of the week.
    pub weekday: f64,
    /// The dishes served beside it.
    pub together: f64,
}

impl Parts {
    /// The forecast share, clamped to [0, 1].
    pub fn share(&self) -> f64 {
        (self.kitchen + self.group + self.dish + self.weekday + self.together).clamp(0.0, 1.0)
    }
}

/// What a forecast rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// The dish's own history (and its group's).
    Dish,
    /// A dish never served: its group's history.
    Group,
    /// Neither: the kitchen's level.
    Kitchen,
}

impl Basis {
    /// Its name in output: `dish`, `group` or `kitchen`.
    pub fn name(self) -> &'static str {
        match self {
            Basis::Dish => "dish",
            Basis::Group => "group",
            Basis::Kitchen => "kitchen",
        }
    }
}

/// The model fitted on the history before one day.
#[derive(Debug, Clone)]
pub struct Fit {
    kitchen: f64,
    group: Vec<f64>,
    dish: Vec<f64>,
    weekday: [f64; 7],
    together: HashMap<(usize, usize), f64>,
    dish_days: Vec<usize>,
    group_days: Vec<usize>,
    dish_trays: Vec<f64>,
    mean_trays: f64,
}

/// Coordinate-descent sweeps over the effects.
const SWEEPS: usize = 6;

impl Fit {
    /// Fits on `observations` (sorted by day), dishes' groups in `groups` (of `group_count`),
    /// weighing each day by its age at `origin`.
    pub fn new(
        observations: &[Observation],
        groups: &[Option<usize>],
        group_count: usize,
        origin: Day,
        settings: Settings,
    ) -> Self {
        let dishes = groups.len();
        let n = observations.len();
        let weight: Vec<f64> = observations
            .iter()
            .map(|o| match settings.half_life {
                Some(h) => 0.5f64.powf(f64::from(origin.0 - o.day.0).max(0.0) / h),
                None => 1.0,
            })
            .collect();
        let group_of = |o: &Observation| groups.get(o.dish).copied().flatten();
        // Which observations each (dish, companion) pair covers.
        let mut pair_ids: HashMap<(usize, usize), usize> = HashMap::new();
        let mut members: Vec<Vec<u32>> = Vec::new();
        let mut start = 0;
        while start < n {
            let day = observations[start].day;
            let end = start + observations[start..].partition_point(|o| o.day == day);
            for i in start..end {
                for j in start..end {
                    if i != j {
                        let key = (observations[i].dish, observations[j].dish);
                        let id = *pair_ids.entry(key).or_insert_with(|| {
                            members.push(Vec::new());
                            members.len() - 1
                        });
                        members[id].push(i as u32);
                    }
                }
            }
            start = end;
        }
        let mut residual: Vec<f64> = observations.iter().map(|o| o.share).collect();
        let k = settings.strength;
        let mut kitchen = 0.0;
        let mut group = vec![0.0; group_count];
        let mut dish = vec![0.0; dishes];
        let mut weekday = [0.0; 7];
        let mut together = vec![0.0; members.len()];
        // One block of effects: each observation belongs to at most one effect of the block.
        let update = |effects: &mut [f64],
                      shrink: f64,
                      of: &dyn Fn(&Observation) -> Option<usize>,
                      residual: &mut [f64]| {
            let mut num = vec![0.0; effects.len()];
            let mut den = vec![0.0; effects.len()];
            for (i, o) in observations.iter().enumerate() {
                if let Some(e) = of(o) {
                    num[e] += weight[i] * residual[i];
                    den[e] += weight[i];
                }
            }
            let delta: Vec<f64> = (0..effects.len())
                .map(|e| {
                    let new = (effects[e] * den[e] + num[e]) / (den[e] + shrink);
                    let d = if den[e] > 0.0 { new - effects[e] } else { 0.0 };
                    effects[e] += d;
                    d
                })
                .collect();
            for (i, o) in observations.iter().enumerate() {
                if let Some(e) = of(o) {
                    residual[i] -= delta[e];
                }
            }
        };
        let mut dish_days = vec![0; dishes];
        let mut group_days = vec![0; group_count];
        let mut tray_sums = vec![0.0; dishes];
        for o in observations {
            dish_days[o.dish] += 1;
            tray_sums[o.dish] += o.trays;
            if let Some(g) = group_of(o) {
                group_days[g] += 1;
            }
        }
        for _ in 0..SWEEPS {
            let mut level = [kitchen];
            update(&mut level, 0.0, &|_| Some(0), &mut residual);
            kitchen = level[0];
            update(&mut group, k, &group_of, &mut residual);
            update(&mut dish, k, &|o| Some(o.dish), &mut residual);
            update(&mut weekday, k, &|o| Some(o.day.weekday()), &mut residual);
            for (t, rows) in together.iter_mut().zip(&members) {
                let (mut num, mut den) = (0.0, 0.0);
                for &i in rows {
                    num += weight[i as usize] * residual[i as usize];
                    den += weight[i as usize];
                }
                let new = (*t * den + num) / (den + k);
                let d = new - *t;
                *t = new;
                for &i in rows {
                    residual[i as usize] -= d;
                }
            }
        }
        let dish_trays = tray_sums
            .iter()
            .zip(&dish_days)
            .map(|(t, &d)| if d > 0 { t / d as f64 } else { 0.0 })
            .collect();
        let mean_trays = if n > 0 {
            observations.iter().map(|o| o.trays).sum::<f64>() / n as f64
        } else {
            1.0
        };
        // Served-together effects as departures from the dish's usual companions: on average
        // over its days they add nothing (exactly so when every day has as many dishes).
        let mut pair_sum = vec![(0.0, 0.0, 0.0); dishes];
        let mut start = 0;
        while start < n {
            let day = observations[start].day;
            let end = start + observations[start..].partition_point(|o| o.day == day);
            for i in start..end {
                let d = observations[i].dish;
                let total: f64 = (start..end)
                    .filter(|&j| j != i)
                    .map(|j| together[pair_ids[&(d, observations[j].dish)]])
                    .sum();
                pair_sum[d].0 += weight[i] * total;
                pair_sum[d].1 += weight[i] * (end - start - 1) as f64;
                pair_sum[d].2 += weight[i];
            }
            start = end;
        }
        for (&(d, _), &id) in &pair_ids {
            let (total, companions, _) = pair_sum[d];
            if companions > 0.0 {
                together[id] -= total / companions;
            }
        }
        for (d, &(total, _, w)) in pair_sum.iter().enumerate() {
            if w > 0.0 {
                dish[d] += total / w;
            }
        }
        // The fit fixes only sums along each dish's chain (kitchen + group + dish); move each
        // level's weighted mean up the chain, so that a group's effect is the level of its
        // dishes (what a new dish of the group takes) and the kitchen's that of its groups.
        // Forecasts of served dishes do not change.
        let trust = |days: usize| days as f64 / (days as f64 + k.max(1e-9));
        let mut moved = vec![(0.0, 0.0); group_count];
        for (d, g) in groups.iter().enumerate() {
            if let Some(g) = *g {
                moved[g].0 += trust(dish_days[d]) * dish[d];
                moved[g].1 += trust(dish_days[d]);
            }
        }
        for (g, &(sum, w)) in moved.iter().enumerate() {
            if w > 0.0 {
                group[g] += sum / w;
            }
        }
        // (A dish never served keeps no effect of its own.)
        for (d, g) in groups.iter().enumerate() {
            if let Some(g) = *g {
                if moved[g].1 > 0.0 && dish_days[d] > 0 {
                    dish[d] -= moved[g].0 / moved[g].1;
                }
            }
        }
        let (mut sum, mut w) = (0.0, 0.0);
        for (g, &days) in group_days.iter().enumerate() {
            sum += trust(days) * group[g];
            w += trust(days);
        }
        if w > 0.0 {
            let m = sum / w;
            kitchen += m;
            group.iter_mut().for_each(|a| *a -= m);
            for (d, g) in groups.iter().enumerate() {
                if g.is_none() && dish_days[d] > 0 {
                    dish[d] -= m;
                }
            }
        }
        // Weekday effects as departures from the kitchen's usual day.
        let (mut sum, mut w) = (0.0, 0.0);
        for (i, o) in observations.iter().enumerate() {
            sum += weight[i] * weekday[o.day.weekday()];
            w += weight[i];
        }
        if w > 0.0 {
            let m = sum / w;
            kitchen += m;
            weekday.iter_mut().for_each(|e| *e -= m);
        }
        let together = pair_ids
            .into_iter()
            .map(|(key, id)| (key, together[id]))
            .collect();
        Self {
            kitchen,
            group,
            dish,
            weekday,
            together,
            dish_days,
            group_days,
            dish_trays,
            mean_trays,
        }
    }

    /// The forecast for `dish` (of `group`) on `day`, served beside `companions`.
    pub fn predict(
        &self,
        dish: usize,
        group: Option<usize>,
        day: Day,
        companions: &[usize],
    ) -> Parts {
        Parts {
            kitchen: self.kitchen,
            group: group
                .and_then(|g| self.group.get(g))
                .copied()
                .unwrap_or(0.0),
            dish: self.dish.get(dish).copied().unwrap_or(0.0),
            weekday: self.weekday[day.weekday()],
            together: companions
                .iter()
                .filter(|&&c| c != dish)
                .filter_map(|&c| self.together.get(&(dish, c)))
                .sum(),
        }
    }

    /// Days `dish` was served in the history fitted.
    pub fn days(&self, dish: usize) -> usize {
        self.dish_days.get(dish).copied().unwrap_or(0)
    }

    /// What a forecast for `dish` (of `group`) rests on.
    pub fn basis(&self, dish: usize, group: Option<usize>) -> Basis {
        if self.days(dish) > 0 {
            Basis::Dish
        } else if group.is_some_and(|g| self.group_days.get(g).is_some_and(|&n| n > 0)) {
            Basis::Group
        } else {
            Basis::Kitchen
        }
    }

    /// Trays a serving of `dish` usually has: its mean, else the kitchen's.
    pub fn typical_trays(&self, dish: usize) -> f64 {
        match self.dish_trays.get(dish) {
            Some(&t) if t > 0.0 => t,
            _ => self.mean_trays,
        }
    }

    /// The weekday effects, Monday first.
    pub fn weekday_effects(&self) -> [f64; 7] {
        self.weekday
    }

    /// The effect on `dish` of `companion` served the same day.
    pub fn together_effect(&self, dish: usize, companion: usize) -> f64 {
        self.together
            .get(&(dish, companion))
            .copied()
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(day: i32, dish: usize, share: f64) -> Observation {
        Observation {
            day: Day(day),
            dish,
            share,
            trays: 100.0,
        }
    }

    #[test]
    fn a_dish_with_long_history_keeps_its_level_a_new_one_takes_its_groups() {
        // Group 0: dishes 0 (0.2) and 1 (0.4), on alternate days; group 1: dish 2 (0.7), daily.
        let mut o = Vec::new();
        for day in 0..200 {
            o.push(obs(day, (day % 2) as usize, [0.2, 0.4][(day % 2) as usize]));
            o.push(obs(day, 2, 0.7));
        }
        let groups = [Some(0), Some(0), Some(1), Some(0)];
        let fit = Fit::new(&o, &groups, 2, Day(200), Settings::default());
        let share = |d: usize| fit.predict(d, groups[d], Day(200), &[d, 2]).share();
        assert!((share(0) - 0.2).abs() < 0.02, "{}", share(0));
        assert!((share(2) - 0.7).abs() < 0.02, "{}", share(2));
        // Dish 3 was never served: its group's level, the mean of dishes 0 and 1.
        assert!((share(3) - 0.3).abs() < 0.03, "{}", share(3));
        assert_eq!(fit.basis(3, Some(0)), Basis::Group);
        assert_eq!(fit.basis(3, None), Basis::Kitchen);
    }

    #[test]
    fn recent_days_weigh_more_with_a_half_life() {
        // The dish was left at 0.6 for a year, then at 0.2 for the last month.
        let o: Vec<_> = (0..395)
            .map(|d| obs(d, 0, if d < 365 { 0.6 } else { 0.2 }))
            .collect();
        let at = |s: Settings| {
            Fit::new(&o, &[None], 0, Day(395), s)
                .predict(0, None, Day(395), &[])
                .share()
        };
        let flat = at(Settings {
            half_life: None,
            strength: 1.0,
        });
        let recent = at(Settings {
            half_life: Some(14.0),
            strength: 1.0,
        });
        assert!(flat > 0.5, "{flat}");
        assert!(recent < 0.3, "{recent}");
    }
}
