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
use crate::pipeline::{embedding_rows, Stats};
use crate::regions::{Region, Regions};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A data set's photos, where their regions come from, and what they show.
pub(super) struct DataSet {
    samples: Vec<Sample>,
    regions: Option<Regions>,
    /// Stored embeddings (`--embeddings`) instead of photos.
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
    /// Whether the records are regions.
    pub by_regions: bool,
    pub stats: Stats,
    pub interrupted: bool,
}

impl DataSet {
    /// Reads the data set of `args` for `labels`.
    pub fn open(cx: &Context, args: &DataSetArgs, labels: &LabelSet) -> Result<Self> {
        let path = &args.dataset;
        let asked = args.regions.load()?;
        let stored = args.stored.load(cx, &args.regions, asked.as_ref())?;
        // A region file as the data set: its photos, and a truth per region.
        let (samples, regions) = if is_region_file(path) {
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
            (samples, stored.is_none().then_some(regions))
        } else {
            (crate::eval::load_dataset(path, labels)?, asked)
        };
        Ok(Self {
            samples,
            regions,
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
        let (stats, interrupted) =
            run_photos(embedder, &paths, &cx.ui, sink, |emb, chunk, items| {
                let mut rows = embedding_rows(emb)?;
                for (path, photo) in chunk.iter().zip(items) {
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
            })?;
        warn_unmatched(&cx.ui, &self.labels, &unmatched, by_regions);
        Ok(Embedded {
            cases,
            unmatched,
            by_regions,
            stats,
            interrupted,
        })
    }
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
    let what = if regions { "region(s)" } else { "photo(s)" };
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
        ui.warn(&format!("{n} {what} {where_}: not scored"));
    }
}
