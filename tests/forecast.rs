//! `foodclip forecast` on kitchen histories from a known process (`common/kitchen.rs`): the
//! backtest beats its baselines, intervals hold close to their share, a new dish takes its
//! group's level, the process's effects are recovered, and bad input is one line naming the
//! file and line.

mod common;

use common::kitchen::{Kitchen, Served, SIDE};
use common::*;
use foodclip::forecast::history;
use foodclip::forecast::model::{Fit, Settings};
use foodclip::forecast::{Day, Dishes};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Two years of the standard kitchen, from a Monday.
const START: &str = "2024-01-01";
const DAYS: i32 = 728;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    kitchen: Kitchen,
    served: Vec<Served>,
}

impl Setup {
    fn new(seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let kitchen = Kitchen::standard();
        let served = kitchen.history(START, DAYS, seed, false);
        let mut csv = Vec::new();
        kitchen.write_daily_csv(&served, &mut csv);
        std::fs::write(root.join("history.csv"), csv).unwrap();
        std::fs::write(root.join("labels.txt"), kitchen.labels()).unwrap();
        Self {
            _dir: dir,
            root,
            kitchen,
            served,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn forecast(&self, args: &[&str]) -> Output {
        foodclip()
            .arg("forecast")
            .arg("--history")
            .arg(self.path("history.csv"))
            .arg("--labels")
            .arg(self.path("labels.txt"))
            .args(args)
            .output()
            .unwrap()
    }
}

fn err(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn the_backtest_beats_every_baseline_and_its_intervals_hold() {
    for seed in [1, 2] {
        let s = Setup::new(seed);
        let o = s.forecast(&["--backtest", "--weeks", "12", "--format", "jsonl"]);
        let rows = jsonl_records(ok(&o));
        let all = rows.iter().find(|r| r["dish"] == "(all)").unwrap();
        let mae = all["mae"].as_f64().unwrap();
        let baselines: Vec<f64> = ["kitchen_mean_mae", "dish_mean_mae", "last_value_mae"]
            .iter()
            .map(|b| all[b].as_f64().unwrap())
            .collect();
        eprintln!("seed {seed}: MAE {mae:.4} against baselines {baselines:?}; {all}");
        assert!(all["n"].as_u64().unwrap() > 200, "{all}");
        for b in &baselines {
            assert!(
                mae < 0.85 * b,
                "MAE {mae} not clearly below a baseline {b}: {all}"
            );
        }
        let coverage = all["coverage"].as_f64().unwrap();
        assert!(
            (0.7..=0.9).contains(&coverage),
            "80% intervals held {coverage}"
        );
        assert!(all["bias"].as_f64().unwrap().abs() < 0.02, "{all}");
        // One row per dish served in those weeks, and the summary on stderr.
        assert!(rows.len() > 15, "{}", rows.len());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("chosen on the 8 weeks before"), "{stderr}");
    }
}

/// A plan for the week after the history, by any name of each class.
fn plan(s: &Setup) -> PathBuf {
    let p = s.path("plan.csv");
    std::fs::write(
        &p,
        "date,dish,servings,portion_g\n\
         2025-12-29,쌀밥,300,210\n\
         2025-12-29,미역국,300,250\n\
         2025-12-29,불고기,300,120\n\
         2025-12-29,시금치나물,300,40\n\
         2025-12-29,kkakdugi,300,40\n\
         2026-01-02,잡곡밥,280,210\n\
         2026-01-02,된장국,280,250\n\
         2026-01-02,고등어구이,280,120\n\
         2026-01-02,오이무침,280,40\n\
         2026-01-02,japchae,,\n",
    )
    .unwrap();
    p
}

#[test]
fn a_planned_menu_gets_forecasts_intervals_and_grams_to_cook() {
    let s = Setup::new(3);
    let p = plan(&s);
    let o = s.forecast(&["--menu", p.to_str().unwrap(), "--format", "jsonl"]);
    let rows = jsonl_records(ok(&o));
    assert_eq!(rows.len(), 10);
    let k = &s.kitchen;
    let day0 = DAYS; // 2025-12-29, a Monday
    let menus: [(i32, usize, Vec<usize>); 2] = [
        (
            day0,
            0,
            ["쌀밥", "미역국", "불고기", "시금치나물", "깍두기"]
                .map(|n| k.dish(n))
                .to_vec(),
        ),
        (
            day0 + 4,
            4,
            ["잡곡밥", "된장국", "고등어구이", "오이무침", "잡채"]
                .map(|n| k.dish(n))
                .to_vec(),
        ),
    ];
    let mut errors = Vec::new();
    for r in &rows {
        let dish = r["dish"].as_str().unwrap();
        let (day, weekday, menu) = if r["date"] == "2025-12-29" {
            &menus[0]
        } else {
            &menus[1]
        };
        let (low, high, left) = (
            r["low"].as_f64().unwrap(),
            r["high"].as_f64().unwrap(),
            r["leftover"].as_f64().unwrap(),
        );
        assert!(low <= left && left <= high && high - low > 0.01, "{r}");
        if dish == "오이무침" {
            // Never served: its group's level, nothing of its own.
            assert_eq!(r["basis"], "group", "{r}");
            assert_eq!(r["history_days"], 0, "{r}");
            let parts = &r["parts"];
            assert_eq!(parts["dish"], 0.0, "{r}");
            let group_level = k.level + k.drift_per_year * 2.0 + k.groups[SIDE].1;
            let got = parts["kitchen"].as_f64().unwrap() + parts["group"].as_f64().unwrap();
            assert!(
                (got - group_level).abs() < 0.04,
                "{got} against {group_level}: {r}"
            );
            continue;
        }
        assert_eq!(r["basis"], "dish", "{r}");
        assert!(r["history_days"].as_u64().unwrap() > 20, "{r}");
        let truth = k.expected(k.dish(dish), *day, *weekday, menu);
        errors.push((left - truth).abs());
        match (r.get("servings"), r.get("portion_g")) {
            (Some(sv), Some(g)) => {
                let full = sv.as_f64().unwrap() * g.as_f64().unwrap();
                let cook = r["cook_g"].as_f64().unwrap();
                let saved = r["saved_g"].as_f64().unwrap();
                assert!(cook < full && cook > full * (1.0 - high), "{r}");
                assert!((cook + saved - full).abs() < 0.2, "{r}");
            }
            _ => assert!(r.get("cook_g").is_none(), "{r}"),
        }
    }
    let mae = errors.iter().sum::<f64>() / errors.len() as f64;
    eprintln!(
        "forecast against the process's expectation: MAE {mae:.4} over {}",
        errors.len()
    );
    assert!(mae < 0.03, "{errors:?}");
    // The names as the plan wrote them resolve to the label file's display names.
    assert!(rows.iter().any(|r| r["dish"] == "깍두기"));
    assert!(rows.iter().any(|r| r["dish"] == "잡채"));

    // A higher service level cooks more of every dish.
    let o = s.forecast(&[
        "--menu",
        p.to_str().unwrap(),
        "--format",
        "jsonl",
        "--service-level",
        "0.99",
    ]);
    let more = jsonl_records(ok(&o));
    for (a, b) in rows.iter().zip(&more) {
        if let (Some(x), Some(y)) = (a["cook_g"].as_f64(), b["cook_g"].as_f64()) {
            assert!(y > x, "{a} {b}");
        }
    }

    // The other formats carry the same numbers.
    let o = s.forecast(&["--menu", p.to_str().unwrap(), "--format", "csv"]);
    let text = String::from_utf8(ok(&o).to_vec()).unwrap();
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("date,dish,group,leftover,low,high,basis"));
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(first[1], rows[0]["dish"].as_str().unwrap());
    assert_eq!(
        first[3].parse::<f64>().unwrap(),
        rows[0]["leftover"].as_f64().unwrap()
    );
    let o = s.forecast(&["--menu", p.to_str().unwrap(), "--format", "table"]);
    let table = String::from_utf8(ok(&o).to_vec()).unwrap();
    assert_eq!(table.lines().count(), 10, "{table}");
    assert!(table.contains("kg"), "{table}");
}

#[test]
fn the_processes_effects_are_recovered() {
    let s = Setup::new(4);
    let labels = foodclip::labels::LabelSet::load(&s.path("labels.txt")).unwrap();
    let mut dishes = Dishes::new(&labels);
    let h = history::load(&[s.path("history.csv")], None, &mut dishes).unwrap();
    assert_eq!(h.rows as usize, s.served.len());
    let groups = dishes.groups();
    let end = h.span().unwrap().1.plus(1);
    let fit = Fit::new(
        &h.observations,
        &groups,
        dishes.group_count(),
        end,
        Settings {
            half_life: Some(224.0),
            strength: 3.0,
        },
    );
    let k = &s.kitchen;
    let id = |name: &str| dishes.list.iter().position(|d| d.name == name).unwrap();
    // Weekday effects, against Tuesday's.
    let w = fit.weekday_effects();
    for (day, truth) in [(0, 0.03), (2, -0.03), (4, 0.06)] {
        let got = w[day] - w[1];
        assert!(
            (got - truth).abs() < 0.015,
            "weekday {day}: {got} against {truth}"
        );
    }
    // Served-together effects are departures from a dish's usual companions: a side beside
    // one main against beside the other mains.
    let beside = |dish: &str, main: usize| {
        let others: Vec<f64> = (0..k.dishes.len())
            .filter(|&c| k.dishes[c].group == common::kitchen::MAIN && c != main)
            .map(|c| fit.together_effect(id(dish), id(k.dishes[c].name)))
            .collect();
        fit.together_effect(id(dish), id(k.dishes[main].name))
            - others.iter().sum::<f64>() / others.len() as f64
    };
    for &(dish, main, truth) in &k.together {
        let got = beside(k.dishes[dish].name, main);
        assert!(
            (got - truth).abs() < 0.03,
            "{dish} beside {main}: {got} against {truth}"
        );
    }
    let none = beside("깍두기", k.dish("불고기"));
    assert!(none.abs() < 0.03, "{none}");
    // Dish levels, against another dish's (group and dish effects together).
    let level = |name: &str| {
        let d = id(name);
        fit.predict(d, groups[d], Day::parse("2025-12-30").unwrap(), &[])
            .share()
    };
    let truth = |name: &str| {
        let d = &k.dishes[k.dish(name)];
        k.groups[d.group].1 + d.effect
    };
    for name in ["고등어구이", "시금치나물", "쌀밥", "떡볶이"] {
        let got = level(name) - level("불고기");
        let want = truth(name) - truth("불고기");
        assert!((got - want).abs() < 0.03, "{name}: {got} against {want}");
    }
}

#[test]
fn leftovers_records_in_every_format_read_as_the_same_history() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kitchen::standard();
    let served = k.history(START, 70, 5, true);
    let mut jsonl = Vec::new();
    k.write_records(&served, &mut jsonl);
    let jsonl = String::from_utf8(jsonl).unwrap();
    // A failed tray and an unknown dish, as leftovers writes them: passed over.
    let jsonl = format!(
        "{jsonl}{{\"tray\":\"x\",\"date\":\"2024-01-02\",\"error\":\"cannot read photo\"}}\n\
         {{\"tray\":\"y\",\"date\":\"2024-01-02\",\"dish\":\"unknown\",\"leftover\":0.5}}\n"
    );
    std::fs::write(dir.path().join("h.jsonl"), &jsonl).unwrap();
    let array = format!(
        "[{}]",
        jsonl.trim_end().lines().collect::<Vec<_>>().join(",\n")
    );
    std::fs::write(dir.path().join("h.json"), array).unwrap();
    // The same records as leftovers' TSV: a header with its columns, in its order.
    let mut tsv = String::from("tray\tdate\tcompartment\tdish\tgroup\tleftover\terror\n");
    for line in jsonl.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let f = |k: &str| {
            v.get(k).map_or(String::new(), |x| {
                x.as_str().map_or(x.to_string(), String::from)
            })
        };
        tsv += &[
            "tray",
            "date",
            "compartment",
            "dish",
            "group",
            "leftover",
            "error",
        ]
        .map(f)
        .join("\t");
        tsv.push('\n');
    }
    std::fs::write(dir.path().join("h.tsv"), tsv).unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, k.labels()).unwrap();
    let load = |name: &str| {
        let set = foodclip::labels::LabelSet::load(&labels).unwrap();
        let mut dishes = Dishes::new(&set);
        let h = history::load(&[dir.path().join(name)], None, &mut dishes).unwrap();
        (h, dishes.list.len())
    };
    let (a, n) = load("h.jsonl");
    let trays: u32 = served.iter().map(|s| s.trays).sum();
    assert_eq!(a.rows, u64::from(trays) + 2);
    assert_eq!(a.skipped, 2);
    assert_eq!(a.observations.len(), served.len());
    let folded: f64 = a.observations.iter().map(|o| o.trays).sum();
    assert_eq!(folded, f64::from(trays));
    for name in ["h.json", "h.tsv"] {
        let (b, m) = load(name);
        assert_eq!(m, n, "{name}");
        assert_eq!((b.rows, b.skipped), (a.rows, a.skipped), "{name}");
        assert_eq!(b.observations.len(), a.observations.len(), "{name}");
        for (x, y) in a.observations.iter().zip(&b.observations) {
            assert_eq!((x.day, x.dish, x.trays), (y.day, y.dish, y.trays), "{name}");
            assert!((x.share - y.share).abs() < 1e-9, "{name}");
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_input_is_one_line_naming_the_file_and_line_and_output_is_kept() {
    let s = Setup::new(6);
    let dir = &s.root;
    let labels = s.path("labels.txt");
    let run = |history: &Path, menu: &Path, output: Option<&Path>| {
        let mut c = foodclip();
        c.arg("forecast")
            .arg("--history")
            .arg(history)
            .arg("--labels")
            .arg(&labels)
            .arg("--menu")
            .arg(menu);
        if let Some(o) = output {
            c.arg("--output").arg(o);
        }
        c.output().unwrap()
    };
    let history = s.path("history.csv");
    let good = plan(&s);
    // A menu dish that names no class.
    let menu = write(
        dir,
        "bad-plan.csv",
        "date,dish\n2026-01-05,쌀밥\n2026-01-05,마라탕\n",
    );
    let e = err(&run(&history, &menu, None));
    assert!(
        e.contains("bad-plan.csv:3:") && e.contains("\"마라탕\" names no class"),
        "{e}"
    );
    // A date that does not parse, in the plan and in the history.
    let menu = write(dir, "bad-date.csv", "2026-01-05,쌀밥\n05/01/2026,미역국\n");
    let e = err(&run(&history, &menu, None));
    assert!(
        e.contains("bad-date.csv:2:") && e.contains("not YYYY-MM-DD"),
        "{e}"
    );
    let h = write(
        dir,
        "h1.csv",
        "date,dish,leftover\n2025-01-06,쌀밥,0.2\n2025-13-01,쌀밥,0.3\n",
    );
    let e = err(&run(&h, &good, None));
    assert!(
        e.contains("h1.csv:3:") && e.contains("not YYYY-MM-DD"),
        "{e}"
    );
    // A leftover outside [0, 1], in a CSV and in JSON Lines.
    let h = write(dir, "h2.csv", "2025-01-06,쌀밥,0.2\n2025-01-07,쌀밥,1.5\n");
    let e = err(&run(&h, &good, None));
    assert!(
        e.contains("h2.csv:2:") && e.contains("leftover 1.5 is outside [0, 1]"),
        "{e}"
    );
    let h = write(
        dir,
        "h3.jsonl",
        "{\"date\":\"2025-01-06\",\"dish\":\"쌀밥\",\"leftover\":0.2}\n\n{\"date\":\"2025-01-07\",\"dish\":\"쌀밥\",\"leftover\":-0.1}\n",
    );
    let e = err(&run(&h, &good, None));
    assert!(
        e.contains("h3.jsonl:3:") && e.contains("outside [0, 1]"),
        "{e}"
    );
    let h = write(
        dir,
        "h4.json",
        "[{\"date\":\"2025-01-06\",\"dish\":\"쌀밥\",\"leftover\":2}]",
    );
    let e = err(&run(&h, &good, None));
    assert!(
        e.contains("h4.json: record 1:") && e.contains("outside [0, 1]"),
        "{e}"
    );
    // An empty history.
    let h = write(dir, "h5.csv", "date,dish,leftover,trays\n");
    let e = err(&run(&h, &good, None));
    assert!(
        e.contains("h5.csv") && e.contains("no measured leftovers"),
        "{e}"
    );
    // Files a spreadsheet saved, with a byte-order mark, read as the same files without one.
    let bom = |name: &str, from: &Path| {
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend(std::fs::read(from).unwrap());
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let with_bom = run(
        &bom("bom-history.csv", &history),
        &bom("bom-plan.csv", &good),
        None,
    );
    let without = run(&history, &good, None);
    assert!(
        with_bom.status.success(),
        "{}",
        String::from_utf8_lossy(&with_bom.stderr)
    );
    assert_eq!(with_bom.stdout, without.stdout);
    // A failed run leaves an earlier --output as it was; a good one replaces it whole.
    let out = write(dir, "out.jsonl", "earlier\n");
    err(&run(&h, &good, Some(&out)));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier\n");
    let o = run(&history, &good, Some(&out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(jsonl_records(&std::fs::read(&out).unwrap()).len(), 10);
}

#[test]
fn the_report_shows_the_plan_and_each_dishes_history_in_a_browser() {
    let s = Setup::new(7);
    let p = plan(&s);
    let report = s.path("report");
    let o = s.forecast(&[
        "--menu",
        p.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--format",
        "jsonl",
    ]);
    assert_eq!(jsonl_records(ok(&o)).len(), 10);
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert_eq!(
        html.matches("class=\"history\"").count(),
        10,
        "one chart per planned dish"
    );
    assert_eq!(html.matches("class=\"forecast\"").count(), 10);
    assert!(
        html.contains("id=\"plan\"") && html.contains("오이무침"),
        "{html:.300}"
    );
    assert!(!html.contains("file://"), "not self-contained");
    // --report needs a plan.
    let o = s.forecast(&["--backtest", "--report", report.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let Some(browser) = browser::chromium() else {
        return;
    };
    let png = s.path("shot.png");
    browser::screenshot(
        &browser,
        &report.join("index.html"),
        &png,
        &s.path("profile"),
        (1000, 1600),
    );
    let shot = image::open(&png).unwrap().to_rgb8();
    let count = |rgb: [u8; 3]| browser::pixels_like(&shot, rgb);
    // History dots (blue), interval bars (orange) and forecasts (red) are on screen.
    assert!(count([0x33, 0x7a, 0xb7]) > 1000, "no history drawn");
    assert!(count([0xf0, 0xad, 0x4e]) > 100, "no intervals drawn");
    assert!(count([0xd9, 0x53, 0x4f]) > 100, "no forecasts drawn");
}
