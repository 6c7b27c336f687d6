//! NACLIP's dense pass against its Python reference on transformers' CLIP
//! (`tests/fixtures/generate.py naclip` writes `reference/naclip.json`): per-patch embeddings
//! within the parity tolerance and the same best class for every patch.

mod common;

use candle_core::Tensor;
use common::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Naclip {
    std: f64,
    checkpoints: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    checkpoint: String,
    images: Vec<Dense>,
}

#[derive(Deserialize)]
struct Dense {
    file: String,
    patches: Vec<Vec<f32>>,
    classes: Vec<usize>,
}

#[test]
fn patch_embeddings_and_class_maps_match_the_reference() {
    let text = std::fs::read_to_string(fixtures().join("reference/naclip.json")).unwrap();
    let naclip: Naclip = serde_json::from_str(&text).unwrap();
    assert_eq!(naclip.checkpoints.len(), 2);
    for entry in &naclip.checkpoints {
        let name = &entry.checkpoint;
        let ckpt = checkpoint(name);
        let classes: Vec<Vec<f32>> = reference(name)
            .classes
            .iter()
            .map(|c| c.embedding.clone())
            .collect();
        for img in &entry.images {
            // The model's exact input: the reference crop.
            let crop = image::open(fixtures().join("reference").join(name).join(&img.file))
                .unwrap()
                .to_rgb8();
            let size = ckpt.model.image_size();
            let pixels = Tensor::from_vec(
                ckpt.preprocess.to_chw(&crop),
                (1, 3, size, size),
                &ckpt.device,
            )
            .unwrap();
            let dense = ckpt
                .model
                .dense_image_features(&pixels, naclip.std)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(dense.len(), img.patches.len(), "{name}/{}", img.file);
            for (p, (ours, theirs)) in dense.iter().zip(&img.patches).enumerate() {
                let cos = cosine(ours, theirs);
                assert!(
                    cos >= 0.99999,
                    "{name}/{} patch {p}: cosine {cos}",
                    img.file
                );
                let best = classes
                    .iter()
                    .map(|c| cosine(ours, c))
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap()
                    .0;
                assert_eq!(best, img.classes[p], "{name}/{} patch {p}", img.file);
            }
        }
    }
}

#[test]
fn siglip_models_refuse_dense_maps_in_one_line() {
    let ckpt = checkpoint("tiny-siglip");
    let size = ckpt.model.image_size();
    let pixels = Tensor::zeros((1, 3, size, size), candle_core::DType::F32, &ckpt.device).unwrap();
    let e = ckpt
        .model
        .dense_image_features(&pixels, 5.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("need a CLIP model") && !e.contains('\n'), "{e}");
}

/// A table photo with two dishes in round bowls at known places: a red stew and a green
/// salad, each textured, on a beige, lightly textured table. (The fixtures' weights are random,
/// so dishes are told apart by what random features see, their colour and texture, not by what
/// they are.)
fn plate() -> (image::RgbImage, Vec<(String, [u32; 4])>) {
    let dishes = [
        ("stew", (170.0, 170.0, 120.0), [178u8, 52, 40]),
        ("salad", (460.0, 320.0, 110.0), [70, 150, 60]),
    ];
    let plate = image::RgbImage::from_fn(640, 480, |x, y| {
        let n = ((x * 7 + y * 13) % 9) as u8;
        for (_, (cx, cy, r), rgb) in &dishes {
            let (dx, dy) = (f64::from(x) - cx, f64::from(y) - cy);
            if dx * dx + dy * dy < r * r {
                let t = ((x * 31 + y * 17) % 23) as u8;
                return image::Rgb([rgb[0] + t, rgb[1] + t, rgb[2] + t / 2]);
            }
        }
        image::Rgb([196 + n, 180 + n, 150 + n])
    });
    let truth = dishes
        .iter()
        .map(|(name, (cx, cy, r), _)| {
            let b = |v: f64| v.round() as u32;
            (
                name.to_string(),
                [b(cx - r), b(cy - r), b(cx + r), b(cy + r)],
            )
        })
        .collect();
    (plate, truth)
}

/// The unit mean of a picture's unit patch embeddings.
fn prototype(ckpt: &foodclip::checkpoint::Checkpoint, img: &image::RgbImage) -> Vec<f32> {
    let size = ckpt.model.image_size() as u32;
    let img = image::imageops::resize(img, size, size, image::imageops::FilterType::Triangle);
    let pixels = Tensor::from_vec(
        ckpt.preprocess.to_chw(&img),
        (1, 3, size as usize, size as usize),
        &ckpt.device,
    )
    .unwrap();
    let dense = ckpt.model.dense_image_features(&pixels, 5.0).unwrap();
    let dense = dense.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let mut mean = vec![0f32; dense[0].len()];
    for p in &dense {
        let n = p.iter().map(|v| v * v).sum::<f32>().sqrt();
        for (m, v) in mean.iter_mut().zip(p) {
            *m += v / n;
        }
    }
    let n = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
    mean.iter().map(|v| v / n).collect()
}

#[test]
fn dishes_on_a_plate_are_found_where_they_were_put() {
    use foodclip::regions::auto::{blobs, class_map, AutoSettings};
    let (photo, truth) = plate();
    for name in ["tiny-openai", "tiny-gelu"] {
        // The classes: each pasted photo's own patch embeddings, and the bare table's.
        let finder = plate_finder(std::sync::Arc::new(checkpoint(name)));
        let (ckpt, embeddings) = (&finder.ckpt, &finder.embeddings);
        let settings = AutoSettings::default();
        let map = class_map(ckpt, &photo, embeddings, &settings).unwrap();
        let found = blobs(&map, truth.len(), settings.min_area);
        eprintln!("{name}: {} regions", found.len());
        assert_eq!(found.len(), truth.len(), "{name}: one region per dish");
        for (class, (file, rect)) in truth.iter().enumerate() {
            let blob = found
                .iter()
                .find(|b| b.class == class)
                .unwrap_or_else(|| panic!("{name}: no region for {file}"));
            // The bowl's disk on the canvas, against the region's mask.
            let (cx, cy, r) = (
                f64::from(rect[0] + rect[2]) / 2.0,
                f64::from(rect[1] + rect[3]) / 2.0,
                f64::from(rect[2] - rect[0]) / 2.0,
            );
            let (mut both, mut either) = (0usize, 0usize);
            for (i, &m) in blob.mask.iter().enumerate() {
                let x = ((i % map.width) as f64 + 0.5) * map.scale.0;
                let y = ((i / map.width) as f64 + 0.5) * map.scale.1;
                let t = (x - cx).powi(2) + (y - cy).powi(2) < r * r;
                both += usize::from(m && t);
                either += usize::from(m || t);
            }
            let mask_iou = both as f64 / either as f64;
            let box_iou = foodclip::eval::box_iou(blob.rect, *rect);
            eprintln!("{name}: {file} at {rect:?}: region {:?}, box IoU {box_iou:.3}, mask IoU {mask_iou:.3}", blob.rect);
            assert!(box_iou >= 0.5 && mask_iou >= 0.5, "{name}: {file}");
        }
    }
}

/// The finder of the plate's dishes on `ckpt`: each bowl's own patches and the bare table's as
/// the classes (the fixtures' weights are random).
fn plate_finder(
    ckpt: std::sync::Arc<foodclip::checkpoint::Checkpoint>,
) -> foodclip::regions::auto::DenseFinder {
    let (photo, truth) = plate();
    let crop = |r: [u32; 4]| {
        image::imageops::crop_imm(&photo, r[0], r[1], r[2] - r[0], r[3] - r[1]).to_image()
    };
    let mut protos: Vec<Vec<f32>> = truth
        .iter()
        .map(|(_, r)| prototype(&ckpt, &crop(*r)))
        .collect();
    protos.push(prototype(&ckpt, &crop([320, 0, 620, 180])));
    let dim = protos[0].len();
    let embeddings = Tensor::from_vec(protos.concat(), (protos.len(), dim), &ckpt.device).unwrap();
    foodclip::regions::auto::DenseFinder {
        ckpt,
        embeddings,
        names: truth.iter().map(|(n, _)| n.clone()).collect(),
        settings: foodclip::regions::auto::AutoSettings::default(),
    }
}

#[test]
fn leftovers_measure_found_dishes_by_their_masks_without_an_empty_tray() {
    use foodclip::leftovers::{examine_photos, Settings, Shot};
    use foodclip::preprocess::Fidelity;
    let (served, truth) = plate();
    // Returned: the stew's right half eaten down to its white bowl, the salad untouched; the
    // photo taken a little darker.
    let (cx, cy, r) = (170.0, 170.0, 120.0);
    let mut returned = served.clone();
    for (x, y, p) in returned.enumerate_pixels_mut() {
        let (dx, dy) = (f64::from(x) - cx, f64::from(y) - cy);
        if dx * dx + dy * dy < r * r && dx > 0.0 {
            let n = ((x * 5 + y * 11) % 7) as u8;
            *p = image::Rgb([228 + n, 226 + n, 218 + n]);
        }
        p.0 = p.0.map(|c| (f64::from(c) * 0.93).round() as u8);
    }
    let png = |img: &image::RgbImage| {
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        bytes
    };
    let (served, returned) = (png(&served), png(&returned));
    let finder = plate_finder(std::sync::Arc::new(checkpoint("tiny-openai")));
    let ckpt = finder.ckpt.clone();
    let mut regions = foodclip::regions::Regions::auto();
    regions.bind(std::sync::Arc::new(finder));
    let settings = Settings {
        align: true,
        max_pixels: 1 << 26,
        fidelity: Fidelity::Exact,
    };
    let (pieces, measured) = examine_photos(
        Shot::upload(&served, "served.png"),
        Shot::upload(&returned, "returned.png"),
        &regions,
        &ckpt.preprocess,
        None,
        settings,
        false,
    );
    let measured = measured.unwrap();
    assert_eq!(pieces.len(), truth.len());
    assert_eq!(measured.compartments.len(), truth.len());
    for (region, amount) in &measured.compartments {
        let name = region.name.as_deref().unwrap();
        let amount = amount.as_ref().unwrap();
        let leftover = amount.leftover.unwrap();
        eprintln!(
            "{name}: served {:.3}, returned {:.3}, leftover {leftover:.3}",
            amount.served, amount.returned
        );
        assert!(region.segmentation.is_some());
        let want = if name == "stew" { 0.5 } else { 1.0 };
        assert!((leftover - want).abs() < 0.1, "{name}: {leftover}");
    }
}

#[test]
fn classify_regions_auto_answers_as_the_same_boxes_given_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("plate.png");
    plate().0.save(&photo).unwrap();
    let labels = fixtures().join("labels/mixed.txt");
    let run = |regions: &std::path::Path| {
        let o = foodclip()
            .args(["--exact-preprocess", "--model"])
            .arg(fixtures().join("tiny-openai"))
            .args(["classify", "-k", "0", "--format", "jsonl", "--labels"])
            .arg(&labels)
            .arg("--regions")
            .arg(regions)
            .arg(&photo)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        jsonl_records(&o.stdout)
    };
    let found = run(std::path::Path::new("auto"));
    assert!(!found.is_empty());
    let names: Vec<String> = foodclip::labels::LabelSet::load(&labels)
        .unwrap()
        .classes
        .iter()
        .map(|c| c.display().to_string())
        .collect();
    let mut csv = String::from("path,x1,y1,x2,y2\n");
    for r in &found {
        let region = &r["region"];
        assert!(
            names.contains(&region["name"].as_str().unwrap().to_string()),
            "{r}"
        );
        let b: Vec<u64> = region["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(
            b[0] < b[2] && b[2] <= 640 && b[1] < b[3] && b[3] <= 480,
            "{r}"
        );
        // Its mask: COCO RLE over the photo, every pixel of it inside the box.
        let rle: foodclip::regions::mask::Rle =
            serde_json::from_value(region["segmentation"].clone()).unwrap();
        assert_eq!(rle.size, [480, 640]);
        let runs = rle.runs();
        assert_eq!(runs.iter().sum::<u64>(), 480 * 640);
        let (mut at, mut inside) = (0u64, 0u64);
        for (i, run) in runs.iter().enumerate() {
            if i % 2 == 1 {
                for p in at..at + run {
                    let (x, y) = (p / 480, p % 480);
                    assert!(
                        x >= b[0] && x < b[2] && y >= b[1] && y < b[3],
                        "{r}: ({x}, {y})"
                    );
                }
                inside += run;
            }
            at += run;
        }
        assert!(inside > 0, "{r}");
        csv += &format!("{},{},{},{},{}\n", photo.display(), b[0], b[1], b[2], b[3]);
    }
    let boxes = dir.path().join("boxes.csv");
    std::fs::write(&boxes, csv).unwrap();
    let given = run(&boxes);
    assert_eq!(given.len(), found.len());
    for (a, b) in found.iter().zip(&given) {
        assert_eq!(a["region"]["box"], b["region"]["box"]);
        assert_eq!(a["predictions"], b["predictions"], "{a}\n{b}");
    }
    // Commands that do not find regions yet say so in one line.
    let o = foodclip()
        .args(["--model"])
        .arg(fixtures().join("tiny-openai"))
        .args(["embed", "--regions", "auto"])
        .arg(&photo)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--regions auto finds dishes from a label file")
            && e.trim().lines().count() == 1,
        "{e}"
    );
}

#[test]
fn eval_pairs_found_regions_with_the_truths_boxes() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("plate.png");
    let (img, truth) = plate();
    img.save(&photo).unwrap();
    // What classify --regions auto finds (random weights: not the bowls).
    let o = classify_auto(&photo, "jsonl", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let found: Vec<[u32; 4]> = jsonl_records(&o.stdout)
        .iter()
        .map(|r| serde_json::from_value(r["region"]["box"].clone()).unwrap())
        .collect();
    assert!(!found.is_empty());
    // The truth: the two bowls, a dish on the bare table, and the first found region's box
    // a little off (so that one pairs), each a dish of the label file.
    let mut boxes: Vec<[u32; 4]> = truth.iter().map(|(_, r)| *r).collect();
    boxes.push([420, 20, 620, 140]);
    let f = found[0];
    boxes.push([f[0] + 4, f[1], f[2], f[3] - 4]);
    let names = ["bibimbap", "fried chicken", "떡볶이", "김치찌개"];
    let mut csv = String::from("path,x1,y1,x2,y2,label\n");
    for (b, name) in boxes.iter().zip(names) {
        csv += &format!("plate.png,{},{},{},{},{name}\n", b[0], b[1], b[2], b[3]);
    }
    let data = dir.path().join("truth.csv");
    std::fs::write(&data, csv).unwrap();
    let pairs = foodclip::eval::pair_boxes(&found, &boxes);
    let paired = pairs.iter().flatten().count();
    assert_eq!(pairs[0], Some(3));
    let o = foodclip()
        .args(["--exact-preprocess", "--model"])
        .arg(fixtures().join("tiny-openai"))
        .args(["eval", "--format", "json", "--regions", "auto", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["unit"], "regions");
    assert_eq!(v["n"].as_u64().unwrap() as usize, paired, "{v}");
    assert_eq!(
        v["unknown_photos"].as_u64().unwrap() as usize,
        found.len() - paired
    );
    let missed = v["missed"].as_array().unwrap();
    assert_eq!(missed.len(), boxes.len() - paired, "{v}");
    assert!(missed.iter().any(|m| m["label"] == "떡볶이"), "{v}");
    assert!(!missed.iter().any(|m| m["label"] == "김치찌개"), "{v}");
    let support: u64 = v["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["support"].as_u64().unwrap())
        .sum();
    assert_eq!(support as usize, paired);
    // Without a region file, eval has no boxes to pair with: one line, exit 2.
    let o = foodclip()
        .args(["--model"])
        .arg(fixtures().join("tiny-openai"))
        .args(["eval", "--regions", "auto", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("region file with labels") && e.trim().lines().count() == 1,
        "{e}"
    );
}

#[test]
fn leftovers_with_regions_auto_run_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (served, returned) = (dir.path().join("served"), dir.path().join("returned"));
    std::fs::create_dir_all(&served).unwrap();
    std::fs::create_dir_all(&returned).unwrap();
    let img = plate().0;
    img.save(served.join("tray1.png")).unwrap();
    img.save(returned.join("tray1.png")).unwrap();
    let o = foodclip()
        .args(["--exact-preprocess", "--model"])
        .arg(fixtures().join("tiny-openai"))
        .args([
            "leftovers",
            "--regions",
            "auto",
            "--format",
            "jsonl",
            "--labels",
        ])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg("--served")
        .arg(&served)
        .arg("--returned")
        .arg(&returned)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records = jsonl_records(&o.stdout);
    let found = jsonl_records(&classify_auto(&served.join("tray1.png"), "jsonl", &[]).stdout);
    assert_eq!(records.len(), found.len());
    for (r, f) in records.iter().zip(&found) {
        assert_eq!(r["box"], f["region"]["box"]);
        assert_eq!(r["compartment"], f["region"]["name"]);
        // The same photo returned: whatever was served came back.
        if let Some(l) = r["leftover"].as_f64() {
            assert!(l > 0.97, "{r}");
        }
    }
}

#[test]
fn preview_draws_the_class_map() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("plate.png");
    let (img, _) = plate();
    img.save(&photo).unwrap();
    let out = dir.path().join("map.png");
    let preview = |labels: bool| {
        let mut c = foodclip();
        c.arg("--model")
            .arg(fixtures().join("tiny-openai"))
            .arg("preview")
            .arg(&photo)
            .args(["--regions", "auto", "-o"])
            .arg(&out);
        if labels {
            c.arg("--labels").arg(fixtures().join("labels/mixed.txt"));
        }
        c.output().unwrap()
    };
    let o = preview(true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let map = image::open(&out).unwrap().to_rgb8();
    assert_eq!(map.dimensions(), img.dimensions());
    let tinted = map
        .pixels()
        .zip(img.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert!(tinted > 0 && tinted < 640 * 480, "{tinted}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("% of the photo"), "{stderr}");
    let o = preview(false);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("give --labels"));
}

#[test]
fn found_regions_write_coco_results_with_masks() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("plate.png");
    plate().0.save(&photo).unwrap();
    let run = |format: &str| ok(&classify_auto(&photo, format, &[])).to_vec();
    let records = jsonl_records(&run("jsonl"));
    let coco: Vec<serde_json::Value> = serde_json::from_slice(&run("coco")).unwrap();
    assert_eq!(coco.len(), records.len());
    for (c, r) in coco.iter().zip(&records) {
        assert_eq!(c["image_id"], 1);
        let category = c["category_id"].as_u64().unwrap();
        assert!((1..=5).contains(&category), "{c}");
        let b = &r["region"]["box"];
        let xywh: Vec<u64> = (0..4).map(|i| c["bbox"][i].as_u64().unwrap()).collect();
        assert_eq!(xywh[0], b[0].as_u64().unwrap());
        assert_eq!(xywh[0] + xywh[2], b[2].as_u64().unwrap());
        assert_eq!(c["segmentation"], r["region"]["segmentation"], "{c}");
    }
}

#[test]
fn a_background_file_replaces_the_built_in_one() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("plate.png");
    plate().0.save(&photo).unwrap();
    let run = |background: &std::path::Path| {
        classify_auto(
            &photo,
            "jsonl",
            &["--background".as_ref(), background.as_os_str()],
        )
    };
    let missing = dir.path().join("nope.txt");
    let o = run(&missing);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("nope.txt") && e.trim().lines().count() == 1,
        "{e}"
    );
    let table = dir.path().join("table.txt");
    std::fs::write(&table, "a wooden table\na tablecloth\n").unwrap();
    let o = run(&table);
    assert!(
        o.status.code() == Some(0) || o.status.code() == Some(1),
        "{o:?}"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("2 label prompts") || stderr.contains("of 1 photo;"),
        "{stderr}"
    );
}

#[test]
fn draw_tints_each_found_regions_mask() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("plate.png");
    plate().0.save(&photo).unwrap();
    let drawn = dir.path().join("drawn");
    let o = classify_auto(&photo, "jsonl", &["--draw".as_ref(), drawn.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let regions = jsonl_records(&o.stdout).len();
    let svg = std::fs::read_to_string(drawn.join("plate.svg")).unwrap();
    assert_eq!(svg.matches("class=\"mask\"").count(), regions, "{svg:.300}");
    assert_eq!(svg.matches("<rect").count(), regions);
}

/// `foodclip --model tiny-openai classify --regions auto --format FORMAT --labels mixed.txt
/// EXTRA PHOTO`.
fn classify_auto(
    photo: &std::path::Path,
    format: &str,
    extra: &[&std::ffi::OsStr],
) -> std::process::Output {
    foodclip()
        .args(["--exact-preprocess", "--model"])
        .arg(fixtures().join("tiny-openai"))
        .args([
            "classify",
            "--regions",
            "auto",
            "--format",
            format,
            "--labels",
        ])
        .arg(fixtures().join("labels/mixed.txt"))
        .args(extra)
        .arg(photo)
        .output()
        .unwrap()
}
