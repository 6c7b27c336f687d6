//! A labelled data set run through the model, shared by `eval` and `adapt`: a folder of class
//! folders, a CSV/TSV of `path,label` rows, or a region file with labels (COCO, CSV/TSV), with
//! `--regions`/`--layout`/`--grid` and stored embeddings as elsewhere. Each photo (or region)
//! comes back with what it shows and its embedding.

use super::context::Context;
use super::flags::{BatchArgs, DataSetArgs};
use super::job::{embedder, run_photos, EmbeddingSink};
use super::ui::Ui;
use crate::checkpoint::Checkpoint;
use crate::embeddings::StoredEmbeddings;
use crate::eval::{is_region_file, ClassNames, Sample, Truth};
use crate::fsutil::PathJson;
use crate::labels::LabelSet;
use crate::pipeline::{embedding_rows, Item, Stats};
use crate::regions::{Photo, Region, Regions};
use crate::text::count;
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A data set's photos, where their regions come from, and what they show.
pub(super) struct DataSet {
    samples: Vec<Sample>,
    /// The regions embedded: the data set's own, those asked for, or `--regions auto`'s.
    pub regions: Option<Regions>,
    /// With `--regions auto`: the region file's labelled boxes, the truth found regions are
    /// paired with ([`crate::eval::pair_boxes`]).
    truth_boxes: Option<Regions>,
    /// Stored embeddings (`--embeddings`, or the data set's rows of `--db`) instead of photos.
    pub stored: Option<StoredEmbeddings>,
    names: ClassNames,
    labels: LabelSet,
}

/// One photo (or region) of a data set: what it shows and its embedding, or why it has none.
pub(super) struct Labelled {
    pub path: PathBuf,
    pub region: Option<Region>,
    pub truth: Truth,
    pub embedding: Result<Vec<f32>, String>,
}

/// A photo, or a region of it, as reports list them.
pub(super) struct Place {
    pub path: PathBuf,
    pub region: Option<Region>,
}

impl Place {
    /// `PATH`, or `PATH [region TAG]`.
    pub fn display(&self) -> String {
        match &self.region {
            Some(r) => format!("{} [region {}]", self.path.display(), r.tag()),
            None => self.path.display().to_string(),
        }
    }

    /// `{"path": ..., "region": ...}` with `key: value` added.
    pub fn json(&self, key: &str, value: &str) -> serde_json::Value {
        let mut v = serde_json::json!({ "path": PathJson(&self.path), key: value });
        if let Some(r) = &self.region {
            v["region"] = serde_json::json!(r);
        }
        v
    }
}

/// A data set after the model: the records with a known truth, those in no class, and the run.
pub(super) struct Embedded {
    pub cases: Vec<Labelled>,
    /// Photos (or regions) whose label names no class, with the label.
    pub unmatched: Vec<(Place, String)>,
    /// With `--regions auto`: the truth's regions no found region was paired with, with
    /// their labels.
    pub missed: Vec<(Place, String)>,
    /// Whether the records are regions.
    pub by_regions: bool,
    pub stats: Stats,
    pub interrupted: bool,
}

impl DataSet {
    /// Reads the data set of `args` for `labels`.
    pub fn open(cx: &Context, args: &DataSetArgs, labels: &LabelSet) -> Result<Self> {
        let path = &args.dataset;
        let asked = args.regions.load_auto()?;
        let auto = asked.as_ref().is_some_and(Regions::is_auto);
        if auto && !is_region_file(path) {
            bail!(
                "--regions auto pairs the regions it finds with the truth's boxes: give a region \
                 file with labels (COCO JSON, or CSV/TSV rows path,x1,y1,x2,y2,label) as the data set"
            );
        }
        if auto && (args.stored.embeddings.is_some() || args.stored.db.is_some()) {
            bail!(
                "--regions auto finds the regions on the photos: leave out --embeddings and --db"
            );
        }
        let mut truth_boxes = None;
        // A region file as the data set: its photos, and a truth per region.
        let (samples, regions) = if is_region_file(path) && auto {
            let truth = Regions::from_file(path)?;
            let samples = truth
                .listed_photos()
                .unwrap_or_default()
                .into_iter()
                .map(|path| Sample {
                    path,
                    truth: Truth::Unmatched(String::new()),
                })
                .collect();
            truth_boxes = Some(truth);
            (samples, asked)
        } else if is_region_file(path) {
            if asked.is_some() {
                bail!(
                    "{} holds the regions already; leave out --regions, --layout and --grid",
                    path.display()
                );
            }
            let regions = Regions::from_file(path)?;
            let photos = regions.listed_photos().unwrap_or_default();
            let samples = photos
                .into_iter()
                .map(|path| Sample {
                    path,
                    truth: Truth::Unmatched(String::new()),
                })
                .collect();
            (samples, (!args.stored.is_given()).then_some(regions))
        } else {
            (crate::eval::load_dataset(path, labels)?, asked)
        };
        // Only the data set's rows of a store, found by the path as given or made absolute.
        let stored = match args.stored.load(cx, &args.regions, regions.as_ref())? {
            Some(stored) => {
                let mut wanted: HashSet<PathBuf> = HashSet::new();
                for s in &samples {
                    wanted.extend(std::fs::canonicalize(&s.path));
                    wanted.insert(s.path.clone());
                }
                Some(stored.of_photos(|p| wanted.contains(p))?)
            }
            None => None,
        };
        Ok(Self {
            samples,
            regions,
            truth_boxes,
            stored,
            names: ClassNames::new(labels),
            labels: labels.clone(),
        })
    }

    /// Embeds (or looks up) every photo or region with a known truth, with the progress bar and
    /// the `--save-embeddings` sink.
    pub fn embed(
        &self,
        cx: &Context,
        ckpt: &Checkpoint,
        batch: &BatchArgs,
        sink: Option<EmbeddingSink>,
    ) -> Result<Embedded> {
        let (stored, regions) = (self.stored.as_ref(), self.regions.as_ref());
        let by_regions = regions.is_some() || stored.is_some_and(|s| !s.regions.is_empty());
        let embedder = embedder(ckpt, stored, regions, batch, cx.fidelity);
        // Whole photos in no class are not embedded; regions carry their own truth, known later.
        let (scorable, unmatched): (Vec<&Sample>, Vec<&Sample>) = self
            .samples
            .iter()
            .partition(|s| by_regions || !matches!(s.truth, Truth::Unmatched(_)));
        let mut unmatched: Vec<(Place, String)> = unmatched
            .into_iter()
            .map(|s| {
                let place = Place {
                    path: s.path.clone(),
                    region: None,
                };
                (place, label_of(&s.truth))
            })
            .collect();
        let truths: HashMap<&Path, &Truth> = scorable
            .iter()
            .map(|s| (s.path.as_path(), &s.truth))
            .collect();
        let paths: Vec<PathBuf> = scorable.iter().map(|s| s.path.clone()).collect();
        let mut cases = Vec::with_capacity(paths.len());
        let mut missed = Vec::new();
        let (stats, interrupted) = run_photos(
            embedder,
            &paths,
            Some(paths.len()),
            &cx.ui,
            sink,
            |emb, chunk, items| {
                let mut rows = embedding_rows(emb)?;
                for (path, photo) in chunk.iter().zip(items) {
                    let photo = match &self.truth_boxes {
                        Some(truth) => paired(truth, path, photo, &mut missed),
                        None => photo,
                    };
                    for item in photo {
                        let embedding = item
                            .result
                            .map(|()| rows.next().expect("one row per record"));
                        let truth = match item.region.as_ref().and_then(|r| r.label.as_deref()) {
                            Some(label) => self.names.truth(label),
                            None => truths[path.as_path()].clone(),
                        };
                        if let Truth::Unmatched(label) = truth {
                            let place = Place {
                                path: path.clone(),
                                region: item.region,
                            };
                            unmatched.push((place, label));
                            continue;
                        }
                        cases.push(Labelled {
                            path: path.clone(),
                            region: item.region,
                            truth,
                            embedding,
                        });
                    }
                }
                Ok(())
            },
        )?;
        warn_unmatched(&cx.ui, &self.labels, &unmatched, by_regions);
        Ok(Embedded {
            cases,
            unmatched,
            missed,
            by_regions,
            stats,
            interrupted,
        })
    }
}

/// The records of a photo whose regions `--regions auto` found, each labelled as the truth's
/// region it pairs with ([`crate::eval::pair_boxes`]), or `unknown` (a find where the truth
/// has no dish); the truth's regions no find pairs with go to `missed`.
fn paired(
    truth: &Regions,
    path: &Path,
    mut items: Vec<Item>,
    missed: &mut Vec<(Place, String)>,
) -> Vec<Item> {
    // The photo's size, from a found region's mask; a photo with none found pairs nothing.
    let full = items
        .iter()
        .filter_map(|i| i.region.as_ref()?.segmentation.as_ref())
        .map(|m| (m.size[1], m.size[0]))
        .next();
    let placed: Vec<Region> = full
        .and_then(|full| truth.place(Photo::File(path), full))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(region, ok)| ok.is_ok().then_some(region))
        .collect();
    let found: Vec<[u32; 4]> = items
        .iter()
        .map(|i| i.region.as_ref().and_then(|r| r.rect).unwrap_or_default())
        .collect();
    let boxes: Vec<[u32; 4]> = placed.iter().filter_map(|r| r.rect).collect();
    let pairs = crate::eval::pair_boxes(&found, &boxes);
    for (item, pair) in items.iter_mut().zip(&pairs) {
        if let Some(region) = &mut item.region {
            region.label = Some(match pair {
                Some(t) => placed[*t].label.clone().unwrap_or_default(),
                None => crate::classify::UNKNOWN.to_string(),
            });
        }
    }
    let unmissed: Vec<bool> = (0..placed.len())
        .map(|t| pairs.contains(&Some(t)))
        .collect();
    let all_truth = match full {
        Some(_) => placed,
        // No region found: every listed dish of the photo is missed.
        None => truth.listed(Photo::File(path)),
    };
    for (t, region) in all_truth.into_iter().enumerate() {
        if !unmissed.get(t).copied().unwrap_or(false) {
            let label = region.label.clone().unwrap_or_default();
            let place = Place {
                path: path.to_path_buf(),
                region: Some(region),
            };
            missed.push((place, label));
        }
    }
    items
}

/// The label of an unmatched truth.
fn label_of(truth: &Truth) -> String {
    match truth {
        Truth::Unmatched(label) => label.clone(),
        _ => String::new(),
    }
}

/// One warning per label that matches no class.
fn warn_unmatched(ui: &Ui, labels: &LabelSet, unmatched: &[(Place, String)], regions: bool) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, label) in unmatched {
        *counts.entry(label.as_str()).or_default() += 1;
    }
    for (label, n) in counts {
        let where_ = if label.is_empty() {
            if regions {
                "without a label".to_string()
            } else {
                "outside every class folder".to_string()
            }
        } else {
            format!(
                "labelled {label:?}, which names no class of {}",
                labels.path.display()
            )
        };
        let what = match regions {
            true => count(n, "region", "regions"),
            false => count(n, "photo", "photos"),
        };
        ui.warn(&format!("{what} {where_}: not scored"));
    }
}
