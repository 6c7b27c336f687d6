//! The HTML report of `foodclip leftovers --report DIR`: one self-contained `index.html` with the
//! dishes ranked by what comes back (bars), the trend per day (a line per dish, in SVG), and the
//! trays that returned the most, as served/returned pictures with the food masks drawn.

use crate::fsutil::write_atomically;
use crate::leftovers::summary::{DishSummary, Record};
use crate::markup::{base64_image, escape};
use anyhow::Result;
use image::{ImageFormat, RgbImage};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A tray kept for the report: its records and the served/returned picture with masks.
#[derive(Debug, Clone)]
pub struct Tray {
    /// Its records (one per compartment).
    pub records: Vec<Record>,
    /// The two photos side by side, food tinted.
    pub picture: RgbImage,
    /// Its mean leftover over the measured compartments.
    pub mean: f64,
}

/// The `n` trays with the highest mean leftover seen so far: memory stays bounded however many
/// trays a run has.
#[derive(Debug)]
pub struct Worst {
    n: usize,
    trays: Vec<Tray>,
}

impl Worst {
    /// Keeps at most `n` trays.
    pub fn new(n: usize) -> Self {
        Self {
            n,
            trays: Vec::new(),
        }
    }

    /// Offers a tray; kept when it is among the worst `n` so far.
    pub fn offer(&mut self, records: &[Record], picture: RgbImage) {
        let left: Vec<f64> = records.iter().filter_map(|r| r.leftover).collect();
        if left.is_empty() || self.n == 0 {
            return;
        }
        let mean = left.iter().sum::<f64>() / left.len() as f64;
        if self.trays.len() == self.n && self.trays.last().is_some_and(|t| t.mean >= mean) {
            return;
        }
        let picture = image::imageops::thumbnail(
            &picture,
            640,
            640 * picture.height() / picture.width().max(1),
        );
        self.trays.push(Tray {
            records: records.to_vec(),
            picture,
            mean,
        });
        self.trays.sort_by(|a, b| b.mean.total_cmp(&a.mean));
        self.trays.truncate(self.n);
    }

    /// The trays kept, worst first.
    pub fn into_trays(self) -> Vec<Tray> {
        self.trays
    }
}

const STYLE: &str =
    "body{font-family:'NanumGothic','Noto Sans CJK KR',sans-serif;margin:24px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}\
.bar{display:flex;align-items:center;margin:3px 0}.bar .name{width:180px}\
.bar .track{background:#eee;width:420px;height:16px;margin:0 8px}\
.bar .fill{background:#d9534f;height:16px}.tray{margin:12px 0}\
.tray img{max-width:100%;border:1px solid #ccc}table{border-collapse:collapse}\
td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}";

/// Writes `dir/index.html`; returns its path.
pub fn write(
    dir: &Path,
    dishes: &[DishSummary],
    days: &[DishSummary],
    trays: Vec<Tray>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"ko\"><head><meta charset=\"utf-8\"><title>foodclip leftovers</title>\
         <style>{STYLE}</style></head><body><h1>What comes back</h1>"
    );
    let n: usize = dishes.iter().map(|d| d.trays).sum();
    let _ = write!(
        h,
        "<p id=\"headline\">{n} compartments measured, {} dishes.</p>",
        dishes.len()
    );
    let _ = write!(
        h,
        "<h2>Dishes by leftover (mean share returned)</h2><div id=\"dishes\">"
    );
    for d in dishes {
        let grams = d
            .leftover_g
            .map_or(String::new(), |g| format!(", {g:.0} g"));
        let _ = write!(
            h,
            "<div class=\"bar\"><span class=\"name\">{}</span><span class=\"track\"><div class=\"fill\" \
             style=\"width:{:.1}%\"></div></span><span>{:.1}% (median {:.1}%, {} trays{grams})</span></div>",
            escape(&d.dish),
            d.mean_leftover * 100.0,
            d.mean_leftover * 100.0,
            d.median_leftover * 100.0,
            d.trays
        );
    }
    h.push_str("</div>");
    trend(&mut h, days);
    let _ = write!(h, "<h2>Trays that returned the most</h2>");
    for t in &trays {
        let img = base64_image(&t.picture, ImageFormat::Jpeg)?;
        let tray = t.records.first().map_or("", |r| r.tray.as_str());
        let _ = write!(
            h,
            "<div class=\"tray\"><h3>{} — {:.0}% left</h3><img alt=\"served and returned\" src=\"data:image/jpeg;base64,{img}\"><table>\
             <tr><th>compartment</th><th>dish</th><th>served</th><th>returned</th><th>leftover</th></tr>",
            escape(tray),
            t.mean * 100.0
        );
        for r in &t.records {
            let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(r.compartment.as_deref().unwrap_or("")),
                escape(r.dish.as_deref().unwrap_or("")),
                pct(r.served_coverage),
                pct(r.returned_coverage),
                pct(r.leftover)
            );
        }
        h.push_str("</table></div>");
    }
    h.push_str("</body></html>\n");
    let file = dir.join("index.html");
    write_atomically(&file, h.as_bytes())?;
    Ok(file)
}

/// The mean leftover per day of each dish, as an SVG line chart (nothing without dates).
fn trend(h: &mut String, days: &[DishSummary]) {
    let dates: Vec<&str> = {
        let mut d: Vec<&str> = days.iter().filter_map(|d| d.date.as_deref()).collect();
        d.sort();
        d.dedup();
        d
    };
    if dates.is_empty() {
        return;
    }
    let (w, ht, pad) = (640.0, 240.0, 36.0);
    let x = |i: usize| {
        pad + (w - 2.0 * pad)
            * if dates.len() == 1 {
                0.5
            } else {
                i as f64 / (dates.len() - 1) as f64
            }
    };
    let y = |v: f64| ht - pad - (ht - 2.0 * pad) * v;
    let _ = write!(h, "<h2>Trend per day</h2><svg id=\"trend\" width=\"{w}\" height=\"{ht}\" xmlns=\"http://www.w3.org/2000/svg\">");
    let _ = write!(
        h,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
        y(0.0),
        w - pad,
        y(0.0)
    );
    for v in [0.0, 0.5, 1.0] {
        let _ = write!(
            h,
            "<text x=\"2\" y=\"{}\" font-size=\"11\">{:.0}%</text>",
            y(v) + 4.0,
            v * 100.0
        );
    }
    for (i, d) in dates.iter().enumerate() {
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x(i),
            ht - 8.0,
            escape(&d[5..])
        );
    }
    let mut by_dish: BTreeMap<&str, Vec<(usize, f64)>> = BTreeMap::new();
    for d in days {
        if let Some(i) = d
            .date
            .as_deref()
            .and_then(|date| dates.iter().position(|x| *x == date))
        {
            by_dish
                .entry(&d.dish)
                .or_default()
                .push((i, d.mean_leftover));
        }
    }
    const COLOURS: [&str; 8] = [
        "#d9534f", "#337ab7", "#5cb85c", "#f0ad4e", "#8e44ad", "#16a085", "#7f8c8d", "#c0392b",
    ];
    for (k, (dish, pts)) in by_dish.iter().enumerate() {
        let c = COLOURS[k % COLOURS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(i, v)| format!("{:.1},{:.1}", x(*i), y(*v)))
            .collect();
        let _ = write!(h, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>", path.join(" "), escape(dish));
        for (i, v) in pts {
            let _ = write!(
                h,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                x(*i),
                y(*v)
            );
        }
    }
    h.push_str("</svg>");
}
