//! `foodclip leftovers` on synthetic trays with exact truth (`tests/fixtures/leftovers`, made by
//! its `generate.py`): registration, leftover ratios with and without an empty-tray photo, the
//! summary, the menu, bad inputs, and the report in a browser.

mod common;

use common::browser::{self, chromium, screenshot};
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Mutex, OnceLock};

fn set(name: &str) -> PathBuf {
    fixtures().join("leftovers").join(name)
}

fn layout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/trays/school-5.toml")
}

/// `foodclip leftovers` on the tiny model with the fixture labels and the school layout.
fn leftovers(args: &[&std::ffi::OsStr]) -> Output {
    foodclip()
        .arg("--model")
        .arg(fixtures().join("tiny-openai"))
        .arg("leftovers")
        .arg("--labels")
        .arg(fixtures().join("labels/mixed.txt"))
        .arg("--layout")
        .arg(layout())
        .args(args)
        .output()
        .unwrap()
}

/// A run's records, summary file and stderr.
type Run = (Vec<Value>, Value, String);

/// A set's run (`--pairs`, `--truth`, `--summary`), with or without its empty tray: records
/// the summary file and stderr. Each is run once for all the tests that read it.
fn run(name: &str, empty: bool) -> &'static Run {
    static RUNS: OnceLock<Mutex<HashMap<(String, bool), &'static Run>>> = OnceLock::new();
    let runs = RUNS.get_or_init(Default::default);
    let mut runs = runs.lock().unwrap();
    runs.entry((name.to_string(), empty)).or_insert_with(|| {
        let dir = tempfile::tempdir().unwrap();
        let summary = dir.path().join("summary.json");
        let dir_ = set(name);
        let empty_photo = std::fs::read_dir(&dir_)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_stem().is_some_and(|s| s == "empty"))
            .unwrap();
        let mut args: Vec<std::ffi::OsString> = vec![
            "--pairs".into(),
            dir_.join("pairs.csv").into(),
            "--truth".into(),
            dir_.join("truth.csv").into(),
            "--summary".into(),
            summary.clone().into(),
            "--format".into(),
            "jsonl".into(),
        ];
        if empty {
            args.extend(["--empty-tray".into(), empty_photo.into()]);
        }
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let o = leftovers(&refs);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let records = jsonl_records(&o.stdout);
        let summary: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        Box::leak(Box::new((records, summary, stderr)))
    })
}

/// `(tray, compartment) -> truth row` of a set.
fn truth(name: &str) -> HashMap<(String, String), HashMap<String, String>> {
    let mut r = csv::Reader::from_path(set(name).join("truth.csv")).unwrap();
    r.deserialize::<HashMap<String, String>>()
        .map(|row| {
            let row = row.unwrap();
            ((row["tray"].clone(), row["compartment"].clone()), row)
        })
        .collect()
}

/// Each measured ratio with its true one; and the compartments where nothing was served.
fn compared(name: &str, empty: bool) -> (Vec<(String, f64, f64)>, usize) {
    let t = truth(name);
    let (records, ..) = run(name, empty);
    let mut pairs = Vec::new();
    let mut nothing = 0;
    for r in records {
        let key = (
            r["tray"].as_str().unwrap().to_string(),
            r["compartment"].as_str().unwrap().to_string(),
        );
        let truth = &t[&key]["leftover"];
        if truth.is_empty() {
            assert!(r.get("leftover").is_none(), "nothing served, yet {r}");
            nothing += 1;
            continue;
        }
        let measured = r["leftover"].as_f64().unwrap_or_else(|| panic!("{r}"));
        pairs.push((format!("{key:?}"), measured, truth.parse().unwrap()));
    }
    (pairs, nothing)
}

#[test]
fn registration_recovers_each_trays_shift_and_rotation() {
    let mut r = csv::Reader::from_path(set("perturbed").join("transforms.csv")).unwrap();
    let known: HashMap<String, (f64, f64, f64)> = r
        .records()
        .map(|row| {
            let row = row.unwrap();
            let v = |i: usize| row[i].parse::<f64>().unwrap();
            (row[0].to_string(), (v(1), v(2), v(3)))
        })
        .collect();
    let (records, ..) = run("perturbed", false);
    for rec in records {
        let (dx, dy, angle) = known[rec["tray"].as_str().unwrap()];
        let reg = &rec["registration"];
        let got = |k: &str| reg[k].as_f64().unwrap();
        // Frames are 640 px wide, measured at 512: a pixel is well within reach.
        assert!(
            (got("dx") - dx).abs() < 1.0
                && (got("dy") - dy).abs() < 1.0
                && (got("angle") - angle).abs() < 0.15,
            "{reg} for ({dx}, {dy}, {angle})"
        );
        assert!(got("score") > 0.5, "{reg}");
    }
}

#[test]
fn clean_trays_within_two_points() {
    // With the empty tray every ratio is within 0.02 of the truth.
    let (pairs, nothing) = compared("clean", true);
    assert_eq!((pairs.len(), nothing), (19, 1));
    for (key, m, t) in &pairs {
        assert!((m - t).abs() <= 0.02, "{key}: measured {m}, true {t}");
    }
    // From the photos alone, a pale dish on a pale compartment (the generator's ihc texture)
    // loses some of its pixels; the ratio holds within 0.05 and on average within 0.01.
    let (pairs, nothing) = compared("clean", false);
    assert_eq!((pairs.len(), nothing), (19, 1));
    let mae = pairs.iter().map(|(_, m, t)| (m - t).abs()).sum::<f64>() / pairs.len() as f64;
    assert!(mae <= 0.01, "MAE {mae}");
    for (key, m, t) in &pairs {
        assert!((m - t).abs() <= 0.05, "{key}: measured {m}, true {t}");
    }
}

#[test]
fn perturbed_trays_reach_the_accuracy_target_with_and_without_the_empty_tray() {
    for empty in [false, true] {
        let (pairs, nothing) = compared("perturbed", empty);
        assert_eq!((pairs.len(), nothing), (59, 1));
        let mae = pairs.iter().map(|(_, m, t)| (m - t).abs()).sum::<f64>() / 59.0;
        assert!(mae <= 0.05, "empty tray {empty}: MAE {mae}");
        // The summary's accuracy is the same comparison.
        let (_, summary, _) = run("perturbed", empty);
        let overall = &summary["accuracy"]["overall"];
        assert_eq!(overall["n"], 59);
        assert!(
            (overall["mae"].as_f64().unwrap() - mae).abs() < 1e-3,
            "{overall}"
        );
        assert!(overall["pearson_r"].as_f64().unwrap() > 0.95, "{overall}");
    }
}

#[test]
fn the_summary_counts_every_measured_compartment_per_dish_and_day() {
    let (records, summary, stderr) = run("perturbed", false);
    let measured: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("leftover").is_some())
        .collect();
    // The closing line counts compartments served empty (no ratio) apart from those measured.
    let empty = records
        .iter()
        .filter(|r| r.get("leftover").is_none() && r.get("error").is_none())
        .count();
    assert!(empty > 0, "the set has a compartment served empty");
    let counts = format!(
        "{} compartments measured, {empty} served empty",
        measured.len()
    );
    assert!(stderr.contains(&counts), "{stderr}");
    let dishes = summary["dishes"].as_array().unwrap();
    let trays: u64 = dishes.iter().map(|d| d["trays"].as_u64().unwrap()).sum();
    assert_eq!(trays as usize, measured.len());
    let days = summary["days"].as_array().unwrap();
    let per_day: u64 = days.iter().map(|d| d["trays"].as_u64().unwrap()).sum();
    assert_eq!(per_day, trays);
    // The pairs file gives five days.
    let mut dates: Vec<&str> = days.iter().map(|d| d["date"].as_str().unwrap()).collect();
    dates.dedup();
    assert_eq!(dates.len(), 5);
    // The mean of each dish is the mean of its records.
    for d in dishes {
        let mine: Vec<f64> = measured
            .iter()
            .filter(|r| r["dish"] == d["dish"])
            .map(|r| r["leftover"].as_f64().unwrap())
            .collect();
        let mean = mine.iter().sum::<f64>() / mine.len() as f64;
        assert!(
            (d["mean_leftover"].as_f64().unwrap() - mean).abs() < 1e-3,
            "{d}"
        );
    }
}

/// Copies a few trays of the clean set into `dir/served` and `dir/returned`.
fn folders(dir: &Path, trays: &[&str]) {
    for side in ["served", "returned"] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
        for t in trays {
            let f = format!("{t}.png");
            std::fs::copy(set("clean").join(side).join(&f), dir.join(side).join(&f)).unwrap();
        }
    }
}

/// `leftovers` on the folders `d/served` and `d/returned` with `menu` (records as JSON Lines).
fn with_menu(d: &Path, menu: &Path) -> Output {
    leftovers(&[
        "--served".as_ref(),
        d.join("served").as_os_str(),
        "--returned".as_ref(),
        d.join("returned").as_os_str(),
        "--menu".as_ref(),
        menu.as_os_str(),
        "-f".as_ref(),
        "jsonl".as_ref(),
    ])
}

#[test]
fn bad_inputs_are_reported_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    folders(d, &["tray01", "tray02"]);
    // A tray without its returned photo, and a returned photo that is not an image.
    std::fs::copy(set("clean/served/tray04.png"), d.join("served/tray04.png")).unwrap();
    std::fs::write(d.join("served/tray05.png"), b"not a photo").unwrap();
    std::fs::copy(
        set("clean/served/tray04.png"),
        d.join("returned/tray05.png"),
    )
    .unwrap();
    // A menu dish that names no class of the labels.
    let menu = d.join("menu.toml");
    std::fs::write(
        &menu,
        "[[compartment]]\nname = \"rice\"\ndish = \"잡곡밥\"\nportion_g = 200\n",
    )
    .unwrap();
    let o = with_menu(d, &menu);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let records = jsonl_records(&o.stdout);
    // Two full trays of five compartments, then one error record for each broken tray.
    assert_eq!(records.len(), 12, "{records:?}");
    let tray4 = records.iter().find(|r| r["tray"] == "tray04").unwrap();
    assert!(
        tray4["error"]
            .as_str()
            .unwrap()
            .starts_with("no returned photo for"),
        "{tray4}"
    );
    let tray5 = records.iter().find(|r| r["tray"] == "tray05").unwrap();
    assert!(
        tray5["error"].as_str().unwrap().contains("tray05.png"),
        "{tray5}"
    );
    assert!(
        stderr.contains("menu.toml:1: \"잡곡밥\" names no class"),
        "{stderr}"
    );
    let rice = records
        .iter()
        .find(|r| r["tray"] == "tray01" && r["compartment"] == "rice")
        .unwrap();
    assert_eq!(rice["dish"], "잡곡밥");
    let g = rice["leftover_g"].as_f64().unwrap();
    assert!(
        (g - 200.0 * rice["leftover"].as_f64().unwrap()).abs() < 0.1,
        "{rice}"
    );
    // Every error is one line of its own on stderr.
    for line in stderr
        .lines()
        .filter(|l| !l.contains("warning") && !l.contains("done"))
    {
        assert!(line.starts_with("foodclip: "), "{line}");
    }

    // A compartment off the photo is that compartment's error.
    let boxes = d.join("boxes.csv");
    std::fs::write(
        &boxes,
        "served/tray01.png,0,0,200,150\nserved/tray01.png,900,900,1000,1000\n",
    )
    .unwrap();
    let o = foodclip()
        .arg("--model")
        .arg(fixtures().join("tiny-openai"))
        .args(["leftovers", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg("--regions")
        .arg(&boxes)
        .arg("--served")
        .arg(d.join("served"))
        .arg("--returned")
        .arg(d.join("returned"))
        .args(["-f", "csv"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8(o.stdout).unwrap();
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    let tray1: Vec<csv::StringRecord> = rows
        .records()
        .map(Result::unwrap)
        .filter(|r| &r[0] == "tray01")
        .collect();
    assert_eq!(tray1.len(), 2, "{text}");
    assert!(
        tray1[0][23].is_empty() && !tray1[0][16].is_empty(),
        "{text}"
    );
    assert!(tray1[1][23].starts_with("empty box"), "{text}");
}

#[test]
fn a_menu_names_the_dishes_and_a_disagreeing_classifier_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    folders(d, &["tray01"]);
    let menu = d.join("menu.toml");
    std::fs::write(
        &menu,
        "[[compartment]]\nname = \"soup\"\ndish = \"kimchi stew\"\nportion_g = 300\n\n\
         [[compartment]]\nname = \"soup\"\ndish = \"fried chicken\"\ndate = \"1999-01-01\"\n",
    )
    .unwrap();
    let o = with_menu(d, &menu);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records = jsonl_records(&o.stdout);
    let soup = records.iter().find(|r| r["compartment"] == "soup").unwrap();
    // Named by a synonym, shown by its display name; the dated entry is for another day.
    assert_eq!(soup["dish"], "김치찌개", "{soup}");
    assert_eq!(soup["portion_g"], 300.0);
    // The random-weight model calls every compartment the same class: not 김치찌개.
    let side = records.iter().find(|r| r["compartment"] == "rice").unwrap();
    assert_ne!(side["dish"], "김치찌개");
    assert_eq!(soup["classified_as"], side["dish"], "{soup}");
    assert!(soup["prob"].as_f64().unwrap() > 0.0);
    // The photo's date comes from its file (no EXIF in these PNGs): a day.
    assert_eq!(soup["date"].as_str().unwrap().len(), 10);

    // A menu naming a compartment the layout lacks is a configuration error.
    std::fs::write(
        &menu,
        "[[compartment]]\nname = \"dessert\"\ndish = \"떡볶이\"\n",
    )
    .unwrap();
    let o = with_menu(d, &menu);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("menu.toml:1: compartment \"dessert\" is not in the layout"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn csv_table_and_summary_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    folders(d, &["tray01", "tray02"]);
    let summary = d.join("summary.csv");
    let base: [std::ffi::OsString; 6] = [
        "--served".into(),
        d.join("served").into(),
        "--returned".into(),
        d.join("returned").into(),
        "--summary".into(),
        summary.clone().into(),
    ];
    let mut args: Vec<&std::ffi::OsStr> = base.iter().map(|a| a.as_os_str()).collect();
    // Dishes named in Hangul and in ASCII, for the columns below.
    let menu = d.join("menu.toml");
    std::fs::write(
        &menu,
        "[[compartment]]\nname = \"soup\"\ndish = \"김치찌개\"\n\n\
         [[compartment]]\nname = \"rice\"\ndish = \"fried chicken\"\n",
    )
    .unwrap();
    args.extend([
        std::ffi::OsStr::new("--format"),
        std::ffi::OsStr::new("table"),
        std::ffi::OsStr::new("--menu"),
        menu.as_os_str(),
    ]);
    let o = leftovers(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(
        table.contains("tray01 [side-left]") && table.contains("per dish"),
        "{table}"
    );
    // Columns line up as a terminal shows them: a Hangul syllable takes two columns.
    for column in ["  served ", " trays "] {
        let at = |l: &str| unicode_width::UnicodeWidthStr::width(&l[..l.find(column).unwrap()]);
        let lines: Vec<&str> = table.lines().filter(|l| l.contains(column)).collect();
        assert!(lines.iter().any(|l| !l.is_ascii()), "{table}");
        assert!(lines.iter().any(|l| l.contains("fried chicken")), "{table}");
        assert!(lines.iter().all(|l| at(l) == at(lines[0])), "{table}");
    }
    let text = std::fs::read_to_string(&summary).unwrap();
    assert!(
        text.starts_with("scope,date,dish,trays,mean_leftover"),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("dish,,")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("day,2")), "{text}");

    args.truncate(6);
    args.extend([
        std::ffi::OsStr::new("--format"),
        std::ffi::OsStr::new("tsv"),
    ]);
    let o = leftovers(&args);
    let tsv = String::from_utf8(o.stdout).unwrap();
    assert_eq!(tsv.lines().count(), 11, "{tsv}");
    assert_eq!(tsv.lines().next().unwrap().split('\t').count(), 24);
}

#[test]
fn the_report_shows_dishes_trend_and_trays_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let o = leftovers(&[
        "--pairs".as_ref(),
        set("clean").join("pairs.csv").as_os_str(),
        "--report".as_ref(),
        report.as_os_str(),
        "-f".as_ref(),
        "jsonl".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(
        html.contains("id=\"trend\"") && html.matches("<img").count() == 4,
        "{html:.300}"
    );
    assert!(!html.contains("file://"), "not self-contained");
    let Some(browser) = chromium() else {
        return;
    };
    let png = dir.path().join("shot.png");
    screenshot(
        &browser,
        &report.join("index.html"),
        &png,
        &dir.path().join("profile"),
        (1000, 1400),
    );
    let shot = image::open(&png).unwrap().to_rgb8();
    let count = |rgb: [u8; 3]| browser::pixels_like(&shot, rgb);
    // The bars (#d9534f) are drawn, and so are the trays' pictures (their tinted food).
    assert!(count([0xd9, 0x53, 0x4f]) > 500, "no bars on screen");
    let coloured = shot
        .pixels()
        .filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 60)
        .count();
    assert!(coloured > 20_000, "no pictures on screen ({coloured})");
}

#[test]
fn records_stored_with_db_are_a_forecasts_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("kitchen.sqlite");
    let pairs = set("clean").join("pairs.csv");
    let args = [
        "--pairs".as_ref(),
        pairs.as_os_str(),
        "--db".as_ref(),
        store.as_os_str(),
        "--format".as_ref(),
        "jsonl".as_ref(),
    ];
    let o = leftovers(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records = jsonl_records(&o.stdout);
    // Measuring the same trays again replaces their rows: nothing twice.
    let o = leftovers(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let db = rusqlite::Connection::open(&store).unwrap();
    let (rows, measured): (i64, i64) = db
        .query_row("SELECT COUNT(*), COUNT(leftover) FROM leftovers", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(rows as usize, records.len());
    let with_leftover = records.iter().filter(|r| r["leftover"].is_f64()).count();
    assert_eq!(measured as usize, with_leftover);
    drop(db);
    // The store and the same records as a file forecast alike.
    let file = dir.path().join("records.jsonl");
    std::fs::write(&file, &o.stdout).unwrap();
    let dish = records.iter().find_map(|r| r["dish"].as_str()).unwrap();
    let plan = dir.path().join("plan.csv");
    std::fs::write(&plan, format!("2026-12-07,{dish},300,100\n")).unwrap();
    let forecast = |flag: &str, history: &Path| {
        let o = foodclip()
            .args(["forecast", "--format", "jsonl", flag])
            .arg(history)
            .arg("--labels")
            .arg(fixtures().join("labels/mixed.txt"))
            .arg("--menu")
            .arg(&plan)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            jsonl_records(&o.stdout),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (from_store, note) = forecast("--db", &store);
    let (from_file, _) = forecast("--history", &file);
    assert_eq!(from_store, from_file);
    assert_eq!(forecast("--history", &store).0, from_file);
    assert_eq!(from_store[0]["basis"], "dish", "{from_store:?}");
    assert!(
        note.contains(&format!("history: {} rows", records.len())),
        "{note}"
    );
}
