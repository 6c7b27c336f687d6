//! `foodclip forecast` at the scale of a big school: three years of `leftovers` records at 300
//! trays a day and 5 dishes a tray (1.6 million rows of JSON Lines), from the kitchen generator
//! the tests use.
//!
//! `cargo bench --bench forecast [-- DAYS]` prints, for half and all of the history: the file's
//! size, the time `foodclip forecast` takes on a month's menu (reading included) and its peak
//! memory, against the time merely reading the file takes; then, in this process, the time to
//! load, to choose the settings by backtest, and to forecast the month once loaded.

#[path = "../tests/common/kitchen.rs"]
#[allow(dead_code)]
mod kitchen;
#[path = "../tests/common/memory.rs"]
mod memory;

use foodclip::forecast::{history, plan, Dishes, Forecaster};
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let days: i32 = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .map_or(Ok(1095), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let mut k = kitchen::Kitchen::standard();
    // Every day a service day, as the 1.6 million rows assume.
    k.weekday[5] = Some(0.02);
    k.weekday[6] = Some(0.04);
    k.holidays = 0.0;
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, k.labels())?;
    // A month's menu after the history.
    let start = chrono::NaiveDate::from_ymd_opt(2023, 1, 2).expect("a date");
    let mut menu = String::from("date,dish,servings,portion_g\n");
    for d in 0..30 {
        let date = start + chrono::Days::new((days + d) as u64);
        for (i, dish) in ["쌀밥", "미역국", "불고기", "잡채", "깍두기"]
            .iter()
            .enumerate()
        {
            menu += &format!(
                "{},{dish},300,{}\n",
                date.format("%Y-%m-%d"),
                [210, 250, 120, 40, 40][i]
            );
        }
    }
    let plan_file = dir.path().join("month.csv");
    std::fs::write(&plan_file, menu)?;
    let exe = env!("CARGO_BIN_EXE_foodclip");
    println!("| history | rows | file | read the file | forecast (all) | rows/s | peak memory |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for part in [days / 2, days] {
        let served = k.history("2023-01-02", part, 17, true);
        let file = dir.path().join(format!("history-{part}.jsonl"));
        let mut out = BufWriter::new(std::fs::File::create(&file)?);
        k.write_records(&served, &mut out);
        out.flush()?;
        drop(out);
        let rows: usize = served.iter().map(|s| s.per_tray.len()).sum();
        let size = std::fs::metadata(&file)?.len() as f64 / 1e6;
        let read = time(|| {
            let mut buf = vec![0u8; 1 << 20];
            let mut f = std::fs::File::open(&file).expect("written");
            while f.read(&mut buf).expect("readable") > 0 {}
        });
        let run = time(|| {
            let o = Command::new(exe)
                .args(["--quiet", "forecast", "--format", "csv", "--history"])
                .arg(&file)
                .arg("--labels")
                .arg(&labels)
                .arg("--menu")
                .arg(&plan_file)
                .output()
                .expect("foodclip runs");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        });
        println!(
            "| {part} days | {rows} | {size:.0} MB | {read:.2} s | {run:.2} s | {:.0} | {} MiB |",
            rows as f64 / run,
            memory::children_peak_kib() / 1024
        );
        if part == days {
            in_process(&file, &labels, &plan_file)?;
        }
    }
    Ok(())
}

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Load, choose the settings, forecast: each timed in this process.
fn in_process(file: &Path, labels: &Path, plan_file: &Path) -> anyhow::Result<()> {
    let set = foodclip::labels::LabelSet::load(labels)?;
    let mut dishes = Dishes::new(&set);
    let planned = plan::load(plan_file, &mut dishes)?;
    let t = Instant::now();
    let h = history::load(&[file], None, &mut dishes)?;
    let load = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let forecaster = Forecaster::new(&h, &dishes);
    let fit = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let rows = forecaster.forecast(&planned, &dishes, 0.9);
    let forecast = t.elapsed().as_secs_f64();
    println!(
        "\nIn process: load {load:.2} s ({} dish-days), settings by backtest and fit {fit:.3} s, \
         a month's menu ({} dishes) forecast in {:.3} ms.",
        h.observations.len(),
        rows.len(),
        forecast * 1e3
    );
    Ok(())
}
