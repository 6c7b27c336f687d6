//! Trays: every region source (COCO JSON, CSV, a YOLO folder, a layout, a grid) gives, per
//! region, the scores of the same box cut out, saved as a PNG and classified alone; on a plain
//! photo and on one stored rotated (EXIF orientation 6, boxes in display coordinates). Then
//! clipping, empty and invalid boxes, photos without regions, `eval` on regions, COCO results,
//! stored embeddings, `--resume`, drawings and `preview`.

mod common;

use common::browser::{chromium, screenshot};
use common::photos::{synthetic, write_jpeg};
use common::*;
use foodclip::preprocess::{decode::decode, DEFAULT_MAX_PIXELS};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A folder with `trays/plain.jpg` (640 x 480) and `trays/rot6.jpg` (stored 360 x 200 with
/// EXIF orientation 6: displayed 200 x 360).
fn trays() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("trays")).unwrap();
    write_jpeg(&synthetic(640, 480, 3), &dir.path().join("trays/plain.jpg"));
    std::fs::copy(
        fixtures().join("images/exif-orient6.jpg"),
        dir.path().join("trays/rot6.jpg"),
    )
    .unwrap();
    dir
}

/// The boxes (display pixels) and labels used for both photos.
const PLAIN: [([u32; 4], &str); 3] = [
    ([10, 20, 300, 250], "김치찌개"),
    ([320, 0, 640, 240], "bibimbap"),
    ([100, 260, 420, 470], "fried chicken"),
];
const ROT6: [([u32; 4], &str); 2] = [
    ([0, 0, 120, 150], "떡볶이"),
    ([50, 180, 200, 360], "bibimbap"),
];

fn labels() -> PathBuf {
    fixtures().join("labels/mixed.txt")
}

/// Runs foodclip on the tiny checkpoint in `dir`, exact preprocessing unless `fast`.
fn run(dir: &Path, fast: bool, args: &[&str]) -> Output {
    let mut cmd = foodclip();
    cmd.current_dir(dir)
        .arg("--model")
        .arg(fixtures().join("tiny-openai"));
    if !fast {
        cmd.arg("--exact-preprocess");
    }
    cmd.args(args).output().unwrap()
}

/// `foodclip classify PHOTOS --labels mixed.txt EXTRA...` in `dir`.
fn classify_with(dir: &Path, fast: bool, photos: &[&str], extra: &[&str]) -> Output {
    let labels = labels();
    let mut args = vec!["classify", "--labels", labels.to_str().unwrap()];
    args.extend(photos);
    args.extend(extra);
    run(dir, fast, &args)
}

/// `classify` of both tray photos with `--regions trays.csv --format jsonl` and `extra`.
fn csv_trays(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--regions", "trays.csv", "--format", "jsonl"];
    args.extend(extra);
    classify_with(dir, false, &["trays/plain.jpg", "trays/rot6.jpg"], &args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `classify` records (JSONL, every class) for the photos with `source` flags.
fn classify(dir: &Path, fast: bool, source: &[&str]) -> Vec<Value> {
    let mut extra = vec!["-k", "0", "--format", "jsonl"];
    extra.extend(source);
    let o = classify_with(dir, fast, &["trays/plain.jpg", "trays/rot6.jpg"], &extra);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    jsonl_records(&o.stdout)
}

/// Each label's score in a record.
fn scores(record: &Value) -> HashMap<String, f64> {
    record["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["label"].as_str().unwrap().to_string(),
                p["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn boxes(records: &[Value], photo: &str) -> Vec<[u32; 4]> {
    records
        .iter()
        .filter(|r| r["path"] == photo)
        .map(|r| serde_json::from_value(r["region"]["box"].clone()).unwrap())
        .collect()
}

/// The fast path's scores stay within 0.02 of the exact path's, record by record.
fn fast_close_to_exact(fast: &[Value], exact: &[Value]) {
    assert_eq!(fast.len(), exact.len());
    for (f, e) in fast.iter().zip(exact) {
        let (f, e) = (scores(f), scores(e));
        for (label, v) in &e {
            assert!((f[label] - v).abs() < 0.02, "{label} {} vs {v}", f[label]);
        }
    }
}

/// The upright picture of a photo, as foodclip decodes it in full.
fn upright(path: &Path) -> image::RgbImage {
    decode(&std::fs::read(path).unwrap(), DEFAULT_MAX_PIXELS, |_| 1)
        .unwrap()
        .0
}

/// Cuts every region of `records` out of its photo, saves it as a PNG, classifies the PNGs
/// alone, and checks each region's scores against its PNG's within 1e-4.
fn check_against_crops(dir: &Path, records: &[Value]) {
    let crops = dir.join("crops");
    std::fs::create_dir_all(&crops).unwrap();
    let mut files = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let photo = dir.join(r["path"].as_str().unwrap());
        let [x1, y1, x2, y2]: [u32; 4] =
            serde_json::from_value(r["region"]["box"].clone()).unwrap();
        let crop = image::imageops::crop_imm(&upright(&photo), x1, y1, x2 - x1, y2 - y1).to_image();
        let file = crops.join(format!("{i}.png"));
        crop.save(&file).unwrap();
        files.push(file);
    }
    let mut args = vec!["classify", "-k", "0", "--format", "jsonl", "--labels"];
    let labels = labels();
    args.push(labels.to_str().unwrap());
    let names: Vec<String> = files
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    args.extend(names.iter().map(String::as_str));
    let o = run(dir, false, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let alone = jsonl_records(&o.stdout);
    assert_eq!(alone.len(), records.len());
    for (r, a) in records.iter().zip(&alone) {
        let (got, want) = (scores(r), scores(a));
        for (label, w) in &want {
            let g = got[label];
            assert!(
                (g - w).abs() < 1e-4,
                "{} {}: {label} {g} vs {w}",
                r["path"],
                r["region"]
            );
        }
    }
}

fn coco_json() -> Value {
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let names = ["김치찌개", "bibimbap", "fried chicken", "떡볶이"];
    for (id, (file, boxes)) in [
        ("trays/plain.jpg", &PLAIN[..]),
        ("trays/rot6.jpg", &ROT6[..]),
    ]
    .into_iter()
    .enumerate()
    {
        images.push(json!({"id": id + 1, "file_name": file}));
        for (b, label) in boxes {
            let [x1, y1, x2, y2] = b.map(f64::from);
            // Fractions of a pixel round to the box.
            let bbox = [x1 + 0.3, y1 - 0.2, x2 - x1 - 0.4, y2 - y1 + 0.1];
            let category = names.iter().position(|n| n == label).unwrap() + 1;
            annotations.push(json!({"id": 100 + annotations.len(), "image_id": id + 1,
                "bbox": bbox, "category_id": category}));
        }
    }
    let categories: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"id": i + 1, "name": n}))
        .collect();
    json!({"images": images, "annotations": annotations, "categories": categories})
}

fn csv_rows() -> String {
    let mut text = String::from("path,x1,y1,x2,y2,label\n");
    for (file, boxes) in [
        ("trays/plain.jpg", &PLAIN[..]),
        ("trays/rot6.jpg", &ROT6[..]),
    ] {
        for ([x1, y1, x2, y2], label) in boxes {
            text.push_str(&format!("{file},{x1},{y1},{x2},{y2},{label}\n"));
        }
    }
    text
}

fn expected(photo: &str) -> Vec<[u32; 4]> {
    let list = if photo.ends_with("plain.jpg") {
        &PLAIN[..]
    } else {
        &ROT6[..]
    };
    list.iter().map(|(b, _)| *b).collect()
}

#[test]
fn every_source_gives_the_scores_of_the_box_saved_alone() {
    let dir = trays();
    let d = dir.path();
    std::fs::write(d.join("trays.json"), coco_json().to_string()).unwrap();
    std::fs::write(d.join("trays.csv"), csv_rows()).unwrap();
    let yolo = d.join("yolo");
    std::fs::create_dir(&yolo).unwrap();
    for (stem, (w, h), boxes) in [
        ("plain", (640.0, 480.0), &PLAIN[..]),
        ("rot6", (200.0, 360.0), &ROT6[..]),
    ] {
        let lines: String = boxes
            .iter()
            .map(|(b, _)| {
                let [x1, y1, x2, y2] = b.map(f64::from);
                format!(
                    "0 {} {} {} {} 0.9\n",
                    (x1 + x2) / 2.0 / w,
                    (y1 + y2) / 2.0 / h,
                    (x2 - x1) / w,
                    (y2 - y1) / h
                )
            })
            .collect();
        std::fs::write(yolo.join(format!("{stem}.txt")), lines).unwrap();
    }
    // The resource file macOS leaves beside a file it copies: hidden, not a YOLO file.
    std::fs::write(yolo.join("._plain.txt"), b"\0\x05\x16\x07\xff").unwrap();
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/trays/school-5.toml");
    let layout = layout.to_str().unwrap();

    let mut all = Vec::new();
    for source in [
        vec!["--regions", "trays.json"],
        vec!["--regions", "trays.csv"],
        vec!["--regions", "yolo"],
    ] {
        let records = classify(d, false, &source);
        for photo in ["trays/plain.jpg", "trays/rot6.jpg"] {
            assert_eq!(
                boxes(&records, photo),
                expected(photo),
                "{source:?} {photo}"
            );
        }
        all.extend(records);
    }
    let coco = classify(d, false, &["--regions", "trays.json"]);
    assert_eq!(coco[0]["region"]["id"], 100);
    assert_eq!(coco[4]["region"]["index"], 1);
    let layout_records = classify(d, false, &["--layout", layout]);
    assert_eq!(layout_records.len(), 10);
    assert_eq!(layout_records[3]["region"]["name"], "rice");
    let grid = classify(d, false, &["--grid", "2x3"]);
    assert_eq!(grid.len(), 12);
    assert_eq!(grid[5]["region"]["name"], "r2c3");
    assert_eq!(boxes(&grid, "trays/rot6.jpg")[5], [133, 180, 200, 360]);
    all.extend(layout_records);
    all.extend(grid);
    check_against_crops(d, &all);

    // The fast path (DCT scaling, SIMD resizing) stays close to the exact one.
    let fast = classify(d, true, &["--regions", "trays.csv"]);
    let exact = classify(d, false, &["--regions", "trays.csv"]);
    fast_close_to_exact(&fast, &exact);
}

#[test]
fn large_photos_shrink_while_decoding_as_far_as_every_region_allows() {
    // 2400 x 1800: whole, 1/8 would do; a 2x2 grid's cells (1200 x 900) allow 1/4, which the
    // fast path must not pass, and the scores stay those of the exact path.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("trays")).unwrap();
    write_jpeg(&synthetic(2400, 1800, 9), &dir.path().join("trays/big.jpg"));
    let args = |fast| {
        let o = classify_with(
            dir.path(),
            fast,
            &["trays/big.jpg"],
            &["--grid", "2x2", "-k", "0", "--format", "jsonl"],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        jsonl_records(&o.stdout)
    };
    let (fast, exact) = (args(true), args(false));
    assert_eq!(fast.len(), 4);
    fast_close_to_exact(&fast, &exact);
}

#[test]
fn bad_boxes_and_photos_without_regions_are_error_records() {
    let dir = trays();
    let d = dir.path();
    std::fs::write(d.join("extra.png"), []).unwrap();
    std::fs::write(
        d.join("boxes.tsv"),
        "trays/plain.jpg\t600\t400\t700\t500\n\
         trays/plain.jpg\t5\t5\t5\t50\n\
         trays/plain.jpg\t1\tx\t20\t20\n\
         trays/plain.jpg\t30\t30\t10\t60\n\
         trays/plain.jpg\t0\t0\t64\t48\n\
         trays/gone.jpg\t0\t0\t10\t10\n\
         trays/gone.jpg\t0\t0\t20\t10\n",
    )
    .unwrap();
    let o = classify_with(
        d,
        false,
        &["trays/plain.jpg", "trays/rot6.jpg"],
        &["--regions", "boxes.tsv", "--format", "jsonl"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let records = jsonl_records(&o.stdout);
    assert_eq!(records.len(), 6);
    // Clipped, with a warning.
    assert_eq!(records[0]["region"]["box"], json!([600, 400, 640, 480]));
    assert!(records[0]["predictions"].is_array());
    let err = stderr(&o);
    assert!(
        err.contains("trays/plain.jpg [region 0]: the box crosses the border"),
        "{err}"
    );
    // Empty, non-numeric and inverted boxes: error records; the rest go on.
    assert!(records[1]["error"]
        .as_str()
        .unwrap()
        .starts_with("empty box"));
    assert!(records[2]["error"]
        .as_str()
        .unwrap()
        .contains("y1 is \"x\""));
    assert!(records[3]["error"]
        .as_str()
        .unwrap()
        .starts_with("inverted box"));
    assert!(records[4]["predictions"].is_array());
    // A photo the file does not list.
    assert_eq!(records[5]["path"], "trays/rot6.jpg");
    assert!(records[5]["error"]
        .as_str()
        .unwrap()
        .starts_with("no regions in boxes.tsv"));
    assert!(records[5].get("region").is_none());
    assert!(
        err.contains("2 regions done, 4 failed, of 2 photos"),
        "{err}"
    );
    assert!(
        err.contains("2 listed for photos not given, ignored"),
        "{err}"
    );
    // CSV columns carry the region and its box.
    let o = classify_with(
        d,
        false,
        &["trays/plain.jpg"],
        &["--regions", "boxes.tsv", "--format", "csv", "-k", "1"],
    );
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "path,region,x1,y1,x2,y2,rank,label,score,prob,error"
    );
    assert!(
        lines[1].starts_with("trays/plain.jpg,0,600,400,640,480,1,"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("trays/plain.jpg,1,,,,,,,,,\"empty box"),
        "{}",
        lines[2]
    );

    // A region file that cannot be parsed: exit 2, naming the file and line.
    std::fs::write(
        d.join("broken.csv"),
        "trays/plain.jpg,1,2,3,4\ntrays/plain.jpg,1\n",
    )
    .unwrap();
    let o = classify_with(d, false, &["trays/plain.jpg"], &["--regions", "broken.csv"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("broken.csv:2: expected path,x1,y1,x2,y2[,label]"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::write(
        d.join("bad.toml"),
        "[[compartment]]\nname = \"a\"\nbox = [0, 0, 2, 1]\n",
    )
    .unwrap();
    let o = classify_with(d, false, &["trays/plain.jpg"], &["--layout", "bad.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("outside [0, 1]"), "{}", stderr(&o));
}

/// The top-1 class of each region of `records`.
fn top1(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["predictions"][0]["label"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn eval_scores_regions_from_coco_and_csv() {
    let dir = trays();
    let d = dir.path();
    std::fs::write(d.join("trays.csv"), csv_rows()).unwrap();
    let best = top1(&classify(d, false, &["--regions", "trays.csv"]));
    // Truths: the first two regions are labelled with what the model answers (right), the
    // others with another class (wrong): top-1 is 2/5, checked by hand.
    let other = |label: &str| {
        if label == "fried chicken" {
            "떡볶이"
        } else {
            "fried chicken"
        }
    };
    let truths: Vec<&str> = best
        .iter()
        .enumerate()
        .map(|(i, b)| if i < 2 { b.as_str() } else { other(b) })
        .collect();
    let all: Vec<([u32; 4], &str)> = PLAIN.iter().chain(&ROT6).map(|(b, _)| (*b, "")).collect();
    let mut csv = String::new();
    let mut coco = coco_json();
    let names = ["김치찌개", "bibimbap", "fried chicken", "떡볶이", "a very long dish name that keeps going with rice, pork, kimchi, tofu, egg, scallions, sesame, chili and much more besides"];
    for (i, (([x1, y1, x2, y2], _), truth)) in all.iter().zip(&truths).enumerate() {
        let file = if i < 3 {
            "trays/plain.jpg"
        } else {
            "trays/rot6.jpg"
        };
        // The long name's first name, as the label file spells it.
        csv.push_str(&format!("{file},{x1},{y1},{x2},{y2},\"{truth}\"\n"));
        coco["annotations"][i]["category_id"] =
            json!(names.iter().position(|n| n == truth).unwrap() + 1);
    }
    coco["categories"] = Value::Array(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"id": i + 1, "name": n}))
            .collect(),
    );
    // A region whose label names no class: listed with its box, not scored.
    csv.push_str("trays/plain.jpg,0,0,64,48,mystery\n");
    std::fs::write(d.join("truth.csv"), csv).unwrap();
    std::fs::write(d.join("truth.json"), coco.to_string()).unwrap();
    let labels = labels();
    for set in ["truth.csv", "truth.json"] {
        let report = d.join(format!("report-{set}"));
        let o = run(
            d,
            false,
            &[
                "eval",
                set,
                "--labels",
                labels.to_str().unwrap(),
                "--format",
                "json",
                "--report",
                report.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{set}: {}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["unit"], "regions", "{set}");
        assert_eq!(v["n"], 5, "{set}");
        if set == "truth.csv" {
            let unmatched = &v["unmatched"][0];
            assert_eq!(unmatched["label"], "mystery");
            assert_eq!(unmatched["path"], "trays/plain.jpg");
            assert_eq!(unmatched["region"]["box"], json!([0, 0, 64, 48]));
        }
        assert!(
            (v["top1"].as_f64().unwrap() - 0.4).abs() < 1e-9,
            "{set}: {}",
            v["top1"]
        );
        let html = std::fs::read_to_string(report.join("index.html")).unwrap();
        // Three misclassified regions, each with its crop as the thumbnail.
        assert_eq!(
            html.matches("<img alt=\"\" src=\"data:image/jpeg").count(),
            3,
            "{set}"
        );
        assert!(
            html.contains("plain.jpg [") || html.contains("rot6.jpg ["),
            "{set}"
        );
    }
}

#[test]
fn coco_results_read_back() {
    let dir = trays();
    let d = dir.path();
    std::fs::write(d.join("trays.json"), coco_json().to_string()).unwrap();
    let records = classify(d, false, &["--regions", "trays.json"]);
    let o = classify_with(
        d,
        false,
        &["trays/plain.jpg", "trays/rot6.jpg"],
        &["--regions", "trays.json", "--format", "coco"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let results: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(results.len(), 5);
    let names = ["김치찌개", "bibimbap", "fried chicken", "떡볶이"];
    for (res, rec) in results.iter().zip(&records) {
        let [x1, y1, x2, y2]: [u64; 4] =
            serde_json::from_value(rec["region"]["box"].clone()).unwrap();
        assert_eq!(res["bbox"], json!([x1, y1, x2 - x1, y2 - y1]));
        assert_eq!(res["image_id"], rec["region"]["image_id"]);
        // The best class that has a category.
        let best = rec["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|p| {
                names
                    .iter()
                    .position(|n| p["label"] == *n)
                    .map(|c| (c, p["prob"].clone()))
            })
            .unwrap();
        assert_eq!(res["category_id"], best.0 + 1);
        assert_eq!(res["score"], best.1);
    }
    let o = classify_with(
        d,
        false,
        &["trays/plain.jpg"],
        &["--grid", "2x2", "--format", "coco"],
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn stored_region_embeddings_and_resume_keep_every_region() {
    let dir = trays();
    let d = dir.path();
    std::fs::write(d.join("trays.csv"), csv_rows()).unwrap();
    let o = csv_trays(d, &["--save-embeddings", "e.safetensors"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = jsonl_records(&o.stdout);
    let o = classify_with(
        d,
        false,
        &[],
        &["--embeddings", "e.safetensors", "--format", "jsonl"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let again = jsonl_records(&o.stdout);
    assert_eq!(again.len(), 5);
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a["region"], b["region"]);
        for (label, s) in scores(a) {
            assert!((scores(b)[&label] - s).abs() < 1e-6);
        }
    }
    // --resume after the first photo's records: the second photo's regions are added.
    for format in ["jsonl", "csv"] {
        let out = d.join(format!("out.{format}"));
        let o = classify_with(
            d,
            false,
            &["trays/plain.jpg"],
            &[
                "--regions",
                "trays.csv",
                "--format",
                format,
                "-o",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let o = classify_with(
            d,
            false,
            &["trays/plain.jpg", "trays/rot6.jpg"],
            &[
                "--regions",
                "trays.csv",
                "--format",
                format,
                "-o",
                out.to_str().unwrap(),
                "--resume",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let text = std::fs::read_to_string(&out).unwrap();
        let regions = if format == "jsonl" {
            jsonl_records(text.as_bytes()).len()
        } else {
            text.lines()
                .skip(1)
                .filter(|l| l.split(',').nth(6) == Some("1"))
                .count()
        };
        assert_eq!(regions, 5, "{format}: {text}");
        assert!(stderr(&o).contains("1 skipped"), "{}", stderr(&o));
    }
}

#[test]
fn drawings_show_the_boxes_in_a_browser_and_preview_fits_a_layout() {
    let dir = trays();
    let d = dir.path();
    std::fs::write(d.join("trays.csv"), csv_rows()).unwrap();
    let o = csv_trays(d, &["--draw", "drawn"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let best = top1(&jsonl_records(&o.stdout));
    let svg = std::fs::read_to_string(d.join("drawn/plain.svg")).unwrap();
    assert_eq!(svg.matches("<rect ").count(), 3);
    assert!(svg.contains(&format!(">{} ", best[0])), "{svg:.300}");
    assert!(d.join("drawn/rot6.svg").is_file());

    // preview: the layout's boxes on the photo (PNG), named in SVG.
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("labels/trays/school-5.toml");
    let o = run(
        d,
        false,
        &[
            "preview",
            "trays/plain.jpg",
            "--layout",
            layout.to_str().unwrap(),
            "-o",
            "fit.png",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("region rice: ["), "{}", stderr(&o));
    let fit = image::open(d.join("fit.png")).unwrap().to_rgb8();
    assert_eq!(fit.dimensions(), (640, 480));
    let red = fit.pixels().filter(|p| p.0 == [230, 25, 75]).count();
    assert!(red > 500, "{red} box pixels");
    let o = run(
        d,
        false,
        &[
            "preview",
            "trays/rot6.jpg",
            "--layout",
            layout.to_str().unwrap(),
            "-o",
            "fit.svg",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let fit = std::fs::read_to_string(d.join("fit.svg")).unwrap();
    assert!(fit.contains(">rice</text>") && fit.contains("viewBox=\"0 0 200 360\""));

    let Some(browser) = chromium() else {
        return;
    };
    // The drawing as a browser shows it: the photo, and the first box's colour around it.
    let page = d.join("drawn/plain.svg");
    let png = d.join("shot.png");
    screenshot(&browser, &page, &png, &d.join("profile"), (640, 480));
    let shot = image::open(&png).unwrap().to_rgb8();
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tray-drawing.png");
    let _ = std::fs::copy(&png, keep);
    let near = |p: &image::Rgb<u8>, c: [u8; 3]| p.0.iter().zip(c).all(|(a, b)| a.abs_diff(b) < 30);
    let red = shot.pixels().filter(|p| near(p, [230, 25, 75])).count();
    let green = shot.pixels().filter(|p| near(p, [60, 180, 75])).count();
    assert!(
        red > 300 && green > 300,
        "boxes on screen: {red} red, {green} green pixels"
    );
    let colourful = shot
        .pixels()
        .filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 60)
        .count();
    assert!(
        colourful > 50_000,
        "the photo is on screen ({colourful} pixels)"
    );
}
