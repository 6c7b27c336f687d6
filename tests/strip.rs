//! A photo of extreme proportions is prepared in bounded memory: only the part of the resized
//! picture that the centre crop keeps is resampled. Its own test binary, so that the peak
//! resident size of the children it measures is theirs alone.

mod common;

use common::{children_peak_kib, fixtures, foodclip};
use std::path::Path;

/// A `w x h` PNG of broad bands (a 100000 x 2 one is a few KB).
fn strip(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let band = (x.max(y) / 500 % 256) as u8;
        image::Rgb([band, 255 - band, (band / 2).wrapping_mul(3)])
    });
    img.save(path).unwrap();
}

#[test]
fn a_100000_by_2_strip_is_prepared_in_bounded_memory_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide.png");
    let tall = dir.path().join("tall.png");
    strip(&wide, 100_000, 2);
    strip(&tall, 2, 100_000);
    assert!(std::fs::metadata(&wide).unwrap().len() < 64 * 1024);
    for exact in [true, false] {
        let mut cmd = foodclip();
        cmd.arg("--model").arg(fixtures().join("tiny-openai"));
        if exact {
            cmd.arg("--exact-preprocess");
        }
        let o = cmd
            .args(["embed", "--format", "jsonl"])
            .arg(&wide)
            .arg(&tall)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(common::jsonl_records(&o.stdout).len(), 2);
    }
    // The whole resized picture (11.2 M x 224 x 3 bytes) alone would take 7.5 GB.
    let peak = children_peak_kib();
    assert!(peak < 512 * 1024, "peak resident size {peak} KiB");
}

#[test]
fn the_strip_window_is_the_crop_of_the_whole_resize() {
    // Small enough to resize whole: the windowed preparation gives the same pixels.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strip.png");
    strip(&path, 3000, 7);
    let ckpt = common::checkpoint("tiny-gelu");
    let pre = &ckpt.preprocess;
    let seen = pre
        .load(
            &path,
            foodclip::preprocess::DEFAULT_MAX_PIXELS,
            foodclip::preprocess::Fidelity::Exact,
        )
        .unwrap();
    let src = image::open(&path).unwrap().to_rgb8();
    // tiny-gelu: shortest edge 112, centre crop 96.
    let (w, h) = (3000 * 112 / 7, 112);
    let whole = foodclip::preprocess::resample::resize(&src, w, h, pre.filter);
    let want = image::imageops::crop_imm(&whole, (w - 96) / 2, (h - 96) / 2, 96, 96).to_image();
    assert_eq!(seen, want);
}

#[test]
fn without_a_centre_crop_a_strip_is_refused_not_resized_whole() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide.png");
    strip(&wide, 100_000, 2);
    let model = dir.path().join("no-crop");
    common::copy_checkpoint("tiny-gelu", &model);
    let config = model.join("preprocessor_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["do_center_crop"] = false.into();
    std::fs::write(&config, json.to_string()).unwrap();
    let o = foodclip()
        .arg("--model")
        .arg(&model)
        .arg("preview")
        .arg(&wide)
        .arg("-o")
        .arg(dir.path().join("seen.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("5600000x112 pixels, over 8192 a side"),
        "{err}"
    );
}
