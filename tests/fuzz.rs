//! A seeded mutation fuzzer on stable Rust: every reader of outside bytes gets thousands of
//! damaged copies of the fixtures (truncated, bytes flipped or inserted, headers smashed, numbers
//! swapped for absurd ones) and must answer each with a value or an error: never a panic, never
//! a value that breaks its own invariants.
//!
//! A short run is part of `cargo test`. The long run:
//!
//! ```text
//! FOODCLIP_FUZZ_ITERATIONS=20000 cargo test --release --test fuzz -- --nocapture
//! ```
//!
//! `FOODCLIP_FUZZ_SEED` picks another sequence of mutations; a failure names its seed and case,
//! so that it can be run again alone.

mod common;

use common::fixtures;
use foodclip::embeddings::StoredEmbeddings;
use foodclip::labels::LabelSet;
use foodclip::model::ClipConfig;
use foodclip::output::{Format, Layout, Printer, RecordKind};
use foodclip::preprocess::{Fidelity, PreprocessConfig};
use foodclip::regions::Regions;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// SplitMix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn iterations(short: usize) -> usize {
    std::env::var("FOODCLIP_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(short)
}

fn seed() -> u64 {
    std::env::var("FOODCLIP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_261_130)
}

/// Values that break sizes and counts.
const ABSURD: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "7",
    "4294967296",
    "18446744073709551615",
    "1e308",
    "-0.0",
    "0.5",
    "null",
    "true",
    "\"224\"",
    "[]",
    "{}",
    "NaN",
];

/// One random damage to `bytes`.
fn mutate(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let n = b.len();
        match rng.below(8) {
            0 if n > 0 => b.truncate(rng.below(n)),
            1 if n > 0 => {
                let i = rng.below(n);
                b[i] ^= 1 << rng.below(8);
            }
            2 if n > 0 => {
                let i = rng.below(n);
                b[i] = rng.next() as u8;
            }
            3 => {
                let i = rng.below(n + 1);
                let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                b.splice(i..i, junk);
            }
            4 if n > 1 => {
                let i = rng.below(n);
                let len = rng.below(n - i).min(64);
                b.drain(i..i + len);
            }
            5 if n > 0 => {
                // A header smashed: the first bytes overwritten.
                for x in b.iter_mut().take(1 + rng.below(32)) {
                    *x = rng.next() as u8;
                }
            }
            6 if n > 0 => {
                // A chunk copied elsewhere (duplicated markers, lengths).
                let i = rng.below(n);
                let len = rng.below(n - i).min(256);
                let chunk = b[i..i + len].to_vec();
                let at = rng.below(b.len() + 1);
                b.splice(at..at, chunk);
            }
            _ => {
                // A number in text swapped for an absurd value.
                let text = String::from_utf8_lossy(&b).into_owned();
                let digits: Vec<usize> = text
                    .char_indices()
                    .filter(|(_, c)| c.is_ascii_digit())
                    .map(|(i, _)| i)
                    .collect();
                if let Some(&start) = digits.get(rng.below(digits.len())) {
                    let end = text[start..]
                        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
                        .map_or(text.len(), |e| start + e);
                    let value = ABSURD[rng.below(ABSURD.len())];
                    b = format!("{}{value}{}", &text[..start], &text[end..]).into_bytes();
                }
            }
        }
    }
    b
}

/// One structural damage to a JSON document: a few of its leaves (sizes, ids, flags) replaced
/// by absurd values of any type, or removed. Falls back to byte damage for non-JSON.
fn mutate_json(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    fn leaves(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    leaves(x, format!("{at}/{k}"), out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    leaves(x, format!("{at}/{i}"), out);
                }
            }
            _ => out.push(at),
        }
    }
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return mutate(bytes, rng);
    };
    let mut paths = Vec::new();
    leaves(&doc, String::new(), &mut paths);
    for _ in 0..1 + rng.below(3) {
        let path = &paths[rng.below(paths.len())];
        if let Some(slot) = doc.pointer_mut(path) {
            *slot = serde_json::from_str(ABSURD[rng.below(ABSURD.len())])
                .unwrap_or(serde_json::Value::Null);
        }
    }
    let out = serde_json::to_vec(&doc).unwrap();
    if rng.below(4) == 0 {
        mutate(&out, rng)
    } else {
        out
    }
}

/// Runs `check` on `cases` mutations of each seed input; a panic (or a failed check) fails the
/// test, naming the target, seed and case.
fn fuzz(target: &str, seeds: &[Vec<u8>], cases: usize, check: impl FnMut(&[u8])) {
    fuzz_with(target, seeds, cases, mutate, check)
}

/// [`fuzz`] with another mutator.
fn fuzz_with(
    target: &str,
    seeds: &[Vec<u8>],
    cases: usize,
    mutator: fn(&[u8], &mut Rng) -> Vec<u8>,
    mut check: impl FnMut(&[u8]),
) {
    let mut rng = Rng(seed()
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let start = std::time::Instant::now();
    for case in 0..cases {
        let input = mutator(&seeds[case % seeds.len()], &mut rng);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            let dump = std::env::temp_dir().join(format!("foodclip-fuzz-{target}-{case}.bin"));
            let _ = std::fs::write(&dump, &input);
            panic!(
                "{target}: case {case} (seed {}) panicked; input saved to {}",
                seed(),
                dump.display()
            );
        }
    }
    eprintln!(
        "fuzz {target}: {cases} cases in {:.1} s, no panic",
        start.elapsed().as_secs_f64()
    );
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn images_decode_or_fail_cleanly() {
    let images = fixtures().join("images");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| read(e.unwrap().path()))
        .filter(|b| b.len() < 120_000)
        .collect();
    seeds.sort();
    let config =
        PreprocessConfig::from_file(&fixtures().join("tiny-gelu/preprocessor_config.json"))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("photo");
    let mut internal = 0;
    fuzz("images", &seeds, iterations(1000), |bytes| {
        std::fs::write(&file, bytes).unwrap();
        for fidelity in [Fidelity::Exact, Fidelity::Fast] {
            match config.load(&file, 4_000_000, fidelity) {
                Ok(img) => assert_eq!(img.dimensions(), (96, 96)),
                Err(e) => {
                    let msg = format!("{e:#}");
                    assert!(!msg.is_empty() && !msg.contains('\n'), "{msg}");
                    // A decoder panic, caught by the photo's isolation: counted, not fatal.
                    internal += usize::from(msg.contains("internal error"));
                }
            }
        }
    });
    eprintln!("fuzz images: {internal} decoder panics caught as per-photo errors");
}

#[test]
fn label_files_parse_or_name_the_line() {
    let seeds = vec![
        read(fixtures().join("labels/mixed.txt")),
        read(Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/korean.txt")),
        "[찌개 | stew]\r\n김치찌개 | kimchi stew\n# note\n\n[]\n|x|\n"
            .as_bytes()
            .to_vec(),
    ];
    fuzz("labels", &seeds, iterations(3000), |bytes| {
        match LabelSet::parse(bytes, Path::new("l.txt")) {
            Ok(set) => {
                assert!(!set.classes.is_empty());
                for c in &set.classes {
                    assert!(c.names.iter().all(|n| !n.trim().is_empty()));
                    assert!(c.group.is_none_or(|g| g < set.groups.len()));
                }
            }
            Err(e) => assert!(format!("{e:#}").starts_with("l.txt"), "{e:#}"),
        }
        if let Ok((set, findings)) = LabelSet::parse_all(bytes, Path::new("l.txt")) {
            assert!(findings.iter().all(|f| f.line.is_none_or(|l| l >= 1)));
            assert!(set.classes.iter().all(|c| c.line >= 1));
        }
    });
}

/// Fuzzes one config file of the fixture checkpoints `names` with structural JSON damage:
/// `parse` must refuse or give a value that `check` accepts. Counts what was accepted.
fn fuzz_config<T>(
    file: &str,
    names: &[&str],
    parse: impl Fn(&str) -> anyhow::Result<T>,
    mut check: impl FnMut(T),
) {
    let seeds: Vec<Vec<u8>> = names
        .iter()
        .map(|c| read(fixtures().join(c).join(file)))
        .collect();
    let mut accepted = 0;
    fuzz_with(file, &seeds, iterations(3000), mutate_json, |bytes| {
        if let Some(config) = std::str::from_utf8(bytes).ok().and_then(|t| parse(t).ok()) {
            accepted += 1;
            check(config);
        }
    });
    eprintln!("fuzz {file}: {accepted} mutated configs accepted, the rest refused");
}

#[test]
fn configs_are_valid_or_refused() {
    let checkpoints = ["tiny-openai", "tiny-gelu", "tiny-legacy-eos"];
    fuzz_config("config.json", &checkpoints, ClipConfig::from_json, |c| {
        let (t, v) = (&c.text_config, &c.vision_config);
        assert!(t.hidden_size > 0 && t.hidden_size % t.num_attention_heads == 0);
        assert!(v.patch_size > 0 && v.image_size % v.patch_size == 0);
        assert!((t.eos_token_id as usize) < t.vocab_size);
        assert!((t.pad_token_id as usize) < t.vocab_size);
        assert!(v.image_size <= 4096 && t.max_position_embeddings > 0);
    });
    let mut rng = Rng(seed());
    let file = "preprocessor_config.json";
    fuzz_config(file, &checkpoints[..2], PreprocessConfig::from_json, |c| {
        // Any photo size, however odd: no overflow, no panic.
        for _ in 0..8 {
            let (w, h) = (1 + rng.below(200_000) as u32, 1 + rng.below(200_000) as u32);
            let (ow, oh) = c.output_size(w, h);
            if let Some(crop) = c.crop {
                assert_eq!((ow, oh), crop);
            }
        }
        let (w, h) = (1 + rng.below(40) as u32, 1 + rng.below(40) as u32);
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([9, 8, 7]));
        let (ow, oh) = c.output_size(w, h);
        if (ow as u64) * (oh as u64) < 4_000_000 {
            assert_eq!(c.prepare(&img).dimensions(), (ow, oh));
        }
    });
}

/// The records an earlier run wrote, in every line format.
fn record_seeds() -> Vec<(Layout, Vec<u8>)> {
    let mut out = Vec::new();
    for format in [Format::Jsonl, Format::Csv, Format::Tsv] {
        for kind in [RecordKind::Predictions, RecordKind::Embedding] {
            let layout = Layout::new(format, kind);
            let mut p = Printer::new(Vec::new(), layout);
            for (i, path) in ["a.jpg", "b,\"c\".png", "김치.jpg"].iter().enumerate() {
                let path = Path::new(path);
                let r = match (kind, i) {
                    (RecordKind::Embedding, 1) => p.embedding(path, None, &Err("bad".into())),
                    (RecordKind::Embedding, _) => p.embedding(path, None, &Ok(vec![0.25, -1.5])),
                    (RecordKind::Predictions, _) => p.predictions(path, None, &Err("bad".into())),
                    (RecordKind::Hits, _) => unreachable!("search results are not resumed"),
                };
                r.unwrap();
            }
            p.finish().unwrap();
            out.push((layout, p.into_inner()));
        }
    }
    out
}

#[test]
fn resume_files_are_read_or_refused_whole() {
    let seeds = record_seeds();
    let layouts: Vec<Layout> = seeds.iter().map(|(l, _)| *l).collect();
    let bytes: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out");
    let mut n = 0;
    fuzz("resume", &bytes, iterations(4000), |input| {
        let layout = layouts[n % layouts.len()];
        n += 1;
        std::fs::write(&file, input).unwrap();
        match foodclip::inputs::recorded_paths(&file, |w, p| layout.recorded(w, p)) {
            // Accepted: at most the unfinished last line was cut.
            Ok(_) => {
                let now = read(&file);
                assert!(input.starts_with(&now));
                assert!(!input[now.len()..].contains(&b'\n'));
            }
            // Refused: untouched, byte for byte.
            Err(_) => assert_eq!(read(&file), input),
        }
    });
}

#[test]
fn stored_embeddings_load_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    StoredEmbeddings {
        checkpoint: "blake3:abc".into(),
        paths: vec![PathBuf::from("a.jpg"), PathBuf::from("트레이/b.png")],
        regions: vec![
            None,
            Some(foodclip::regions::Region {
                index: 0,
                name: Some("밥".into()),
                rect: Some([0, 0, 10, 20]),
                ..Default::default()
            }),
        ],
        dim: 3,
        values: vec![0.6, 0.8, 0.0, 1.0, 0.0, 0.0],
    }
    .save(&good)
    .unwrap();
    let seeds = vec![read(&good)];
    let file = dir.path().join("mutated.safetensors");
    fuzz("embeddings", &seeds, iterations(4000), |bytes| {
        std::fs::write(&file, bytes).unwrap();
        if let Ok(stored) = StoredEmbeddings::load(&file) {
            assert_eq!(stored.values.len(), stored.paths.len() * stored.dim);
        }
    });
}

#[test]
fn region_files_parse_or_name_their_file() {
    let coco = r#"{"images": [{"id": 1, "file_name": "trays/a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"id": 7, "image_id": 1, "bbox": [10.5, 20, 300, 240], "category_id": 3},
          {"id": 8, "image_id": 2, "bbox": [0, 0, 1e9, -5]}],
        "categories": [{"id": 3, "name": "김치찌개"}]}"#;
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("json", coco.as_bytes().to_vec()),
        (
            "csv",
            "path,x1,y1,x2,y2,label\ntrays/a.jpg,0,0,100,80,밥\n\"b,1.jpg\",-5,2,1e6,9\n".into(),
        ),
        (
            "tsv",
            "a.jpg\t1\t2\t3\t4\na.jpg\tNaN\t2\t3\t4\tsoup\n".into(),
        ),
        (
            "toml",
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/trays/school-5.toml"))
                .unwrap(),
        ),
        ("txt", "0 0.5 0.5 0.25 0.4\n3 0.1 0.9 2 0.01 0.77\n".into()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let yolo = dir.path().join("yolo");
    std::fs::create_dir(&yolo).unwrap();
    let mut accepted = 0;
    for (ext, seed) in &seeds {
        let file = match *ext {
            "txt" => yolo.join("a.txt"),
            ext => dir.path().join(format!("regions.{ext}")),
        };
        let target = format!("regions-{ext}");
        let mutator = if *ext == "json" { mutate_json } else { mutate };
        fuzz_with(
            &target,
            std::slice::from_ref(seed),
            iterations(1500),
            mutator,
            |bytes| {
                std::fs::write(&file, bytes).unwrap();
                let read = match *ext {
                    "toml" => Regions::layout(&file),
                    "txt" => Regions::from_file(&yolo),
                    _ => Regions::from_file(&file),
                };
                match read {
                    Ok(regions) => {
                        accepted += 1;
                        // Placing every box on odd picture sizes gives boxes inside or errors.
                        for photo in ["trays/a.jpg", "b.jpg", "a.jpg", "b,1.jpg"] {
                            let photo = dir.path().join(photo);
                            for size in [(1, 1), (640, 480), (7, 100_000)] {
                                for (r, placed) in regions
                                    .place(foodclip::regions::Photo::File(&photo), size)
                                    .unwrap_or_default()
                                {
                                    match (placed, r.rect) {
                                        (Ok(_), Some([x1, y1, x2, y2])) => {
                                            assert!(
                                                x1 < x2 && x2 <= size.0 && y1 < y2 && y2 <= size.1
                                            )
                                        }
                                        (Err(e), None) => assert!(!e.contains('\n'), "{e}"),
                                        other => panic!("{other:?}"),
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        assert!(!msg.contains('\n'), "{msg}");
                        let named = if *ext == "txt" { "a.txt" } else { "regions." };
                        assert!(msg.contains(named) || msg.contains("yolo"), "{msg}");
                    }
                }
            },
        );
    }
    eprintln!("fuzz regions: {accepted} mutated region files accepted, the rest refused");
}

#[test]
fn adapters_load_consistent_or_are_refused() {
    use foodclip::adapter::{cross_validate, Adapter, Choice, Support};
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let support = Support {
        features: vec![1.0, 0.0, 0.8, 0.6, 0.0, 1.0, 0.6, 0.8],
        classes: vec![0, 0, 1, 1],
        dim: 2,
    };
    let text = vec![0.0, 1.0, 1.0, 0.0];
    let chosen = cross_validate(&support, &text, 100.0, Choice::Search { fit: false }).unwrap();
    let mut labels =
        LabelSet::parse("[밥류]\n밥 | rice\n국\n".as_bytes(), Path::new("l.txt")).unwrap();
    labels.path = good.clone();
    Adapter {
        checkpoint: "blake3:abc".into(),
        labels,
        text,
        support,
        keys: chosen.keys,
        probe: chosen.probe,
        report: chosen.report,
    }
    .save(&good)
    .unwrap();
    let file = dir.path().join("mutated.safetensors");
    fuzz("adapter", &[read(&good)], iterations(4000), |bytes| {
        std::fs::write(&file, bytes).unwrap();
        match Adapter::load(&file) {
            Ok(a) => {
                // What loads is usable: the cache and the classes fit together.
                let classes = a.labels.classes.len();
                assert_eq!(a.text.len(), classes * a.support.dim);
                assert!(a.support.classes.iter().all(|&c| c < classes));
                assert_eq!(a.keys.len(), a.support.features.len());
                assert_eq!(a.class_embeddings().len(), a.text.len());
                a.cache().unwrap();
            }
            Err(e) => assert!(!format!("{e:#}").contains('\n'), "{e:#}"),
        }
    });
}

#[test]
fn index_databases_open_or_are_refused() {
    use foodclip::store::{FileState, Filter, Kind, Store};
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.sqlite");
    let kind = Kind {
        checkpoint: "blake3:abc".into(),
        mode: "fast-f32".into(),
        source: String::new(),
    };
    {
        let mut index = Store::open(&good, true, None).unwrap();
        index
            .batch(|b| {
                for i in 0..20u8 {
                    let state = FileState {
                        size: 1,
                        mtime: i as i64,
                    };
                    b.file(Path::new(&format!("/a/{i}.jpg")), &state, &[i])?;
                    b.embedding(&[i], &kind, 0, None, &[0.6, 0.8])?;
                }
                Ok(())
            })
            .unwrap();
    }
    let _ = std::fs::remove_file(dir.path().join("good.sqlite-wal"));
    let file = dir.path().join("mutated.sqlite");
    fuzz("index", &[read(&good)], iterations(600), |bytes| {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
        std::fs::write(&file, bytes).unwrap();
        for write in [false, true] {
            match Store::open(&file, write, None) {
                Ok(mut index) => {
                    if let Ok(rows) = index.rows(&kind, None) {
                        assert!(rows.iter().all(|r| r.vector.len() <= 2));
                    }
                    let _ = index.top(&kind, &[1.0, 0.0], &Filter::default(), 3);
                }
                Err(e) => assert!(!format!("{e:#}").contains('\n'), "{e:#}"),
            }
        }
    });
}
