//! `foodclip search`: rank an index's photos (or regions) by cosine similarity to a query, a
//! weighted sum of text terms (through the label templates and prompt cache) and photos.

use super::context::Context;
use super::flags::SearchArgs;
use super::ui::{default_format, quiet_on_closed_pipe};
use super::Outcome;
use crate::classify::{embed_pictures, Classifier};
use crate::fsutil::path_bytes;
use crate::labels::{LabelClass, LabelSet, Templates};
use crate::output::{Format, Layout, Printer, RecordKind};
use crate::store::{Filter, Row};
use anyhow::{bail, Context as _, Result};
use std::io::{self, Write};
use std::path::PathBuf;

/// A query term: its weight and text.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Term {
    weight: f32,
    text: String,
}

/// `잡채` (weight 1), `+rice` (1), `-soup` (-1), `2:kimchi` (2), `-0.5:rice` (-0.5).
fn parse_term(raw: &str) -> Result<Term> {
    let (sign, rest) = match raw.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, raw.strip_prefix('+').unwrap_or(raw)),
    };
    let (weight, text) = match rest.split_once(':') {
        Some((w, t)) if w.parse::<f32>().is_ok() => (w.parse::<f32>().expect("checked"), t),
        _ => (1.0, rest),
    };
    let text = text.trim();
    if text.is_empty() || !weight.is_finite() {
        bail!("{raw:?} is not a query term: give text, +text, -text or WEIGHT:text");
    }
    Ok(Term {
        weight: sign * weight,
        text: text.to_string(),
    })
}

/// Nanoseconds since the epoch at the start of `YYYY-MM-DD` (UTC), plus `days_after` days.
fn day(date: &str, days_after: i64) -> Result<i64> {
    let bad = || anyhow::anyhow!("{date:?} is not a date: give YYYY-MM-DD");
    let parts: Vec<i64> = date
        .split('-')
        .map(|p| p.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let [y, m, d] = parts[..] else {
        return Err(bad());
    };
    if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468 + days_after;
    // Past 2262 the nanoseconds overflow: such a day is later than any file.
    Ok(days.saturating_mul(86_400 * 1_000_000_000))
}

pub(super) fn run(cx: &Context, args: &SearchArgs) -> Result<Outcome> {
    let terms: Vec<Term> = args
        .terms
        .iter()
        .map(|t| parse_term(t))
        .collect::<Result<_>>()?;
    if terms.is_empty() && args.like.is_empty() {
        bail!("give a query: text terms and/or --like PHOTO");
    }
    let since = args.since.as_deref().map(|d| day(d, 0)).transpose()?;
    let until = args.until.as_deref().map(|d| day(d, 1)).transpose()?;
    let templates = Templates::from_args(&args.templates.templates)?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::store::sqlite::IN_FOLDER));
    let mut index = cx.store(&db, false)?;
    // The image tower only for --like: text queries whose prompts are cached read no tower.
    let ckpt = cx.model(args.like.is_empty())?;
    let kind = cx.index_kind(&ckpt, &args.regions)?;
    // The query: each text term as a class (every template), each photo as the model sees it.
    let dim = ckpt.config.projection_dim;
    let mut query = vec![0f32; dim];
    if !terms.is_empty() {
        let labels = LabelSet {
            path: PathBuf::from("the query"),
            classes: terms
                .iter()
                .enumerate()
                .map(|(i, t)| LabelClass {
                    names: vec![t.text.clone()],
                    line: i + 1,
                    group: None,
                })
                .collect(),
            groups: Vec::new(),
        };
        let classes: Classifier = cx.classifier(&ckpt, &labels, &templates)?;
        let rows = classes.embeddings().to_vec2::<f32>()?;
        for (t, e) in terms.iter().zip(rows) {
            query
                .iter_mut()
                .zip(e)
                .for_each(|(q, v)| *q += t.weight * v);
        }
    }
    for photo in &args.like {
        let picture = ckpt
            .preprocess
            .load(photo, crate::preprocess::DEFAULT_MAX_PIXELS, cx.fidelity)
            .with_context(|| format!("--like {}", photo.display()))?;
        let e = embed_pictures(&ckpt, &[picture])?
            .flatten_all()?
            .to_vec1::<f32>()?;
        query.iter_mut().zip(e).for_each(|(q, v)| *q += v);
    }
    let norm = query.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm == 0.0 {
        bail!("the query's terms cancel out");
    }
    query.iter_mut().for_each(|v| *v /= norm);

    let under = args
        .under
        .as_ref()
        .map(|u| std::fs::canonicalize(u).unwrap_or_else(|_| u.clone()));
    let filter = Filter {
        under: under.as_ref().map(|u| path_bytes(u).into_owned()),
        since,
        until,
        site: cx.site.clone(),
    };
    index.set_candidates(args.candidates);
    let hits = index.top(&kind, &query, &filter, args.top)?;
    if hits.is_empty() {
        if !index.holds(&kind)? {
            bail!(
                "{} holds no embeddings of this model with these settings; index it with the \
                 same --model, --precision, --exact-preprocess and region flags",
                index.describe()
            );
        }
        // Filters that leave nothing: not an error (a day without photos yet), not silent.
        cx.ui.note(&format!(
            "no photo of {} passes --since, --until, --under and this site",
            index.describe()
        ));
    }
    let out = io::stdout().lock();
    if args.paths {
        return print_paths(out, &hits);
    }
    let format = args
        .format
        .unwrap_or_else(|| default_format(None, Format::Table));
    let layout = Layout {
        regions: !kind.source.is_empty(),
        ..Layout::new(format, RecordKind::Hits)
    };
    let mut printer = Printer::new(out, layout);
    let printed = hits.iter().try_for_each(|(score, row)| {
        printer.hit(&row.path, row.region.as_ref(), *score)?;
        printer.flush()
    });
    quiet_on_closed_pipe(
        printed
            .and_then(|()| printer.finish())
            .map_err(anyhow::Error::new),
    )?;
    Ok(Outcome::Success)
}

/// `--paths`: each photo once, best first.
fn print_paths(mut out: impl Write, hits: &[(f32, Row)]) -> Result<Outcome> {
    let mut seen = std::collections::HashSet::new();
    let printed = hits.iter().try_for_each(|(_, row)| {
        let path = &row.path;
        if !seen.insert(path) {
            return Ok(());
        }
        out.write_all(&path_bytes(path))?;
        out.write_all(b"\n")
    });
    quiet_on_closed_pipe(
        printed
            .and_then(|()| out.flush())
            .map_err(anyhow::Error::new),
    )?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_and_days_parse() {
        let t = |s: &str| parse_term(s).unwrap();
        assert_eq!(t("잡채").weight, 1.0);
        assert_eq!(t("+rice").text, "rice");
        assert_eq!(t("-soup").weight, -1.0);
        assert_eq!(
            (t("2:kimchi").weight, t("2:kimchi").text.as_str()),
            (2.0, "kimchi")
        );
        assert_eq!(t("-0.5:rice").weight, -0.5);
        assert_eq!(t("a:b").text, "a:b");
        assert!(parse_term("-").is_err());
        assert_eq!(day("1970-01-01", 0).unwrap(), 0);
        assert_eq!(day("2026-11-30", 0).unwrap(), 1_795_996_800 * 1_000_000_000);
        assert_eq!(
            day("2024-03-01", 0).unwrap() - day("2024-02-28", 0).unwrap(),
            2 * 86_400_000_000_000
        );
        assert!(day("2026-13-01", 0).is_err() && day("yesterday", 0).is_err());
    }
}
