//! Trays: the regions of a photo (one per dish or compartment), where they come from, and
//! cutting them out of the decoded photo.
//!
//! Regions come from a file listing boxes per photo (COCO JSON, CSV/TSV rows, a folder of YOLO
//! `.txt` files; see [`Regions::from_file`]), from a tray layout of named compartments
//! ([`Regions::layout`]), or from an even grid ([`Grid`]). Boxes are pixels of the picture as
//! displayed (after EXIF orientation), `x2`/`y2` exclusive; fractions are rounded to the nearest
//! pixel. A region gets exactly what a photo gets: it is cut from the decoded picture and goes
//! through the model's own preprocessing, so classifying it equals classifying the box saved as
//! its own photo.
//!
//! [`pieces`] is the one seam the pipeline calls: it turns a photo into its pieces (the whole
//! photo, or each region), decoding the photo once.

pub mod auto;
pub mod mask;
mod sources;

use crate::preprocess::{Decoded, Fidelity, PreprocessConfig, Rect};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// One region of a photo, as records and stored embeddings carry it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// Its position among the photo's regions, in the source's order (from 0).
    pub index: usize,
    /// The compartment's or grid cell's name (layouts, grids, YOLO `classes.txt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A COCO annotation's `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The box, `[x1, y1, x2, y2]` in pixels of the upright photo, once placed on it (clipped to
    /// it); absent when the box is invalid.
    #[serde(default, rename = "box", skip_serializing_if = "Option::is_none")]
    pub rect: Option<[u32; 4]>,
    /// What the source says the region shows (a COCO category's name, a CSV `label`): the
    /// truth for `eval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The COCO `image_id` of its photo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<u64>,
    /// Its mask on the photo (`--regions auto`), COCO's compressed RLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<mask::Rle>,
}

impl Region {
    /// The region's short name for CSV columns and tables: its name, else its COCO id, else its
    /// index.
    pub fn tag(&self) -> String {
        match (&self.name, self.id) {
            (Some(name), _) => name.clone(),
            (None, Some(id)) => id.to_string(),
            (None, None) => self.index.to_string(),
        }
    }

    /// The placed box as a [`Rect`].
    pub fn area(&self) -> Option<Rect> {
        self.rect.map(|[x1, y1, x2, y2]| Rect { x1, y1, x2, y2 })
    }
}

/// A box as its source gives it, before the photo's size is known.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// `[x1, y1, x2, y2]` in pixels.
    Pixels([f64; 4]),
    /// `[x1, y1, x2, y2]` as fractions of the width and height.
    Fractions([f64; 4]),
    /// A box that cannot be read (non-numeric coordinates): the region's error.
    Invalid(String),
}

impl Spec {
    /// Places the box on an upright `(w, h)` picture: rounded to the nearest pixel and clipped
    /// to the picture. Returns the box and whether it was clipped, or the region's error for an
    /// invalid, inverted or empty box.
    ///
    /// ```
    /// use foodclip::regions::Spec;
    /// let b = Spec::Fractions([0.0, 0.5, 0.5, 1.0]).place((101, 80)).unwrap();
    /// assert_eq!(b, ([0, 40, 51, 80], false));
    /// assert_eq!(Spec::Pixels([-5.0, 0.0, 10.0, 10.0]).place((8, 8)).unwrap(), ([0, 0, 8, 8], true));
    /// assert!(Spec::Pixels([20.0, 0.0, 30.0, 10.0]).place((8, 8)).is_err());
    /// ```
    pub fn place(&self, (w, h): (u32, u32)) -> Result<([u32; 4], bool), String> {
        let [x1, y1, x2, y2] = match self {
            Spec::Pixels(b) => b.map(f64::round),
            Spec::Fractions([a, b, c, d]) => [
                (a * w as f64).round(),
                (b * h as f64).round(),
                (c * w as f64).round(),
                (d * h as f64).round(),
            ],
            Spec::Invalid(e) => return Err(e.clone()),
        };
        let shown = format!("[{x1}, {y1}, {x2}, {y2}]");
        if [x1, y1, x2, y2].iter().any(|v| !v.is_finite()) {
            return Err(format!("invalid box {shown}: coordinates must be numbers"));
        }
        if x2 < x1 || y2 < y1 {
            return Err(format!(
                "inverted box {shown}: x2 and y2 must not be less than x1 and y1"
            ));
        }
        let clip = |v: f64, max: u32| v.clamp(0.0, max as f64) as u32;
        let placed = [clip(x1, w), clip(y1, h), clip(x2, w), clip(y2, h)];
        if placed[2] <= placed[0] || placed[3] <= placed[1] {
            return Err(format!("empty box {shown} on the {w}x{h} picture"));
        }
        let clipped = placed.map(f64::from) != [x1, y1, x2, y2];
        Ok((placed, clipped))
    }
}

/// A region of the source, not yet placed on a photo.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    region: Region,
    spec: Spec,
}

/// How photos are matched to the photos a file lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matching {
    /// By path (relative to the file's folder).
    Path,
    /// By path, or else by a file name that only one listed photo has (COCO).
    PathOrName,
    /// By file stem (YOLO: `tray1.jpg` has `tray1.txt`).
    Stem,
}

/// The photos a file lists, with their regions.
#[derive(Debug, Clone, Default)]
struct Listing {
    /// Key (normalised path, or stem) and regions of each listed photo, in the file's order.
    photos: Vec<(PathBuf, Vec<Entry>)>,
    /// Each listed photo's path as the file gives it (joined to the file's folder).
    written: Vec<PathBuf>,
    /// Each key's photo.
    by_key: HashMap<PathBuf, usize>,
    /// File names that only one listed photo has, for [`Matching::PathOrName`].
    by_name: HashMap<OsString, Option<usize>>,
}

impl Listing {
    /// The listed photo that `photo` is, if any.
    fn find(&self, photo: &Path, matching: Matching) -> Option<usize> {
        let found = match matching {
            Matching::Stem => self.by_key.get(Path::new(photo.file_stem()?)),
            Matching::Path => self.by_key.get(&normalise(photo)),
            Matching::PathOrName => self
                .by_key
                .get(&normalise(photo))
                .or_else(|| self.by_name.get(photo.file_name()?)?.as_ref()),
        };
        found.copied()
    }

    /// Adds `entry` to the photo under `key`, listing the photo (`written` so) if new.
    fn add(&mut self, key: PathBuf, written: &Path, entry: Option<Entry>) {
        let i = *self.by_key.entry(key.clone()).or_insert_with(|| {
            if let Some(name) = key.file_name() {
                let n = self.photos.len();
                self.by_name
                    .entry(name.to_owned())
                    .and_modify(|e| *e = None)
                    .or_insert(Some(n));
            }
            self.photos.push((key, Vec::new()));
            self.written.push(written.to_path_buf());
            self.photos.len() - 1
        });
        if let Some(mut e) = entry {
            e.region.index = self.photos[i].1.len();
            self.photos[i].1.push(e);
        }
    }
}

/// Where regions come from.
#[derive(Debug, Clone)]
enum Kind {
    /// Found on each photo by the model (`--regions auto`), once a finder is bound.
    Auto(Option<std::sync::Arc<dyn auto::Finder>>),
    /// Boxes listed per photo.
    Listed(Listing, Matching),
    /// The same boxes on every photo (a layout or a grid).
    Fixed(Vec<Entry>),
}

/// The regions of a run's photos, from one source.
#[derive(Debug, Clone)]
pub struct Regions {
    /// The file they came from (`--grid` has none), for messages.
    pub file: Option<PathBuf>,
    /// The COCO categories (id, name), when the file is COCO JSON.
    pub categories: Option<Vec<(u64, String)>>,
    kind: Kind,
}

/// An even grid of `rows x cols` regions named `r1c1`, `r1c2`, ... (`--grid RxC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
}

impl std::str::FromStr for Grid {
    type Err = String;

    /// ```
    /// use foodclip::regions::Grid;
    /// assert_eq!("2x3".parse::<Grid>(), Ok(Grid { rows: 2, cols: 3 }));
    /// assert!("0x3".parse::<Grid>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a grid: give ROWSxCOLS, such as 2x3 (1 to 64 each)");
        let (r, c) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let n = |v: &str| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=64).contains(n))
        };
        match (n(r), n(c)) {
            (Some(rows), Some(cols)) => Ok(Self { rows, cols }),
            _ => Err(bad()),
        }
    }
}

impl Regions {
    /// Reads a region file: COCO JSON (`.json`), CSV/TSV rows `path,x1,y1,x2,y2[,label]`
    /// (`.csv`, `.tsv`), or a folder of YOLO `.txt` files. A file that cannot be parsed is an
    /// error naming the file and line (or JSON path); a box with non-numeric or inverted
    /// coordinates is only that region's error.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        sources::read(path)
    }

    /// Reads a tray layout (TOML): `[[compartment]]` tables with a `name` and a
    /// `box = [x1, y1, x2, y2]` in fractions of the photo's width and height.
    pub fn layout(path: &Path) -> anyhow::Result<Self> {
        sources::layout(path)
    }

    /// Boxes in pixels that apply to any photo, from a JSON array of `[x1, y1, x2, y2]` or
    /// `{"name": ..., "box": [x1, y1, x2, y2]}` (at most 256). A box outside the photo, empty
    /// or inverted is that region's error once placed.
    ///
    /// ```
    /// use foodclip::regions::Regions;
    /// assert!(Regions::boxes(r#"[[0, 0, 100, 80], {"name": "rice", "box": [0, 80, 100, 160]}]"#).is_ok());
    /// assert!(Regions::boxes("[[0, 0, 100]]").is_err());
    /// ```
    pub fn boxes(json: &str) -> anyhow::Result<Self> {
        sources::boxes(json)
    }

    /// An even grid.
    pub fn grid(grid: Grid) -> Self {
        let mut entries = Vec::new();
        for r in 0..grid.rows {
            for c in 0..grid.cols {
                let (fr, fc) = (grid.rows as f64, grid.cols as f64);
                entries.push(Entry {
                    region: Region {
                        index: entries.len(),
                        name: Some(format!("r{}c{}", r + 1, c + 1)),
                        ..Region::default()
                    },
                    spec: Spec::Fractions([
                        c as f64 / fc,
                        r as f64 / fr,
                        (c + 1) as f64 / fc,
                        (r + 1) as f64 / fr,
                    ]),
                });
            }
        }
        Self {
            file: None,
            categories: None,
            kind: Kind::Fixed(entries),
        }
    }

    /// Regions found on each photo from a class map (`--regions auto`); [`Regions::bind`]
    /// gives them their finder.
    pub fn auto() -> Self {
        Self {
            file: None,
            categories: None,
            kind: Kind::Auto(None),
        }
    }

    /// Whether these are `--regions auto`.
    pub fn is_auto(&self) -> bool {
        matches!(self.kind, Kind::Auto(_))
    }

    /// Gives `--regions auto` the finder that reads each photo (the model and the classes).
    pub fn bind(&mut self, finder: std::sync::Arc<dyn auto::Finder>) {
        if let Kind::Auto(slot) = &mut self.kind {
            *slot = Some(finder);
        }
    }

    /// What the source is called in messages.
    pub fn describe(&self) -> String {
        if self.is_auto() {
            return "--regions auto".to_string();
        }
        self.file
            .as_ref()
            .map_or("the grid".to_string(), |f| f.display().to_string())
    }

    /// The regions of `photo`, not yet placed; `None` when the source lists no such photo (or
    /// lists photos by path, and `photo` has none).
    fn entries_of(&self, photo: Photo) -> Option<&[Entry]> {
        match (&self.kind, photo) {
            (Kind::Fixed(entries), _) => Some(entries),
            (Kind::Listed(..), Photo::File(path)) => self.entries(path),
            (Kind::Listed(..) | Kind::Auto(_), _) => None,
        }
    }

    /// The regions of `photo`, not yet placed; `None` when the source lists no such photo.
    fn entries(&self, photo: &Path) -> Option<&[Entry]> {
        match &self.kind {
            Kind::Fixed(entries) => Some(entries),
            Kind::Listed(listing, matching) => {
                let i = listing.find(photo, *matching)?;
                Some(&listing.photos[i].1)
            }
            Kind::Auto(_) => None,
        }
    }

    /// How many regions the source lists for photos that are not among `photos` (ignored);
    /// 0 for layouts and grids.
    pub fn unmatched(&self, photos: &[PathBuf]) -> usize {
        let Kind::Listed(listing, matching) = &self.kind else {
            return 0;
        };
        let mut used = vec![false; listing.photos.len()];
        for i in photos.iter().filter_map(|p| listing.find(p, *matching)) {
            used[i] = true;
        }
        let unused = listing.photos.iter().zip(used).filter(|(_, u)| !u);
        unused.map(|((_, entries), _)| entries.len()).sum()
    }

    /// The photos a file lists with at least one region, as paths (`None` for layouts, grids
    /// and YOLO folders, which list no paths): the photos of an `eval` run on the file.
    pub fn listed_photos(&self) -> Option<Vec<PathBuf>> {
        match &self.kind {
            Kind::Listed(listing, Matching::Path | Matching::PathOrName) => Some(
                listing
                    .photos
                    .iter()
                    .zip(&listing.written)
                    .filter(|((_, entries), _)| !entries.is_empty())
                    .map(|(_, written)| written.clone())
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// A path made absolute (against the working directory) with `.` and `..` resolved as text, so
/// that `trays/../trays/a.jpg` and `./trays/a.jpg` match.
fn normalise(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// One record's worth of a photo: the whole photo or one region, with the picture the model
/// sees or the error that stands in its place.
#[derive(Debug)]
pub struct Piece {
    /// The region, `None` for the whole photo (or a photo that failed as a whole).
    pub region: Option<Region>,
    /// The prepared picture, or why there is none.
    pub picture: Result<RgbImage, String>,
    /// Something the user should know (a clipped box).
    pub warning: Option<String>,
}

/// Where a photo's bytes are.
#[derive(Debug, Clone, Copy)]
pub enum Photo<'a> {
    /// A file, read when its pieces are cut.
    File(&'a Path),
    /// Bytes in memory (an upload). Only regions that are the same on every photo (a layout,
    /// a grid, boxes given with the upload) apply to it: a file listing photos by path has none.
    Bytes(&'a [u8]),
}

/// The pieces of `photo`: the whole photo when `regions` is `None`, else one per region, from
/// one decode. A photo the source does not list, or lists without a box, is one failed piece
/// ("no regions").
pub fn pieces(
    regions: Option<&Regions>,
    pre: &PreprocessConfig,
    photo: Photo,
    max_pixels: u64,
    fidelity: Fidelity,
) -> Vec<Piece> {
    let whole = |picture: Result<RgbImage, String>| {
        vec![Piece {
            region: None,
            picture,
            warning: None,
        }]
    };
    let Some(regions) = regions else {
        let decoded = match photo {
            Photo::File(path) => pre.decode_for(path, max_pixels, fidelity, |f| f.0.min(f.1)),
            Photo::Bytes(bytes) => pre.decode_bytes(bytes, max_pixels, fidelity, |f| f.0.min(f.1)),
        };
        return whole(
            decoded
                .and_then(|d| pre.prepare_area(&d, Rect::whole(d.full), fidelity))
                .map_err(|e| format!("{e:#}")),
        );
    };
    if !regions.is_auto() && regions.entries_of(photo).is_none_or(|e| e.is_empty()) {
        return whole(Err(format!("no regions in {}", regions.describe())));
    }
    let shortest = |full| regions.shortest(photo, full);
    let decoded = match photo {
        Photo::File(path) => pre.decode_for(path, max_pixels, fidelity, shortest),
        Photo::Bytes(bytes) => pre.decode_bytes(bytes, max_pixels, fidelity, shortest),
    };
    let decoded: Decoded = match decoded {
        Ok(p) => p,
        Err(e) => return whole(Err(format!("{e:#}"))),
    };
    match regions.resolve(photo, &decoded) {
        Ok(found) => found.pieces(pre, &decoded, fidelity),
        Err(e) => whole(Err(e)),
    }
}

/// The regions of one decoded photo: those its source gives, or those `--regions auto` found
/// on it (see [`Regions::resolve`]).
#[derive(Debug, Clone)]
pub struct Resolved<'a>(std::borrow::Cow<'a, [Entry]>);

impl Resolved<'_> {
    /// The pieces of the decoded photo, one per region.
    pub fn pieces(
        &self,
        pre: &PreprocessConfig,
        decoded: &Decoded,
        fidelity: Fidelity,
    ) -> Vec<Piece> {
        cut(&self.0, pre, decoded, fidelity)
    }

    /// The regions placed on the photo's upright `full` size: each with its box, and whether
    /// the box was clipped, or its error.
    pub fn place(&self, full: (u32, u32)) -> Vec<(Region, Result<bool, String>)> {
        place(&self.0, full)
    }
}

/// The pieces of a decoded photo for `entries`, placed on it.
fn cut(
    entries: &[Entry],
    pre: &PreprocessConfig,
    decoded: &Decoded,
    fidelity: Fidelity,
) -> Vec<Piece> {
    place(entries, decoded.full)
        .into_iter()
        .map(|(region, placed)| match placed {
            Ok(clipped) => {
                let area = region.area().expect("placed");
                let picture = pre
                    .prepare_area(decoded, area, fidelity)
                    .map_err(|e| format!("{e:#}"));
                let warning = clipped.then(|| {
                    format!(
                        "the box crosses the border of the {}x{} picture; clipped to {:?}",
                        decoded.full.0,
                        decoded.full.1,
                        region.rect.expect("placed")
                    )
                });
                Piece {
                    region: Some(region),
                    picture,
                    warning,
                }
            }
            Err(err) => Piece {
                region: Some(region),
                picture: Err(err),
                warning: None,
            },
        })
        .collect()
}

/// The shortest side of any valid box of `entries` on an upright `full`-sized picture: how far
/// the decoder may shrink the photo (1 when no box is valid, so nothing is shrunk).
fn shortest_side(entries: &[Entry], full: (u32, u32)) -> u32 {
    entries
        .iter()
        .filter_map(|e| e.spec.place(full).ok())
        .map(|([x1, y1, x2, y2], _)| (x2 - x1).min(y2 - y1))
        .min()
        .unwrap_or(1)
}

/// Places `entries` on an upright `full`-sized picture: each region with its box set, and
/// whether the box was clipped, or its error.
fn place(entries: &[Entry], full: (u32, u32)) -> Vec<(Region, Result<bool, String>)> {
    entries
        .iter()
        .map(|e| {
            let mut region = e.region.clone();
            let placed = e.spec.place(full).map(|(rect, clipped)| {
                region.rect = Some(rect);
                clipped
            });
            (region, placed)
        })
        .collect()
}

impl Regions {
    /// The compartments' names when every photo has the same named regions (layouts, grids).
    pub fn names(&self) -> Option<Vec<String>> {
        match &self.kind {
            Kind::Fixed(entries) => Some(entries.iter().map(|e| e.region.tag()).collect()),
            Kind::Listed(..) | Kind::Auto(_) => None,
        }
    }

    /// The shortest side of any valid box of `photo`'s regions on its upright `full` size: how
    /// far a decoder may shrink it (the shorter side of `full` when the source has none).
    pub fn shortest(&self, photo: Photo, full: (u32, u32)) -> u32 {
        if let Kind::Auto(Some(finder)) = &self.kind {
            return finder.shortest(full);
        }
        self.entries_of(photo)
            .filter(|e| !e.is_empty())
            .map_or(full.0.min(full.1), |e| shortest_side(e, full))
    }

    /// The regions of `photo`, decoded as `decoded`: the source's (an error when it has none
    /// for the photo), or those `--regions auto` finds on it (an error when it finds no dish).
    pub fn resolve(&self, photo: Photo, decoded: &Decoded) -> Result<Resolved<'_>, String> {
        if let Kind::Auto(finder) = &self.kind {
            let finder = finder.as_ref().ok_or("--regions auto has no model bound")?;
            let found = finder
                .find(&decoded.img, decoded.full)
                .map_err(|e| format!("--regions auto: {e:#}"))?;
            if found.is_empty() {
                return Err("--regions auto found no dish".into());
            }
            let entries = found
                .into_iter()
                .enumerate()
                .map(|(index, found)| Entry {
                    region: Region {
                        index,
                        name: Some(found.name),
                        segmentation: Some(found.mask),
                        ..Region::default()
                    },
                    spec: Spec::Pixels(found.rect.map(f64::from)),
                })
                .collect();
            return Ok(Resolved(std::borrow::Cow::Owned(entries)));
        }
        match self.entries_of(photo).filter(|e| !e.is_empty()) {
            Some(entries) => Ok(Resolved(std::borrow::Cow::Borrowed(entries))),
            None => Err(format!("no regions in {}", self.describe())),
        }
    }

    /// The regions the source gives for `photo`, not yet placed (without boxes).
    pub fn listed(&self, photo: Photo) -> Vec<Region> {
        self.entries_of(photo)
            .unwrap_or_default()
            .iter()
            .map(|e| e.region.clone())
            .collect()
    }

    /// The regions of `photo` placed on its upright `full` size (see [`Spec::place`]): each
    /// with its box, and whether the box was clipped, or its error. `None` when the source has
    /// no region for the photo.
    pub fn place(
        &self,
        photo: Photo,
        full: (u32, u32),
    ) -> Option<Vec<(Region, Result<bool, String>)>> {
        let entries = self.entries_of(photo).filter(|e| !e.is_empty())?;
        Some(place(entries, full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_round_clip_and_fail() {
        assert_eq!(
            Spec::Pixels([0.4, 0.6, 9.5, 10.0]).place((20, 20)),
            Ok(([0, 1, 10, 10], false))
        );
        assert_eq!(
            Spec::Pixels([5.0, 5.0, 30.0, 12.0]).place((20, 10)),
            Ok(([5, 5, 20, 10], true))
        );
        let inverted = Spec::Pixels([9.0, 0.0, 3.0, 5.0]).place((20, 20));
        assert!(inverted.unwrap_err().starts_with("inverted box"));
        let empty = Spec::Pixels([3.0, 3.0, 3.0, 8.0]).place((20, 20));
        assert!(empty.unwrap_err().starts_with("empty box"));
        let outside = Spec::Pixels([25.0, 0.0, 30.0, 8.0]).place((20, 20));
        assert!(outside.unwrap_err().starts_with("empty box"));
        let nan = Spec::Fractions([f64::NAN, 0.0, 1.0, 1.0]).place((20, 20));
        assert!(nan.unwrap_err().starts_with("invalid box"));
        assert_eq!(
            Spec::Invalid("x1 is \"a\"".into()).place((2, 2)),
            Err("x1 is \"a\"".into())
        );
    }

    #[test]
    fn a_grid_tiles_the_photo() {
        let g = Regions::grid("2x3".parse().unwrap());
        let entries = g.entries(Path::new("any.jpg")).unwrap();
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[4].region.name.as_deref(), Some("r2c2"));
        let placed: Vec<[u32; 4]> = entries
            .iter()
            .map(|e| e.spec.place((301, 200)).unwrap().0)
            .collect();
        assert_eq!(placed[0], [0, 0, 100, 100]);
        assert_eq!(placed[5], [201, 100, 301, 200]);
        let area: u32 = placed.iter().map(|b| (b[2] - b[0]) * (b[3] - b[1])).sum();
        assert_eq!(area, 301 * 200);
    }

    #[test]
    fn the_decoder_shrinks_as_far_as_the_smallest_region_allows() {
        use crate::preprocess::jpeg::reduction;
        let full = (2400, 1800);
        let entries = |boxes: &[[f64; 4]]| -> Vec<Entry> {
            boxes
                .iter()
                .map(|b| Entry {
                    region: Region::default(),
                    spec: Spec::Pixels(*b),
                })
                .collect()
        };
        // A 2x2 grid's cells are 1200 x 900: 1/4 keeps 225 >= 224, 1/8 would not.
        let grid = Regions::grid(Grid { rows: 2, cols: 2 });
        let Kind::Fixed(cells) = &grid.kind else {
            unreachable!()
        };
        assert_eq!(shortest_side(cells, full), 900);
        assert_eq!(reduction(shortest_side(cells, full), 224), 4);
        // One small box decides for the photo; invalid boxes do not count.
        let small = entries(&[[0.0, 0.0, 2000.0, 1500.0], [10.0, 10.0, 410.0, 310.0]]);
        assert_eq!(reduction(shortest_side(&small, full), 224), 1);
        let invalid = entries(&[[0.0, 0.0, 2000.0, 1500.0], [5.0, 5.0, 5.0, 5.0]]);
        assert_eq!(reduction(shortest_side(&invalid, full), 224), 4);

        // And the decoder does shrink by that much.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.jpg");
        RgbImage::from_pixel(2400, 1800, image::Rgb([90, 160, 40]))
            .save(&file)
            .unwrap();
        let pre = PreprocessConfig::default();
        let d = pre
            .decode_for(&file, 1 << 30, Fidelity::Fast, |f| shortest_side(cells, f))
            .unwrap();
        assert_eq!((d.img.dimensions(), d.full), ((600, 450), full));
        let d = pre
            .decode_for(&file, 1 << 30, Fidelity::Exact, |f| shortest_side(cells, f))
            .unwrap();
        assert_eq!(d.img.dimensions(), full);
    }

    #[test]
    fn paths_normalise_as_text() {
        assert_eq!(
            normalise(Path::new("/a/./b/../c.jpg")),
            PathBuf::from("/a/c.jpg")
        );
    }
}
