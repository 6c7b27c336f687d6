//! Kitchen histories from a known process, for `forecast`'s tests and benchmark: dishes with
//! their own levels inside groups, weekday effects, served-together effects (side dishes left
//! more beside a popular main), slow drift, noise per day and per tray, dishes first served
//! late, days without service (weekends, holidays) and tray counts that vary.

use std::fmt::Write as _;
use std::io::Write;

/// A small deterministic generator (SplitMix64) with normal draws.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }

    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-12);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// One dish of the kitchen.
pub struct DishSpec {
    pub name: &'static str,
    pub group: usize,
    /// Its effect against its group.
    pub effect: f64,
    /// The share of the history before it is first served (0: from the start).
    pub first_served: f64,
}

/// The known process.
pub struct Kitchen {
    /// Group names and effects against the kitchen.
    pub groups: Vec<(&'static str, f64)>,
    pub dishes: Vec<DishSpec>,
    /// The kitchen's level at the start.
    pub level: f64,
    /// Its change per year.
    pub drift_per_year: f64,
    /// Monday first; days with `None` have no service.
    pub weekday: [Option<f64>; 7],
    /// (dish, companion, effect on the dish when the companion is served the same day).
    pub together: Vec<(usize, usize, f64)>,
    /// Standard deviation of a dish-day's shock.
    pub day_noise: f64,
    /// Standard deviation of one tray's share around its day's.
    pub tray_noise: f64,
    /// Share of service days that are holidays.
    pub holidays: f64,
    /// Usual trays a day.
    pub trays: u32,
}

/// One dish served on one day.
#[derive(Debug, Clone)]
pub struct Served {
    /// Days since the history's first day.
    pub day: i32,
    pub date: String,
    pub dish: usize,
    pub trays: u32,
    /// The day's mean share over its trays.
    pub share: f64,
    /// What the process expects, before noise.
    pub expected: f64,
    /// Each tray's share (only when asked for).
    pub per_tray: Vec<f64>,
}

/// The groups of the standard kitchen.
pub const RICE: usize = 0;
pub const SOUP: usize = 1;
pub const MAIN: usize = 2;
pub const SIDE: usize = 3;

impl Kitchen {
    /// A school kitchen: rice, soup, a main and two sides a day, Monday to Friday.
    pub fn standard() -> Self {
        let d = |name, group, effect, first_served| DishSpec {
            name,
            group,
            effect,
            first_served,
        };
        Self {
            groups: vec![("밥", -0.10), ("국", 0.05), ("주찬", -0.05), ("반찬", 0.10)],
            dishes: vec![
                d("쌀밥", RICE, -0.03, 0.0),
                d("잡곡밥", RICE, 0.05, 0.0),
                d("볶음밥", RICE, -0.05, 0.0),
                d("미역국", SOUP, 0.0, 0.0),
                d("된장국", SOUP, 0.04, 0.0),
                d("김치찌개", SOUP, -0.05, 0.0),
                d("어묵국", SOUP, 0.02, 0.0),
                d("불고기", MAIN, -0.07, 0.0),
                d("제육볶음", MAIN, -0.02, 0.0),
                d("고등어구이", MAIN, 0.10, 0.0),
                d("닭갈비", MAIN, -0.03, 0.0),
                d("돈까스", MAIN, -0.08, 0.0),
                d("깍두기", SIDE, 0.04, 0.0),
                d("시금치나물", SIDE, 0.12, 0.0),
                d("잡채", SIDE, -0.06, 0.0),
                d("콩나물무침", SIDE, 0.07, 0.0),
                d("멸치볶음", SIDE, 0.10, 0.0),
                d("배추김치", SIDE, 0.0, 0.0),
                d("계란말이", SIDE, -0.08, 0.0),
                d("떡볶이", SIDE, -0.04, 0.7),
                // Listed in the labels, never served: a new dish for the plan.
                d("오이무침", SIDE, 0.05, 2.0),
            ],
            level: 0.25,
            drift_per_year: 0.04,
            weekday: [
                Some(0.03),
                Some(0.0),
                Some(-0.03),
                Some(0.0),
                Some(0.06),
                None,
                None,
            ],
            together: vec![(13, 7, 0.10), (15, 11, 0.08), (16, 7, 0.06)],
            day_noise: 0.03,
            tray_noise: 0.2,
            holidays: 0.03,
            trays: 300,
        }
    }

    /// The label file: the groups as headers, each dish under its group, with a romanised
    /// second name for a few.
    pub fn labels(&self) -> String {
        let mut text = String::new();
        for (g, (name, _)) in self.groups.iter().enumerate() {
            writeln!(text, "[{name}]").unwrap();
            for d in self.dishes.iter().filter(|d| d.group == g) {
                match d.name {
                    "잡채" => writeln!(text, "잡채 | japchae").unwrap(),
                    "깍두기" => writeln!(text, "깍두기 | kkakdugi").unwrap(),
                    n => writeln!(text, "{n}").unwrap(),
                }
            }
        }
        text
    }

    /// The index of the dish named `name`.
    pub fn dish(&self, name: &str) -> usize {
        self.dishes.iter().position(|d| d.name == name).unwrap()
    }

    /// What the process expects of `dish` on `day` (of `days`) beside `menu`.
    pub fn expected(&self, dish: usize, day: i32, weekday: usize, menu: &[usize]) -> f64 {
        let spec = &self.dishes[dish];
        let together: f64 = self
            .together
            .iter()
            .filter(|(d, c, _)| *d == dish && menu.contains(c))
            .map(|t| t.2)
            .sum();
        self.level
            + self.drift_per_year * f64::from(day) / 365.0
            + self.groups[spec.group].1
            + spec.effect
            + self.weekday[weekday].unwrap_or(0.0)
            + together
    }

    /// `days` days from `start` (a Monday, `YYYY-MM-DD`): each service day's menu (a dish of
    /// each group, two sides), each dish's trays and shares. With `per_tray`, each tray's share
    /// is kept too.
    pub fn history(&self, start: &str, days: i32, seed: u64, per_tray: bool) -> Vec<Served> {
        let mut rng = Rng::new(seed);
        let start = chrono::NaiveDate::parse_from_str(start, "%Y-%m-%d").unwrap();
        let mut served = Vec::new();
        for day in 0..days {
            let weekday = (day % 7) as usize;
            if self.weekday[weekday].is_none() || rng.uniform() < self.holidays {
                continue;
            }
            let date = (start + chrono::Days::new(day as u64))
                .format("%Y-%m-%d")
                .to_string();
            let available = |g: usize| -> Vec<usize> {
                (0..self.dishes.len())
                    .filter(|&d| {
                        let s = &self.dishes[d];
                        s.group == g && s.first_served * f64::from(days) <= f64::from(day)
                    })
                    .collect()
            };
            let mut menu = Vec::new();
            for g in [RICE, SOUP, MAIN, SIDE, SIDE] {
                let choices: Vec<usize> = available(g)
                    .into_iter()
                    .filter(|d| !menu.contains(d))
                    .collect();
                menu.push(choices[rng.below(choices.len())]);
            }
            // Some days are small (an event, half the school away).
            let trays = if rng.uniform() < 0.1 {
                20 + rng.below(40) as u32
            } else {
                (f64::from(self.trays) * (0.8 + 0.4 * rng.uniform())) as u32
            };
            for &dish in &menu {
                let expected = self.expected(dish, day, weekday, &menu);
                let shock = self.day_noise * rng.normal();
                let mut sum = 0.0;
                let mut per = Vec::new();
                for _ in 0..trays {
                    let s = (expected + shock + self.tray_noise * rng.normal()).clamp(0.0, 1.0);
                    sum += s;
                    if per_tray {
                        per.push(s);
                    }
                }
                served.push(Served {
                    day,
                    date: date.clone(),
                    dish,
                    trays,
                    share: sum / f64::from(trays),
                    expected,
                    per_tray: per,
                });
            }
        }
        served
    }

    /// Writes `served` as a history CSV, one row per dish and day.
    pub fn write_daily_csv(&self, served: &[Served], out: &mut impl Write) {
        writeln!(out, "date,dish,leftover,trays").unwrap();
        for s in served {
            writeln!(
                out,
                "{},{},{:.6},{}",
                s.date, self.dishes[s.dish].name, s.share, s.trays
            )
            .unwrap();
        }
    }

    /// Writes `served` (kept per tray) as `leftovers` records, one JSON line per tray and
    /// compartment.
    pub fn write_records(&self, served: &[Served], out: &mut impl Write) {
        for s in served {
            let dish = &self.dishes[s.dish];
            for (t, share) in s.per_tray.iter().enumerate() {
                writeln!(
                    out,
                    "{{\"tray\":\"{}-{t}\",\"date\":\"{}\",\"compartment\":\"{}\",\"dish\":\"{}\",\"group\":\"{}\",\"leftover\":{share:.4}}}",
                    s.date, s.date, self.groups[dish.group].0, dish.name, self.groups[dish.group].0
                )
                .unwrap();
            }
        }
    }
}
