//! Reading region sources: COCO JSON, CSV/TSV rows, a folder of YOLO files, a TOML tray layout.
//! A file that cannot be parsed is an error naming the file and line (or JSON path); a box that
//! cannot be read is only its region's error ([`Spec::Invalid`]).

use super::{normalise, Entry, Kind, Listing, Matching, Region, Regions, Spec};
use crate::fsutil::path_from_bytes;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Reads a region file or YOLO folder, by its kind.
pub(super) fn read(path: &Path) -> Result<Regions> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let (kind, categories) = if path.is_dir() {
        (yolo(path)?, None)
    } else {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read region file {}", path.display()))?;
        let at = |e: anyhow::Error| anyhow!("{}{e:#}", path.display());
        match ext.as_deref() {
            Some("json") => {
                let (kind, categories) = coco(&bytes, base(path)).map_err(at)?;
                (kind, Some(categories))
            }
            Some(sep @ ("csv" | "tsv")) => {
                let sep = if sep == "tsv" { b'\t' } else { b',' };
                (table(&bytes, sep, base(path)).map_err(at)?, None)
            }
            _ => bail!(
                "{}: a region file is COCO JSON (.json), CSV or TSV rows (.csv, .tsv), or a \
                 folder of YOLO .txt files",
                path.display()
            ),
        }
    };
    Ok(Regions {
        file: Some(path.to_path_buf()),
        categories,
        kind,
    })
}

/// The folder that a file's relative paths are relative to.
fn base(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// A `[x1, y1, x2, y2]` box from four fields, or the region's error.
fn spec(fields: [&[u8]; 4], names: [&str; 4]) -> Spec {
    let mut b = [0f64; 4];
    for ((v, f), name) in b.iter_mut().zip(fields).zip(names) {
        let text = String::from_utf8_lossy(f);
        match text.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => *v = x,
            _ => return Spec::Invalid(format!("invalid box: {name} is {text:?}, not a number")),
        }
    }
    Spec::Pixels(b)
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    #[serde(default)]
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    #[serde(default)]
    id: Option<u64>,
    image_id: u64,
    bbox: Value,
    #[serde(default)]
    category_id: Option<u64>,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// COCO JSON: `images`, `annotations` with `bbox: [x, y, w, h]`, optional `categories`.
/// Errors start with `: ` or `:LINE: ` (the caller puts the file name first).
fn coco(bytes: &[u8], base: &Path) -> Result<(Kind, Vec<(u64, String)>)> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let file: CocoFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        anyhow!(
            ":{}: not COCO JSON: {inner} (at {path})",
            inner.line().max(1)
        )
    })?;
    let categories: HashMap<u64, &str> = file
        .categories
        .iter()
        .map(|c| (c.id, c.name.as_str()))
        .collect();
    let mut listing = Listing::default();
    let mut images = HashMap::new();
    for img in &file.images {
        let written = base.join(&img.file_name);
        let key = normalise(&written);
        if images
            .insert(img.id, (key.clone(), written.clone()))
            .is_some()
        {
            bail!(": images: the id {} is given twice", img.id);
        }
        listing.add(key, &written, None);
    }
    for (i, a) in file.annotations.iter().enumerate() {
        let (key, written) = images.get(&a.image_id).ok_or_else(|| {
            anyhow!(
                ": annotations[{i}].image_id: {} is the id of no image",
                a.image_id
            )
        })?;
        let label = match a.category_id {
            Some(c) => Some(
                categories
                    .get(&c)
                    .ok_or_else(|| {
                        anyhow!(": annotations[{i}].category_id: {c} is the id of no category")
                    })?
                    .to_string(),
            ),
            None => None,
        };
        let bbox = match a.bbox.as_array().map(|v| v.as_slice()) {
            Some([x, y, w, h]) => match [x, y, w, h].map(Value::as_f64) {
                [Some(x), Some(y), Some(w), Some(h)] => Spec::Pixels([x, y, x + w, y + h]),
                _ => Spec::Invalid(format!("invalid box: bbox {} is not 4 numbers", a.bbox)),
            },
            _ => Spec::Invalid(format!(
                "invalid box: bbox {} is not [x, y, width, height]",
                a.bbox
            )),
        };
        let region = Region {
            id: a.id,
            label,
            image_id: Some(a.image_id),
            ..Region::default()
        };
        listing.add(key.clone(), written, Some(Entry { region, spec: bbox }));
    }
    // Photos listed without annotations keep their image id.
    let categories = file
        .categories
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect();
    Ok((Kind::Listed(listing, Matching::PathOrName), categories))
}

/// CSV/TSV rows `path,x1,y1,x2,y2[,label]`, with an optional header; paths relative to `base`.
fn table(bytes: &[u8], sep: u8, base: &Path) -> Result<Kind> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(sep)
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes));
    let mut listing = Listing::default();
    for (i, row) in reader.byte_records().enumerate() {
        let row = row.map_err(|e| {
            let at = e.position().map_or(i + 1, |p| p.line() as usize);
            anyhow!(":{at}: {e}")
        })?;
        let line = row.position().map_or(i + 1, |p| p.line() as usize);
        if row.iter().all(<[u8]>::is_empty) {
            continue;
        }
        if !(5..=6).contains(&row.len()) {
            bail!(
                ":{line}: expected path{0}x1{0}y1{0}x2{0}y2[{0}label]; found {1} field(s)",
                (sep as char).escape_default(),
                row.len()
            );
        }
        if i == 0 && row[1].eq_ignore_ascii_case(b"x1") {
            continue;
        }
        let label = match row.get(5) {
            Some(l) => Some(
                std::str::from_utf8(l)
                    .map_err(|_| anyhow!(":{line}: the label is not UTF-8"))?
                    .to_string(),
            ),
            None => None,
        };
        let spec = spec(
            [&row[1], &row[2], &row[3], &row[4]],
            ["x1", "y1", "x2", "y2"],
        );
        let written = base.join(path_from_bytes(row[0].to_vec()));
        let region = Region {
            label,
            ..Region::default()
        };
        listing.add(normalise(&written), &written, Some(Entry { region, spec }));
    }
    Ok(Kind::Listed(listing, Matching::Path))
}

/// A folder of YOLO `.txt` files named after the photos, lines `class cx cy w h [confidence]`
/// normalised to the photo's size; class names from `classes.txt` when the folder has one.
fn yolo(dir: &Path) -> Result<Kind> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let names_file = dir.join("classes.txt");
    let names: Vec<String> = if names_file.is_file() {
        read(&names_file)?
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    } else {
        Vec::new()
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the YOLO folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "txt")
                && *p != names_file
                && !crate::inputs::is_hidden(p)
        })
        .collect();
    files.sort();
    let mut listing = Listing::default();
    for file in files {
        let stem = PathBuf::from(file.file_stem().expect("a .txt file has a stem"));
        listing.add(stem.clone(), &stem, None);
        for (i, line) in read(&file)?.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            if !(5..=6).contains(&fields.len()) {
                bail!(
                    "{}:{}: expected `class cx cy w h [confidence]` (YOLO boxes); found {} \
                     field(s)",
                    file.display(),
                    i + 1,
                    fields.len()
                );
            }
            let class: usize = fields[0].parse().map_err(|_| {
                anyhow!(
                    "{}:{}: the class {:?} is not a whole number",
                    file.display(),
                    i + 1,
                    fields[0]
                )
            })?;
            let b = fields[1..5].iter().map(|v| v.parse::<f64>());
            let spec = match b.collect::<std::result::Result<Vec<f64>, _>>().as_deref() {
                Ok(&[cx, cy, w, h]) => {
                    Spec::Fractions([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0])
                }
                _ => Spec::Invalid(format!(
                    "invalid box: {:?} are not four numbers",
                    fields[1..5].join(" ")
                )),
            };
            let region = Region {
                name: names.get(class).cloned(),
                ..Region::default()
            };
            listing.add(stem.clone(), &stem, Some(Entry { region, spec }));
        }
    }
    Ok(Kind::Listed(listing, Matching::Stem))
}

/// One box of a JSON list: `[x1, y1, x2, y2]`, or `{"name": ..., "box": [...]}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonBox {
    Bare([f64; 4]),
    Named {
        name: Option<String>,
        #[serde(rename = "box")]
        rect: [f64; 4],
    },
}

/// The most boxes a JSON list may give for one photo.
pub(super) const MAX_BOXES: usize = 256;

/// Boxes in pixels for any photo, from a JSON array.
pub(super) fn boxes(json: &str) -> Result<Regions> {
    let list: Vec<JsonBox> = serde_json::from_str(json).map_err(|e| {
        anyhow!(
            "{e}: give a JSON array of boxes, [x1, y1, x2, y2] or {{\"name\": ..., \"box\": [x1, y1, x2, y2]}}, in pixels"
        )
    })?;
    if list.is_empty() || list.len() > MAX_BOXES {
        bail!("give 1 to {MAX_BOXES} boxes, not {}", list.len());
    }
    let entries = list
        .into_iter()
        .enumerate()
        .map(|(index, b)| {
            let (name, rect) = match b {
                JsonBox::Bare(rect) => (None, rect),
                JsonBox::Named { name, rect } => (name, rect),
            };
            Entry {
                region: Region {
                    index,
                    name,
                    ..Region::default()
                },
                spec: Spec::Pixels(rect),
            }
        })
        .collect();
    Ok(Regions {
        file: None,
        categories: None,
        kind: Kind::Fixed(entries),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutFile {
    #[serde(default)]
    compartment: Vec<Compartment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Compartment {
    name: String,
    #[serde(rename = "box")]
    rect: [f64; 4],
}

/// A TOML tray layout of named compartments, boxes in fractions.
pub(super) fn layout(path: &Path) -> Result<Regions> {
    let (file, _): (LayoutFile, _) = crate::fsutil::read_toml(path, "layout")?;
    if file.compartment.is_empty() {
        bail!(
            "{}: no [[compartment]] tables (each with a name and box = [x1, y1, x2, y2])",
            path.display()
        );
    }
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for (i, c) in file.compartment.into_iter().enumerate() {
        let at = format!("{}: compartment {} ({:?})", path.display(), i + 1, c.name);
        if c.name.trim().is_empty() {
            bail!("{at}: the name is empty");
        }
        if !seen.insert(c.name.clone()) {
            bail!("{at}: the name is given twice; compartment names must differ");
        }
        let [x1, y1, x2, y2] = c.rect;
        if c.rect.iter().any(|v| !(0.0..=1.0).contains(v)) {
            bail!("{at}: box {:?} has values outside [0, 1] (fractions of the photo's width and height)", c.rect);
        }
        if x2 <= x1 || y2 <= y1 {
            bail!(
                "{at}: box {:?} is empty or inverted (x2 > x1 and y2 > y1)",
                c.rect
            );
        }
        entries.push(Entry {
            region: Region {
                index: i,
                name: Some(c.name),
                ..Region::default()
            },
            spec: Spec::Fractions(c.rect),
        });
    }
    Ok(Regions {
        file: Some(path.to_path_buf()),
        categories: None,
        kind: Kind::Fixed(entries),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(r: &Regions, photo: &str, size: (u32, u32)) -> Vec<Result<[u32; 4], String>> {
        r.entries(Path::new(photo))
            .unwrap()
            .iter()
            .map(|e| e.spec.place(size).map(|(b, _)| b))
            .collect()
    }

    #[test]
    fn coco_matches_by_path_then_by_unique_name() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"images": [{"id": 1, "file_name": "trays/a.jpg"}, {"id": 2, "file_name": "b.jpg"},
            {"id": 3, "file_name": "x/c.jpg"}, {"id": 4, "file_name": "y/c.jpg"}],
          "annotations": [{"id": 7, "image_id": 1, "bbox": [10, 20, 30, 40], "category_id": 5},
            {"id": 8, "image_id": 1, "bbox": ["a", 0, 1, 1]}, {"id": 9, "image_id": 2, "bbox": [0, 0, 5, 5]},
            {"id": 10, "image_id": 3, "bbox": [0, 0, 5, 5]}],
          "categories": [{"id": 5, "name": "rice"}]}"#;
        let file = dir.path().join("boxes.json");
        std::fs::write(&file, json).unwrap();
        let r = Regions::from_file(&file).unwrap();
        let a = dir.path().join("trays/a.jpg");
        let a = r.entries(&a).unwrap();
        assert_eq!(a[0].region.id, Some(7));
        assert_eq!(a[0].region.label.as_deref(), Some("rice"));
        assert_eq!(a[0].spec, Spec::Pixels([10.0, 20.0, 40.0, 60.0]));
        assert!(matches!(a[1].spec, Spec::Invalid(_)));
        assert_eq!(a[1].region.index, 1);
        // By unique file name from elsewhere; `c.jpg` is not unique.
        assert_eq!(
            placed(&r, "/elsewhere/b.jpg", (9, 9)),
            vec![Ok([0, 0, 5, 5])]
        );
        assert!(r.entries(Path::new("/elsewhere/c.jpg")).is_none());
        assert_eq!(r.entries(&dir.path().join("y/c.jpg")).unwrap().len(), 0);
        assert_eq!(r.unmatched(&[dir.path().join("b.jpg")]), 3);
        assert_eq!(r.categories, Some(vec![(5, "rice".to_string())]));

        std::fs::write(
            &file,
            r#"{"images": [], "annotations": [{"image_id": 3, "bbox": []}]}"#,
        )
        .unwrap();
        let e = Regions::from_file(&file).unwrap_err().to_string();
        assert!(e.contains("boxes.json: annotations[0].image_id: 3"), "{e}");
        std::fs::write(&file, "{\"images\": [{\"id\": \"x\"}]}").unwrap();
        let e = Regions::from_file(&file).unwrap_err().to_string();
        assert!(
            e.contains("boxes.json:1: not COCO JSON") && e.contains("images[0].id"),
            "{e}"
        );
    }

    #[test]
    fn csv_rows_with_header_labels_and_bad_boxes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("boxes.csv");
        std::fs::write(
            &file,
            "path,x1,y1,x2,y2,label\na.jpg,0,0,10,10,밥\n\na.jpg,5,5,x,9,국\nb.png,1,1,2,2,김치\n",
        )
        .unwrap();
        let r = Regions::from_file(&file).unwrap();
        let a = placed(
            &r,
            &dir.path().join("sub/../a.jpg").to_string_lossy(),
            (20, 20),
        );
        assert_eq!(a[0], Ok([0, 0, 10, 10]));
        assert!(a[1].as_ref().unwrap_err().contains("x2 is \"x\""));
        assert_eq!(r.unmatched(&[dir.path().join("a.jpg")]), 1);
        std::fs::write(&file, "a.jpg,1,2,3,4\na.jpg,1,2\n").unwrap();
        let e = Regions::from_file(&file).unwrap_err().to_string();
        assert!(
            e.ends_with("boxes.csv:2: expected path,x1,y1,x2,y2[,label]; found 3 field(s)"),
            "{e}"
        );
    }

    #[test]
    fn yolo_files_by_stem_with_class_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("classes.txt"), "rice\nsoup\n").unwrap();
        std::fs::write(
            dir.path().join("tray1.txt"),
            "1 0.5 0.5 0.5 0.25 0.91\n0 0.25 0.25 0.5 0.5\n",
        )
        .unwrap();
        let r = Regions::from_file(dir.path()).unwrap();
        let e = r.entries(Path::new("photos/tray1.jpg")).unwrap();
        assert_eq!(e[0].region.name.as_deref(), Some("soup"));
        assert_eq!(
            placed(&r, "tray1.png", (200, 100))[0],
            Ok([50, 38, 150, 63])
        );
        assert!(r.entries(Path::new("tray2.jpg")).is_none());
        std::fs::write(
            dir.path().join("tray2.txt"),
            "0 0.1 0.2 0.3 0.4 0.5 0.6 0.7\n",
        )
        .unwrap();
        let e = Regions::from_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tray2.txt:1: expected `class cx cy w h"), "{e}");
    }

    #[test]
    fn layouts_refuse_overlapping_names_and_fractions_outside() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tray.toml");
        let write = |s: &str| std::fs::write(&file, s).unwrap();
        write("[[compartment]]\nname = \"rice\"\nbox = [0, 0.5, 0.5, 1]\n");
        let r = Regions::layout(&file).unwrap();
        assert_eq!(placed(&r, "x.jpg", (100, 60)), vec![Ok([0, 30, 50, 60])]);
        write("[[compartment]]\nname = \"rice\"\nbox = [0, 0.5, 0.5, 1]\n[[compartment]]\nname = \"rice\"\nbox = [0, 0, 1, 0.5]\n");
        let e = Regions::layout(&file).unwrap_err().to_string();
        assert!(
            e.contains("compartment 2 (\"rice\"): the name is given twice"),
            "{e}"
        );
        write("[[compartment]]\nname = \"soup\"\nbox = [0, 0.5, 1.5, 1]\n");
        let e = Regions::layout(&file).unwrap_err().to_string();
        assert!(e.contains("outside [0, 1]"), "{e}");
        write("[[compartment]]\nname = \"soup\"\nbox = [0, 0.5]\n");
        let e = Regions::layout(&file).unwrap_err().to_string();
        assert!(e.contains("tray.toml:3: "), "{e}");
    }
}
