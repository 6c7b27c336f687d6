//! Which photos belong together: a tray's served photo and its returned photo, from two folders
//! or a CSV file, and the day each tray was served.

use crate::inputs::collect_inputs;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One tray: its served and returned photos (a missing one is the tray's error), and its day.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The tray's name: the served photo's path below its folder without the extension, or the
    /// CSV's `tray` field.
    pub tray: String,
    /// The photo taken when the tray was served.
    pub served: Option<PathBuf>,
    /// The photo taken when it came back.
    pub returned: Option<PathBuf>,
    /// `YYYY-MM-DD`, when the CSV gives it.
    pub date: Option<String>,
}

impl Pair {
    /// Both photos, or why the tray has no pair.
    pub fn photos(&self) -> Result<(&Path, &Path), String> {
        match (&self.served, &self.returned) {
            (Some(s), Some(r)) => Ok((s, r)),
            (Some(s), None) => Err(format!("no returned photo for {}", s.display())),
            (None, Some(r)) => Err(format!("no served photo for {}", r.display())),
            (None, None) => Err("no photos".into()),
        }
    }
}

/// The text of `path` below `dir`, without its extension, with `/` between parts.
fn key(dir: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(dir).unwrap_or(path).with_extension("");
    let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
    parts.join("/")
}

/// Pairs the photos of two folders by their path below each folder, ignoring the extension
/// (`served/a/t1.jpg` and `returned/a/t1.png`), or else by file name alone when only one photo
/// of each folder has it. Photos without a partner come out as pairs with one side missing, in
/// the served folder's order, then the returned folder's.
pub fn from_folders(served: &Path, returned: &Path) -> Result<Vec<Pair>> {
    let list = |dir: &Path, side: &str| -> Result<Vec<PathBuf>> {
        if !dir.is_dir() {
            bail!("--{side} {}: not a folder", dir.display());
        }
        let found = collect_inputs(&[dir.to_path_buf()], false, std::io::empty())?
            .complete()?
            .paths;
        if found.is_empty() {
            bail!("--{side} {}: no photos in this folder", dir.display());
        }
        Ok(found)
    };
    let (s, r) = (list(served, "served")?, list(returned, "returned")?);
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut by_name: HashMap<String, Option<usize>> = HashMap::new();
    for (i, p) in r.iter().enumerate() {
        by_key.insert(key(returned, p), i);
        let name = key(p.parent().unwrap_or(p), p);
        by_name
            .entry(name)
            .and_modify(|e| *e = None)
            .or_insert(Some(i));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for p in &s {
        *names.entry(key(p.parent().unwrap_or(p), p)).or_default() += 1;
    }
    let mut used = vec![false; r.len()];
    let mut pairs = Vec::with_capacity(s.len());
    for p in &s {
        let tray = key(served, p);
        let name = key(p.parent().unwrap_or(p), p);
        let unique = names.get(&name) == Some(&1);
        let found = by_key
            .get(&tray)
            .copied()
            .or_else(|| {
                unique
                    .then(|| by_name.get(&name).copied().flatten())
                    .flatten()
            })
            .filter(|&i| !used[i]);
        if let Some(i) = found {
            used[i] = true;
        }
        pairs.push(Pair {
            tray,
            served: Some(p.clone()),
            returned: found.map(|i| r[i].clone()),
            date: None,
        });
    }
    for (p, _) in r.iter().zip(used).filter(|(_, u)| !u) {
        pairs.push(Pair {
            tray: key(returned, p),
            served: None,
            returned: Some(p.clone()),
            date: None,
        });
    }
    Ok(pairs)
}

/// Reads `tray,served,returned[,date]` rows (an optional header naming those columns; paths
/// relative to the file's folder; dates `YYYY-MM-DD`). A malformed row is an error naming the
/// file and line.
pub fn from_csv(file: &Path) -> Result<Vec<Pair>> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new(""));
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_slice());
    let mut pairs = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let at = |msg: String| anyhow::anyhow!("{}: line {}: {msg}", file.display(), i + 1);
        let row = row.map_err(|e| at(format!("unreadable CSV: {e}")))?;
        if i == 0 && row.get(0) == Some("tray") {
            continue;
        }
        if row.iter().all(str::is_empty) {
            continue;
        }
        if !(3..=4).contains(&row.len()) {
            return Err(at(format!(
                "{} fields; a row is tray,served,returned[,date]",
                row.len()
            )));
        }
        let date = row.get(3).filter(|d| !d.is_empty()).map(str::to_string);
        if let Some(d) = &date {
            check_day(d).map_err(at)?;
        }
        let path = |f: &str| (!f.is_empty()).then(|| base.join(f));
        pairs.push(Pair {
            tray: row[0].to_string(),
            served: path(&row[1]),
            returned: path(&row[2]),
            date,
        });
    }
    if pairs.is_empty() {
        bail!("{}: no trays listed", file.display());
    }
    Ok(pairs)
}

/// Refuses a day that is not `YYYY-MM-DD`, with the message to show.
pub fn check_day(day: &str) -> Result<(), String> {
    match chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d") {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("date {day:?} is not YYYY-MM-DD")),
    }
}

/// The day a photo was taken: EXIF `DateTimeOriginal` in `bytes`, else the file's modification
/// time (local), as `YYYY-MM-DD`.
pub fn photo_date(path: &Path, bytes: &[u8]) -> Option<String> {
    let exif = exif::Reader::new()
        .read_from_container(&mut std::io::Cursor::new(bytes))
        .ok();
    let taken = exif.as_ref().and_then(|e| {
        let field = e.get_field(exif::Tag::DateTimeOriginal, exif::In::PRIMARY)?;
        match &field.value {
            exif::Value::Ascii(v) => {
                let text = String::from_utf8_lossy(v.first()?).to_string();
                let day = chrono::NaiveDate::parse_from_str(text.get(..10)?, "%Y:%m:%d").ok()?;
                Some(day.format("%Y-%m-%d").to_string())
            }
            _ => None,
        }
    });
    taken.or_else(|| {
        let modified = std::fs::metadata(path).ok()?.modified().ok()?;
        let local: chrono::DateTime<chrono::Local> = modified.into();
        Some(local.format("%Y-%m-%d").to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_pair_by_path_then_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (s, r) = (dir.path().join("s"), dir.path().join("r"));
        for f in [
            "s/a/t1.jpg",
            "s/t2.jpg",
            "s/t3.jpg",
            "r/a/t1.png",
            "r/x/t2.jpg",
            "r/t4.jpg",
        ] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let pairs = from_folders(&s, &r).unwrap();
        let shown: Vec<_> = pairs
            .iter()
            .map(|p| (p.tray.as_str(), p.served.is_some(), p.returned.clone()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("a/t1", true, Some(r.join("a/t1.png"))),
                ("t2", true, Some(r.join("x/t2.jpg"))),
                ("t3", true, None),
                ("t4", false, Some(r.join("t4.jpg"))),
            ]
        );
        assert!(pairs[2]
            .photos()
            .unwrap_err()
            .starts_with("no returned photo for"));
    }

    #[test]
    fn the_day_from_exif_else_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.jpg");
        image::RgbImage::from_pixel(8, 8, image::Rgb([200, 100, 50]))
            .save(&plain)
            .unwrap();
        let bytes = std::fs::read(&plain).unwrap();
        // An APP1 segment: a little-endian TIFF whose IFD0 points to an Exif IFD holding
        // DateTimeOriginal.
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        let entry = |tag: u16, kind: u16, count: u32, value: u32| {
            let mut e = tag.to_le_bytes().to_vec();
            e.extend(kind.to_le_bytes());
            e.extend(count.to_le_bytes());
            e.extend(value.to_le_bytes());
            e
        };
        tiff.extend(1u16.to_le_bytes());
        tiff.extend(entry(0x8769, 4, 1, 26));
        tiff.extend(0u32.to_le_bytes());
        tiff.extend(1u16.to_le_bytes());
        tiff.extend(entry(0x9003, 2, 20, 44));
        tiff.extend(0u32.to_le_bytes());
        tiff.extend(b"2026:11:30 12:34:56\0");
        let mut app1 = vec![0xff, 0xe1];
        app1.extend(((2 + 6 + tiff.len()) as u16).to_be_bytes());
        app1.extend(b"Exif\0\0");
        app1.extend(tiff);
        let mut with_exif = bytes[..2].to_vec();
        with_exif.extend(app1);
        with_exif.extend(&bytes[2..]);
        let tagged = dir.path().join("tagged.jpg");
        std::fs::write(&tagged, &with_exif).unwrap();
        assert_eq!(
            photo_date(&tagged, &with_exif).as_deref(),
            Some("2026-11-30")
        );
        // Without EXIF: the file's modification day, in local time.
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_768_478_400);
        std::fs::File::options()
            .write(true)
            .open(&plain)
            .unwrap()
            .set_modified(when)
            .unwrap();
        let local: chrono::DateTime<chrono::Local> = when.into();
        let want = local.format("%Y-%m-%d").to_string();
        assert_eq!(photo_date(&plain, &bytes), Some(want));
    }

    #[test]
    fn csv_rows_with_errors_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pairs.csv");
        std::fs::write(
            &f,
            "tray,served,returned,date\nt1,s/1.jpg,r/1.jpg,2026-12-01\nt2,s/2.jpg,r/2.jpg\n",
        )
        .unwrap();
        let pairs = from_csv(&f).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].date.as_deref(), Some("2026-12-01"));
        assert_eq!(pairs[1].served, Some(dir.path().join("s/2.jpg")));
        std::fs::write(&f, "t1,s/1.jpg,r/1.jpg,12/01/2026\n").unwrap();
        let e = from_csv(&f).unwrap_err().to_string();
        assert!(
            e.ends_with("line 1: date \"12/01/2026\" is not YYYY-MM-DD"),
            "{e}"
        );
        std::fs::write(&f, "t1,s/1.jpg\n").unwrap();
        let e = from_csv(&f).unwrap_err().to_string();
        assert!(e.contains("line 1: 2 fields"), "{e}");
    }
}
