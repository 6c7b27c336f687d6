//! Measuring accuracy on a labelled data set: reading the data set, the metrics, and the
//! calibration of an "unknown" threshold.
//!
//! A data set is a folder of class folders (the folder name is any name of a class; `unknown`
//! holds dishes that are not in the list), or a CSV/TSV file of `path,label` rows.

use crate::classify::UNKNOWN;
use crate::inputs::{collect_inputs, has_image_extension, is_hidden};
use crate::labels::LabelSet;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use unicode_normalization::UnicodeNormalization;

/// What a photo of the data set shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Truth {
    /// A class of the label file (its index).
    Class(usize),
    /// A dish that is not in the list (`unknown`).
    Unknown,
    /// A label that matches no class; the photo is listed, not scored.
    Unmatched(String),
}

/// One photo and what it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The photo.
    pub path: PathBuf,
    /// What it shows.
    pub truth: Truth,
}

/// A name as data sets spell it: NFC (macOS folders hold NFD), lower case, `_` as space.
fn normalise(name: &str) -> String {
    name.trim()
        .nfc()
        .collect::<String>()
        .to_lowercase()
        .replace('_', " ")
}

/// Every name of every class (normalised), for matching the labels of data sets and region
/// files to classes.
#[derive(Debug, Clone)]
pub struct ClassNames(HashMap<String, usize>);

impl ClassNames {
    /// The names of `labels`' classes.
    pub fn new(labels: &LabelSet) -> Self {
        let mut index = HashMap::new();
        for (c, class) in labels.classes.iter().enumerate() {
            for name in &class.names {
                index.entry(normalise(name)).or_insert(c);
            }
        }
        Self(index)
    }

    /// The class that `name` names, spelt as data sets spell it (case, `_` for space, NFD).
    pub fn class(&self, name: &str) -> Option<usize> {
        self.0.get(&normalise(name)).copied()
    }

    /// What `label` means for the label file.
    pub fn truth(&self, label: &str) -> Truth {
        match self.class(label) {
            Some(c) => Truth::Class(c),
            None if normalise(label) == UNKNOWN => Truth::Unknown,
            None => Truth::Unmatched(label.to_string()),
        }
    }
}

/// The intersection over union of two boxes `[x1, y1, x2, y2]` (x2, y2 exclusive).
pub fn box_iou(a: [u32; 4], b: [u32; 4]) -> f64 {
    let ix = a[2].min(b[2]).saturating_sub(a[0].max(b[0])) as f64;
    let iy = a[3].min(b[3]).saturating_sub(a[1].max(b[1])) as f64;
    let area =
        |r: [u32; 4]| f64::from(r[2].saturating_sub(r[0])) * f64::from(r[3].saturating_sub(r[1]));
    let union = area(a) + area(b) - ix * iy;
    if union <= 0.0 {
        0.0
    } else {
        ix * iy / union
    }
}

/// The box IoU at which a found region is the truth's region (as in COCO's AP50).
pub const MATCH_IOU: f64 = 0.5;

/// Pairs regions found on a photo with the truth's, one to one, the pairs of highest box IoU
/// first, each of at least [`MATCH_IOU`]: for each found box, the truth box it is.
pub fn pair_boxes(found: &[[u32; 4]], truth: &[[u32; 4]]) -> Vec<Option<usize>> {
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (f, a) in found.iter().enumerate() {
        for (t, b) in truth.iter().enumerate() {
            let iou = box_iou(*a, *b);
            if iou >= MATCH_IOU {
                pairs.push((iou, f, t));
            }
        }
    }
    pairs.sort_by(|p, q| q.0.total_cmp(&p.0).then((p.1, p.2).cmp(&(q.1, q.2))));
    let mut of_found = vec![None; found.len()];
    let mut taken = vec![false; truth.len()];
    for (_, f, t) in pairs {
        if of_found[f].is_none() && !taken[t] {
            of_found[f] = Some(t);
            taken[t] = true;
        }
    }
    of_found
}

/// Whether the data set at `path` is a region file with labels (COCO JSON, or CSV/TSV rows of
/// five or six fields, `path,x1,y1,x2,y2,label`) rather than photos with labels.
pub fn is_region_file(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => true,
        Some(sep @ ("csv" | "tsv")) => {
            let Ok(bytes) = std::fs::read(path) else {
                return false;
            };
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(if sep == "tsv" { b'\t' } else { b',' })
                .has_headers(false)
                .flexible(true)
                .from_reader(bytes.as_slice());
            let first = reader
                .byte_records()
                .flatten()
                .find(|r| r.iter().any(|f| !f.is_empty()));
            first.is_some_and(|r| r.len() >= 5)
        }
        _ => false,
    }
}

/// Reads a data set: a folder of class folders, or a CSV/TSV file of `path,label` rows (an
/// optional `path,label` header; relative paths are relative to the file's folder).
pub fn load_dataset(path: &Path, labels: &LabelSet) -> Result<Vec<Sample>> {
    let index = ClassNames::new(labels);
    if path.is_dir() {
        return load_folder(path, &index);
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read data set {}", path.display()))?;
    let sep = if path.extension().is_some_and(|e| e == "tsv") {
        b'\t'
    } else {
        b','
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut samples = Vec::new();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(sep)
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes));
    for (i, row) in reader.byte_records().enumerate() {
        let line = |row: &csv::ByteRecord| row.position().map_or(i + 1, |p| p.line() as usize);
        let row = row.map_err(|e| {
            let at = e.position().map_or(i + 1, |p| p.line() as usize);
            anyhow::anyhow!("{}:{at}: {e}", path.display())
        })?;
        if row.iter().all(<[u8]>::is_empty) {
            continue;
        }
        let (photo, label) = match (row.len(), row.get(0), row.get(1)) {
            (2, Some(photo), Some(label)) => (photo, label),
            (n, ..) => bail!(
                "{}:{}: expected two fields, path{}label; found {n}",
                path.display(),
                line(&row),
                (sep as char).escape_default(),
            ),
        };
        let label = std::str::from_utf8(label).with_context(|| {
            format!("{}:{}: the label is not UTF-8", path.display(), line(&row))
        })?;
        if i == 0 && photo == b"path" && label == "label" {
            continue;
        }
        samples.push(Sample {
            path: base.join(crate::fsutil::path_from_bytes(photo.to_vec())),
            truth: index.truth(label),
        });
    }
    Ok(samples)
}

fn load_folder(root: &Path, index: &ClassNames) -> Result<Vec<Sample>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("cannot read data set {}", root.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read data set {}", root.display()))?;
    entries.sort();
    let mut samples = Vec::new();
    for entry in entries {
        let (label, inputs) = if is_hidden(&entry) {
            continue; // `.foodclip`, `.git`, macOS's `._` files: no class
        } else if entry.is_dir() {
            let name = entry.file_name().unwrap_or_default().to_string_lossy();
            (
                name.into_owned(),
                collect_inputs(&[entry], false, std::io::empty())?.complete()?,
            )
        } else if has_image_extension(&entry) {
            // A photo beside the class folders is in no class.
            let inputs = collect_inputs(&[entry], false, std::io::empty())?;
            (String::new(), inputs)
        } else {
            continue; // a README or other file beside the class folders
        };
        let t = index.truth(&label);
        samples.extend(inputs.paths.into_iter().map(|path| Sample {
            path,
            truth: t.clone(),
        }));
    }
    Ok(samples)
}

/// One scored photo: its true class and the classes ranked best first (at least the top 5).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The true class.
    pub truth: usize,
    /// Class indices, best first.
    pub ranked: Vec<usize>,
}

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMetrics {
    /// Photos of this class.
    pub support: usize,
    /// Photos predicted as this class.
    pub predicted: usize,
    /// Photos of this class predicted as this class.
    pub correct: usize,
    /// `correct / predicted` (0 when nothing was predicted).
    pub precision: f64,
    /// `correct / support`; `None` for a class with no photos.
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
}

/// Accuracy figures of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// Photos scored.
    pub n: usize,
    /// Fraction whose best class is right.
    pub top1: f64,
    /// Fraction with the right class among the best five.
    pub top5: f64,
    /// Per class, in label-file order.
    pub per_class: Vec<ClassMetrics>,
    /// Mean precision over the classes that have photos or predictions.
    pub macro_precision: f64,
    /// Mean recall over the classes that have photos.
    pub macro_recall: f64,
    /// Mean F1 over the classes that have photos or predictions (as scikit-learn's macro F1).
    pub macro_f1: f64,
    /// `confusion[truth][predicted]` photo counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Computes the metrics of `scored` photos over `classes` classes.
pub fn metrics(classes: usize, scored: &[Scored]) -> Metrics {
    let mut confusion = vec![vec![0usize; classes]; classes];
    let mut top5 = 0;
    for s in scored {
        confusion[s.truth][s.ranked[0]] += 1;
        top5 += usize::from(s.ranked.iter().take(5).any(|&c| c == s.truth));
    }
    let per_class: Vec<ClassMetrics> = (0..classes)
        .map(|c| {
            let support: usize = confusion[c].iter().sum();
            let predicted: usize = confusion.iter().map(|row| row[c]).sum();
            let correct = confusion[c][c];
            let precision = ratio(correct, predicted).unwrap_or(0.0);
            let recall = ratio(correct, support);
            let r = recall.unwrap_or(0.0);
            let f1 = if precision + r > 0.0 {
                2.0 * precision * r / (precision + r)
            } else {
                0.0
            };
            ClassMetrics {
                support,
                predicted,
                correct,
                precision,
                recall,
                f1,
            }
        })
        .collect();
    let present: Vec<&ClassMetrics> = per_class
        .iter()
        .filter(|m| m.support > 0 || m.predicted > 0)
        .collect();
    let mean = |values: Vec<f64>| {
        let n = values.len();
        values.into_iter().sum::<f64>() / n.max(1) as f64
    };
    let n = scored.len();
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    Metrics {
        n,
        top1: ratio(correct, n).unwrap_or(0.0),
        top5: ratio(top5, n).unwrap_or(0.0),
        macro_precision: mean(present.iter().map(|m| m.precision).collect()),
        macro_recall: mean(per_class.iter().filter_map(|m| m.recall).collect()),
        macro_f1: mean(present.iter().map(|m| m.f1).collect()),
        per_class,
        confusion,
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// A (true, predicted) pair of different classes and how many photos it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    /// The true class.
    pub truth: usize,
    /// The class predicted instead.
    pub predicted: usize,
    /// Photos.
    pub count: usize,
}

impl Metrics {
    /// The `n` most frequent errors, most frequent first (ties in class order).
    pub fn top_confusions(&self, n: usize) -> Vec<Confusion> {
        let mut out: Vec<Confusion> = Vec::new();
        for (truth, row) in self.confusion.iter().enumerate() {
            for (predicted, &count) in row.iter().enumerate() {
                if truth != predicted && count > 0 {
                    out.push(Confusion {
                        truth,
                        predicted,
                        count,
                    });
                }
            }
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.count));
        out.truncate(n);
        out
    }

    /// Errors within the true class's group and across groups, for classes with groups.
    pub fn group_errors(&self, groups: &[Option<usize>]) -> (usize, usize) {
        let (mut same, mut cross) = (0, 0);
        for (truth, row) in self.confusion.iter().enumerate() {
            for (predicted, &count) in row.iter().enumerate() {
                if truth == predicted {
                    continue;
                }
                match (groups[truth], groups[predicted]) {
                    (Some(a), Some(b)) if a == b => same += count,
                    _ => cross += count,
                }
            }
        }
        (same, cross)
    }
}

/// One threshold of the precision/coverage trade-off.
#[derive(Debug, Clone, PartialEq)]
pub struct Operating {
    /// Answer `unknown` below this top-1 probability.
    pub threshold: f32,
    /// Of the answers that are not `unknown`, the fraction that are right.
    pub precision: f64,
    /// Fraction of the photos of listed dishes that get an answer.
    pub coverage: f64,
    /// Fraction of the photos of unlisted dishes that are answered `unknown`.
    pub unknown_rejected: f64,
}

/// The trade-off at every distinct confidence: `known` holds (top-1 probability, whether the
/// top-1 class is right) for photos of listed dishes, `unknown` the top-1 probabilities of photos
/// of unlisted dishes. Thresholds rise, so coverage falls.
pub fn calibrate(known: &[(f32, bool)], unknown: &[f32]) -> Vec<Operating> {
    let mut thresholds: Vec<f32> = known
        .iter()
        .map(|&(p, _)| p)
        .chain(unknown.iter().copied())
        .collect();
    thresholds.sort_by(f32::total_cmp);
    thresholds.dedup();
    thresholds
        .into_iter()
        .map(|t| {
            let answered = known.iter().filter(|&&(p, _)| p >= t).count();
            let right = known.iter().filter(|&&(p, ok)| p >= t && ok).count();
            let wrong_unknown = unknown.iter().filter(|&&p| p >= t).count();
            Operating {
                threshold: t,
                precision: ratio(right, answered + wrong_unknown).unwrap_or(1.0),
                coverage: ratio(answered, known.len()).unwrap_or(0.0),
                unknown_rejected: ratio(unknown.len() - wrong_unknown, unknown.len())
                    .unwrap_or(1.0),
            }
        })
        .collect()
}

/// The lowest threshold (so the widest coverage) whose precision reaches `target`.
pub fn threshold_for(points: &[Operating], target: f64) -> Option<&Operating> {
    points.iter().find(|p| p.precision >= target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_boxes_pair_with_the_truth_one_to_one_best_first() {
        let truth = [[0, 0, 100, 100], [200, 0, 300, 100]];
        // Two finds on the first dish (the better one takes it), one on the second, one on
        // nothing.
        let found = [
            [10, 0, 100, 100],
            [0, 0, 100, 95],
            [190, 0, 300, 100],
            [500, 500, 600, 600],
        ];
        assert_eq!(pair_boxes(&found, &truth), [None, Some(0), Some(1), None]);
        assert!((box_iou([0, 0, 10, 10], [5, 0, 15, 10]) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(box_iou([0, 0, 0, 0], [0, 0, 0, 0]), 0.0);
        // Below the bar: no pair.
        assert_eq!(pair_boxes(&[[0, 0, 10, 10]], &[[6, 0, 16, 10]]), [None]);
    }

    fn s(truth: usize, ranked: &[usize]) -> Scored {
        Scored {
            truth,
            ranked: ranked.to_vec(),
        }
    }

    #[test]
    fn metrics_match_hand_computed_values() {
        // Classes 0, 1, 2, 3; class 3 has no photos and is never predicted.
        // truth 0: predicted 0, 0, 1      truth 1: predicted 1, 2      truth 2: predicted 0
        let scored = [
            s(0, &[0, 1]),
            s(0, &[0, 2]),
            s(0, &[1, 0]),
            s(1, &[1, 0]),
            s(1, &[2, 3]),
            s(2, &[0, 1]),
        ];
        let m = metrics(4, &scored);
        assert_eq!(m.n, 6);
        assert!((m.top1 - 3.0 / 6.0).abs() < 1e-12);
        // Right class in the top 5: all but the class-1 photo ranked [2, 3] and the class-2
        // photo ranked [0, 1].
        assert!((m.top5 - 4.0 / 6.0).abs() < 1e-12);
        let c0 = &m.per_class[0];
        assert_eq!((c0.support, c0.predicted, c0.correct), (3, 3, 2));
        assert!((c0.precision - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(c0.recall, Some(2.0 / 3.0));
        assert!((c0.f1 - 2.0 / 3.0).abs() < 1e-12);
        let c1 = &m.per_class[1];
        assert_eq!((c1.support, c1.predicted, c1.correct), (2, 2, 1));
        assert!((c1.f1 - 0.5).abs() < 1e-12);
        let c2 = &m.per_class[2];
        assert_eq!((c2.precision, c2.recall, c2.f1), (0.0, Some(0.0), 0.0));
        assert_eq!(m.per_class[3].recall, None);
        // Macro over classes 0-2 (class 3 has neither photos nor predictions).
        assert!((m.macro_f1 - (2.0 / 3.0 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
        assert!((m.macro_precision - (2.0 / 3.0 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
        assert!((m.macro_recall - (2.0 / 3.0 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
        assert_eq!(m.confusion[0], [2, 1, 0, 0]);
        assert_eq!(
            m.top_confusions(2),
            [
                Confusion {
                    truth: 0,
                    predicted: 1,
                    count: 1
                },
                Confusion {
                    truth: 1,
                    predicted: 2,
                    count: 1
                },
            ]
        );
        // Classes 0 and 1 share a group; 2 is alone; 3 has none.
        assert_eq!(m.group_errors(&[Some(0), Some(0), Some(1), None]), (1, 2));
    }

    #[test]
    fn calibration_trades_coverage_for_precision() {
        let known = [(0.9, true), (0.8, true), (0.6, false), (0.4, true)];
        let unknown = [0.7, 0.3];
        let points = calibrate(&known, &unknown);
        let at = |t: f32| points.iter().find(|p| p.threshold == t).unwrap();
        // Threshold 0.3: everything answered; right 3 of 6 answers.
        assert!((at(0.3).precision - 0.5).abs() < 1e-12);
        assert_eq!(at(0.3).coverage, 1.0);
        assert_eq!(at(0.3).unknown_rejected, 0.0);
        // Threshold 0.8: two answers, both right; half the listed photos; both unknowns rejected.
        assert_eq!(
            (
                at(0.8).precision,
                at(0.8).coverage,
                at(0.8).unknown_rejected
            ),
            (1.0, 0.5, 1.0)
        );
        assert_eq!(threshold_for(&points, 0.99).unwrap().threshold, 0.8);
        assert_eq!(threshold_for(&points, 0.6).unwrap().threshold, 0.4);
    }

    #[test]
    fn names_are_read_as_data_sets_write_them() {
        // NFD Hangul (as macOS stores folder names), case and underscores.
        let nfd: String = "김치찌개".nfd().collect();
        assert_ne!(nfd, "김치찌개");
        assert_eq!(normalise(&nfd), "김치찌개");
        assert_eq!(normalise(" Kimchi_Stew "), "kimchi stew");
    }
}
