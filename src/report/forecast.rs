//! The HTML report of `foodclip forecast --report DIR`: one self-contained `index.html` with
//! the plan's forecasts as a table and, for each planned dish, its recent history with the
//! forecasts and their 80% intervals drawn after it (SVG).

use crate::forecast::history::History;
use crate::forecast::{Day, Dishes, Forecast};
use crate::fsutil::write_atomically;
use crate::markup::escape;
use anyhow::Result;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Days of history drawn before the first planned day.
const WINDOW: i32 = 120;

/// What the report shows.
pub struct View<'a> {
    /// The forecasts, in the plan's order.
    pub forecasts: &'a [Forecast],
    /// The history they came from.
    pub history: &'a History,
    /// Its dishes.
    pub dishes: &'a Dishes,
    /// A line on how the forecaster was set up.
    pub note: &'a str,
}

const STYLE: &str =
    "body{font-family:'NanumGothic','Noto Sans CJK KR',sans-serif;margin:24px;color:#222}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}table{border-collapse:collapse}\
td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}td.n{text-align:right}\
.dish{display:inline-block;margin:8px 16px 8px 0;vertical-align:top}";

/// Writes `dir/index.html`; returns its path.
pub fn write(dir: &Path, view: &View) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"ko\"><head><meta charset=\"utf-8\"><title>foodclip forecast</title>\
         <style>{STYLE}</style></head><body><h1>What will come back</h1><p id=\"note\">{}</p>",
        escape(view.note)
    );
    h.push_str(
        "<h2>The plan</h2><table id=\"plan\"><tr><th>date</th><th>dish</th><th>group</th>\
         <th>leftover</th><th>80% interval</th><th>from</th><th>cook</th><th>saved</th></tr>",
    );
    for f in view.forecasts {
        let kg = |g: Option<f64>| g.map_or("-".to_string(), |g| format!("{:.1} kg", g / 1000.0));
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{:.1}%</td><td class=\"n\">{:.1}–{:.1}%</td>\
             <td>{}, {} days</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&f.date),
            escape(&f.dish),
            escape(f.group.as_deref().unwrap_or("")),
            f.leftover * 100.0,
            f.low * 100.0,
            f.high * 100.0,
            f.basis.name(),
            f.history_days,
            kg(f.cook_g),
            kg(f.saved_g),
        );
    }
    h.push_str("</table><h2>Each dish: its history and the forecast</h2><div id=\"dishes\">");
    let mut drawn: Vec<&str> = Vec::new();
    for f in view.forecasts {
        if drawn.contains(&f.dish.as_str()) {
            continue;
        }
        drawn.push(&f.dish);
        chart(&mut h, view, &f.dish);
    }
    h.push_str("</div></body></html>\n");
    let file = dir.join("index.html");
    write_atomically(&file, h.as_bytes())?;
    Ok(file)
}

/// One dish's chart: its days in the window before the plan (blue dots) and its forecasts
/// (red dots on orange interval bars).
fn chart(h: &mut String, view: &View, dish: &str) {
    let planned: Vec<(Day, &Forecast)> = view
        .forecasts
        .iter()
        .filter(|f| f.dish == dish)
        .filter_map(|f| Some((Day::parse(&f.date).ok()?, f)))
        .collect();
    let Some(first) = planned.iter().map(|p| p.0).min() else {
        return;
    };
    let last = planned.iter().map(|p| p.0).max().unwrap_or(first);
    let from = first.plus(-WINDOW);
    let id = view.dishes.list.iter().position(|d| d.name == dish);
    let past: Vec<(Day, f64)> = view
        .history
        .observations
        .iter()
        .filter(|o| Some(o.dish) == id && o.day >= from && o.day < first)
        .map(|o| (o.day, o.share))
        .collect();
    let (w, ht, pad) = (420.0, 200.0, 32.0);
    // Room after the last planned day, so that its interval is not on the edge.
    let span = f64::from(last.0 + 10 - from.0);
    let x = |d: Day| pad + (w - 2.0 * pad) * f64::from(d.0 - from.0) / span;
    let y = |v: f64| ht - pad - (ht - 2.0 * pad) * v;
    let _ = write!(
        h,
        "<div class=\"dish\"><h3>{}</h3><svg class=\"history\" width=\"{w}\" height=\"{ht}\" \
         xmlns=\"http://www.w3.org/2000/svg\"><line x1=\"{pad}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#999\"/>",
        escape(dish),
        y0 = y(0.0),
        x1 = w - pad,
    );
    for v in [0.0, 0.5, 1.0] {
        let _ = write!(
            h,
            "<text x=\"2\" y=\"{:.1}\" font-size=\"11\">{:.0}%</text>",
            y(v) + 4.0,
            v * 100.0
        );
    }
    let _ = write!(
        h,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">{from}</text><text x=\"{:.1}\" y=\"{}\" font-size=\"10\" \
         text-anchor=\"middle\">{last}</text>",
        ht - 8.0,
        x(last),
        ht - 8.0
    );
    for (d, v) in &past {
        let _ = write!(
            h,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#337ab7\"/>",
            x(*d),
            y(*v)
        );
    }
    for (d, f) in &planned {
        let _ = write!(
            h,
            "<rect class=\"interval\" x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"{:.1}\" fill=\"#f0ad4e\"><title>{}: {:.1}–{:.1}%</title></rect>\
             <circle class=\"forecast\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#d9534f\"/>",
            x(*d) - 6.0,
            y(f.high),
            (y(f.low) - y(f.high)).max(1.0),
            escape(&f.date),
            f.low * 100.0,
            f.high * 100.0,
            x(*d),
            y(f.leftover)
        );
    }
    let _ = write!(
        h,
        "</svg><div>{} days shown, {} planned</div></div>",
        past.len(),
        planned.len()
    );
}
