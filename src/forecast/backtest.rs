//! Rolling-origin evaluation: at each origin (a week apart) the forecaster is fitted on the
//! days before it and forecasts the next week's servings, as a kitchen would have used it.
//! The same machinery chooses the forecaster's [`Settings`] (the lowest error over the weeks
//! before the ones reported) and calibrates its intervals from its own out-of-sample errors.

use super::history::{History, Observation};
use super::model::{Fit, Settings};
use super::Day;

/// Days a forecast looks ahead in a backtest.
pub const HORIZON: i32 = 7;
/// History the first origin needs, in days.
pub const WARM_UP: i32 = 28;
/// Weeks the settings are chosen on.
pub const TUNING_WEEKS: usize = 8;

/// The baselines every forecast is compared with.
pub const BASELINES: [&str; 3] = ["kitchen_mean", "dish_mean", "last_value"];

/// One observation forecast from the days before its origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The dish.
    pub dish: usize,
    /// The day.
    pub day: Day,
    /// What came back.
    pub actual: f64,
    /// The forecast.
    pub predicted: f64,
    /// Trays it was measured on.
    pub trays: f64,
    /// Days of the dish's history the forecast rested on.
    pub days: usize,
    /// The baselines' forecasts, in [`BASELINES`]' order.
    pub baselines: [f64; 3],
}

/// The dishes served on each day of `observations` (sorted by day), as slices.
fn days_of(observations: &[Observation]) -> impl Iterator<Item = &[Observation]> {
    let mut rest = observations;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let end = rest.partition_point(|o| o.day == first.day);
        let (day, tail) = rest.split_at(end);
        rest = tail;
        Some(day)
    })
}

/// The baselines fitted on `before`: the kitchen's mean, each dish's mean, each dish's last.
struct Baselines {
    kitchen: f64,
    mean: Vec<Option<f64>>,
    last: Vec<Option<f64>>,
}

impl Baselines {
    fn new(before: &[Observation], dishes: usize) -> Self {
        let mut sum = vec![(0.0, 0usize); dishes];
        let mut last = vec![None; dishes];
        for o in before {
            sum[o.dish].0 += o.share;
            sum[o.dish].1 += 1;
            last[o.dish] = Some(o.share);
        }
        let kitchen = before.iter().map(|o| o.share).sum::<f64>() / before.len().max(1) as f64;
        let mean = sum
            .iter()
            .map(|&(s, n)| (n > 0).then(|| s / n as f64))
            .collect();
        Self {
            kitchen,
            mean,
            last,
        }
    }

    fn forecasts(&self, dish: usize) -> [f64; 3] {
        let mean = self.mean[dish].unwrap_or(self.kitchen);
        [self.kitchen, mean, self.last[dish].unwrap_or(mean)]
    }
}

/// Forecasts every observation in the week after each origin from the history before it.
pub fn rolling(
    history: &History,
    groups: &[Option<usize>],
    group_count: usize,
    origins: &[Day],
    settings: Settings,
) -> Vec<Point> {
    let mut points = Vec::new();
    for &origin in origins {
        let before = history.before(origin);
        if before.is_empty() {
            continue;
        }
        let fit = Fit::new(before, groups, group_count, origin, settings);
        let baselines = Baselines::new(before, groups.len());
        let ahead = &history.observations[before.len()..history.before(origin.plus(HORIZON)).len()];
        for day in days_of(ahead) {
            let menu: Vec<usize> = day.iter().map(|o| o.dish).collect();
            for o in day {
                let parts = fit.predict(o.dish, groups[o.dish], o.day, &menu);
                points.push(Point {
                    dish: o.dish,
                    day: o.day,
                    actual: o.share,
                    predicted: parts.share(),
                    trays: o.trays,
                    days: fit.days(o.dish),
                    baselines: baselines.forecasts(o.dish),
                });
            }
        }
    }
    points
}

/// Weekly origins for the `weeks` weeks that end before `end`, those with enough history.
pub fn weekly_origins(history: &History, end: Day, weeks: usize) -> Vec<Day> {
    let Some((first, _)) = history.span() else {
        return Vec::new();
    };
    (1..=weeks as i32)
        .rev()
        .map(|w| end.plus(-HORIZON * w))
        .filter(|o| o.0 - first.0 >= WARM_UP)
        .collect()
}

/// How far a forecast strays: a variance that falls with the trays a day is measured on and
/// with the dish's history, and the spread of the errors divided by its square root.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Variance terms: constant, per 1/trays, per 1/(1 + days of history).
    pub variance: [f64; 3],
    /// Standardised out-of-sample errors (actual − forecast), sorted.
    standardised: Vec<f64>,
}

/// Errors needed before their own quantiles are used rather than the normal distribution's.
const EMPIRICAL_MIN: usize = 50;

impl Calibration {
    /// Calibrates on out-of-sample forecasts.
    pub fn fit(points: &[Point]) -> Self {
        let rows: Vec<[f64; 3]> = points.iter().map(|p| terms(p.trays, p.days)).collect();
        let squared: Vec<f64> = points
            .iter()
            .map(|p| (p.actual - p.predicted).powi(2))
            .collect();
        let variance = nonnegative_least_squares(&rows, &squared);
        let mut c = Self {
            variance,
            standardised: Vec::new(),
        };
        c.standardised = points
            .iter()
            .map(|p| (p.actual - p.predicted) / c.scale(p.trays, p.days))
            .collect();
        c.standardised.sort_by(f64::total_cmp);
        c
    }

    /// The standard deviation of a forecast's error for a day of `trays` and a dish with
    /// `days` of history.
    pub fn scale(&self, trays: f64, days: usize) -> f64 {
        let t = terms(trays, days);
        let v: f64 = (0..3).map(|i| self.variance[i] * t[i]).sum();
        v.max(1e-6).sqrt()
    }

    /// The `q` quantile of the standardised error.
    pub fn quantile(&self, q: f64) -> f64 {
        let s = &self.standardised;
        if s.len() < EMPIRICAL_MIN {
            return normal_quantile(q);
        }
        let at = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
        let (i, f) = (at.floor() as usize, at.fract());
        s[i] + (s[(i + 1).min(s.len() - 1)] - s[i]) * f
    }

    /// The share below which the leftover falls with probability `q`, for a forecast `share`.
    pub fn share_quantile(&self, share: f64, trays: f64, days: usize, q: f64) -> f64 {
        (share + self.scale(trays, days) * self.quantile(q)).clamp(0.0, 1.0)
    }
}

fn terms(trays: f64, days: usize) -> [f64; 3] {
    [1.0, 1.0 / trays.max(1.0), 1.0 / (1.0 + days as f64)]
}

/// Least squares `rows · x ≈ y` with `x ≥ 0`, by trying every subset of the three terms.
fn nonnegative_least_squares(rows: &[[f64; 3]], y: &[f64]) -> [f64; 3] {
    let mut best = ([0.0; 3], f64::INFINITY);
    for mask in 1u8..8 {
        let used: Vec<usize> = (0..3).filter(|i| mask & (1 << i) != 0).collect();
        let Some(x) = solve(rows, y, &used) else {
            continue;
        };
        if x.iter().any(|&v| v < 0.0) {
            continue;
        }
        let sse: f64 = rows
            .iter()
            .zip(y)
            .map(|(r, &t)| (t - (0..3).map(|i| r[i] * x[i]).sum::<f64>()).powi(2))
            .sum();
        if sse < best.1 {
            best = (x, sse);
        }
    }
    best.0
}

/// Ordinary least squares on the terms `used` (the others 0), by the normal equations.
fn solve(rows: &[[f64; 3]], y: &[f64], used: &[usize]) -> Option<[f64; 3]> {
    let n = used.len();
    let mut a = vec![vec![0.0; n + 1]; n];
    for (r, &t) in rows.iter().zip(y) {
        for i in 0..n {
            for j in 0..n {
                a[i][j] += r[used[i]] * r[used[j]];
            }
            a[i][n] += r[used[i]] * t;
        }
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    let mut x = [0.0; 3];
    for (i, &u) in used.iter().enumerate() {
        x[u] = a[i][n] / a[i][i];
    }
    Some(x)
}

/// The standard normal distribution's `p` quantile (Acklam's rational approximation, relative
/// error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The settings chosen and the intervals calibrated.
#[derive(Debug, Clone)]
pub struct Tuned {
    /// The settings with the lowest mean absolute error.
    pub settings: Settings,
    /// Calibrated on that setting's errors.
    pub calibration: Calibration,
    /// Its mean absolute error over the tuning weeks (`None` without enough history).
    pub mae: Option<f64>,
    /// The weeks it was chosen on.
    pub weeks: usize,
}

/// Chooses the settings over the `weeks` weeks before `end`; without enough history, the
/// defaults, with intervals from the spread of the history.
pub fn tune(
    history: &History,
    groups: &[Option<usize>],
    group_count: usize,
    end: Day,
    weeks: usize,
) -> Tuned {
    let origins = weekly_origins(history, end, weeks);
    let mut best: Option<(Settings, Vec<Point>, f64)> = None;
    for settings in Settings::grid() {
        let points = rolling(history, groups, group_count, &origins, settings);
        if points.is_empty() {
            break;
        }
        let mae = points
            .iter()
            .map(|p| (p.actual - p.predicted).abs())
            .sum::<f64>()
            / points.len() as f64;
        if best.as_ref().is_none_or(|b| mae < b.2) {
            best = Some((settings, points, mae));
        }
    }
    match best {
        Some((settings, points, mae)) => Tuned {
            settings,
            calibration: Calibration::fit(&points),
            mae: Some(mae),
            weeks: origins.len(),
        },
        None => {
            let before = history.before(end);
            let n = before.len().max(1) as f64;
            let mean = before.iter().map(|o| o.share).sum::<f64>() / n;
            let var = before.iter().map(|o| (o.share - mean).powi(2)).sum::<f64>() / n;
            Tuned {
                settings: Settings::default(),
                calibration: Calibration {
                    variance: [var.max(1e-4), 0.0, 0.0],
                    standardised: Vec::new(),
                },
                mae: None,
                weeks: 0,
            }
        }
    }
}

/// Errors of a set of forecasts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    /// Forecasts scored.
    pub n: usize,
    /// Mean absolute error.
    pub mae: f64,
    /// Mean of forecast − actual.
    pub bias: f64,
    /// Share of actuals inside the 80% interval.
    pub coverage: f64,
    /// The baselines' mean absolute errors, in [`BASELINES`]' order.
    pub baselines: [f64; 3],
}

/// The central interval's coverage that backtests and forecasts report.
pub const COVERAGE: f64 = 0.8;

/// Scores `points` with intervals from `calibration`.
pub fn score(points: &[&Point], calibration: &Calibration) -> Score {
    let n = points.len();
    if n == 0 {
        return Score::default();
    }
    let lo_q = (1.0 - COVERAGE) / 2.0;
    let mut s = Score {
        n,
        ..Score::default()
    };
    for p in points {
        s.mae += (p.actual - p.predicted).abs();
        s.bias += p.predicted - p.actual;
        let lo = calibration.share_quantile(p.predicted, p.trays, p.days, lo_q);
        let hi = calibration.share_quantile(p.predicted, p.trays, p.days, 1.0 - lo_q);
        if (lo..=hi).contains(&p.actual) {
            s.coverage += 1.0;
        }
        for (b, f) in s.baselines.iter_mut().zip(p.baselines) {
            *b += (p.actual - f).abs();
        }
    }
    let n = n as f64;
    s.mae /= n;
    s.bias /= n;
    s.coverage /= n;
    for b in &mut s.baselines {
        *b /= n;
    }
    s
}

/// A backtest over the last weeks of the history.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// How the settings were chosen.
    pub tuned: Tuned,
    /// Whether they were chosen on the reported weeks themselves (too little history before).
    pub tuned_on_reported: bool,
    /// Every forecast of the reported weeks.
    pub points: Vec<Point>,
    /// Origins reported.
    pub origins: Vec<Day>,
}

/// Backtests the last `weeks` weeks: settings chosen on the weeks before them (or on them,
/// when the history is too short), then each week forecast from the days before it.
pub fn evaluate(
    history: &History,
    groups: &[Option<usize>],
    group_count: usize,
    weeks: usize,
) -> Evaluation {
    let end = history.span().map_or(Day(0), |(_, last)| last.plus(1));
    let origins = weekly_origins(history, end, weeks);
    let first = origins.first().copied().unwrap_or(end);
    let before = tune(history, groups, group_count, first, TUNING_WEEKS);
    let (tuned, tuned_on_reported) = if before.mae.is_some() {
        (before, false)
    } else {
        (tune(history, groups, group_count, end, weeks), true)
    };
    let points = rolling(history, groups, group_count, &origins, tuned.settings);
    Evaluation {
        tuned,
        tuned_on_reported,
        points,
        origins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_are_right() {
        assert!(normal_quantile(0.5).abs() < 1e-9);
        assert!((normal_quantile(0.9) - 1.2815515655).abs() < 1e-6);
        assert!((normal_quantile(0.01) + 2.3263478740).abs() < 1e-6);
    }

    #[test]
    fn the_variance_model_finds_its_terms() {
        // Errors whose variance is 0.01 + 0.5 / trays exactly, in expectation.
        let mut points = Vec::new();
        let mut z = 0.123f64;
        for i in 0..4000 {
            let trays: f64 = [10.0, 50.0, 200.0][i % 3];
            z = (z * 997.0 + 0.31).fract();
            let sd = (0.01 + 0.5 / trays).sqrt();
            // Uniform on [-sqrt(3), sqrt(3)] has variance 1.
            let e = (z * 2.0 - 1.0) * 3f64.sqrt() * sd;
            points.push(Point {
                dish: 0,
                day: Day(0),
                actual: 0.5 + e,
                predicted: 0.5,
                trays,
                days: [0, 5, 1000][(i / 3) % 3],
                baselines: [0.5; 3],
            });
        }
        let c = Calibration::fit(&points);
        assert!((c.variance[0] - 0.01).abs() < 0.003, "{:?}", c.variance);
        assert!((c.variance[1] - 0.5).abs() < 0.1, "{:?}", c.variance);
        // Uniform standardised errors: the 90% quantile is 0.8 sqrt(3).
        assert!(
            (c.quantile(0.9) - 0.8 * 3f64.sqrt()).abs() < 0.1,
            "{}",
            c.quantile(0.9)
        );
    }
}
