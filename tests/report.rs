//! The HTML report of `foodclip eval --report`, opened in a real browser: headless Chromium
//! renders it to a screenshot, and the screenshot must show the report's pictures.
//!
//! Needs `chromium` (Debian's package; `.ci/run` installs it, with a Korean font). Where it is
//! missing the test says so and passes, except under CI (`CI` set), where it fails.

mod common;

use common::browser::{chromium, screenshot};
use common::*;
use std::path::Path;

#[test]
fn the_report_renders_its_pictures_in_a_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let images = fixtures().join("images");
    for (class, files) in [
        ("김치찌개", ["baseline.jpg", "wide.jpg"]),
        ("bibimbap", ["cmyk.jpg", "plain.bmp"]),
        ("fried chicken", ["rgba.png", "lzw.tiff"]),
    ] {
        let folder = dir.path().join("set").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for f in files {
            std::fs::copy(images.join(f), folder.join(f)).unwrap();
        }
    }
    let report = dir.path().join("report");
    let o = foodclip()
        .arg("--model")
        .arg(fixtures().join("tiny-openai"))
        .args(["eval", "--labels"])
        .arg(fixtures().join("labels/mixed.txt"))
        .arg(dir.path().join("set"))
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(
        !html.contains("file://") && !html.contains("src=\"/"),
        "not self-contained"
    );

    let png = dir.path().join("shot.png");
    screenshot(
        &browser,
        &report.join("index.html"),
        &png,
        &dir.path().join("profile"),
        (1200, 1400),
    );
    let shot = image::open(&png).unwrap().to_rgb8();
    assert_eq!(shot.dimensions(), (1200, 1400));
    // The confusion matrix's darkest shade (a full row predicted one way) is on screen...
    let matrix = shot
        .pixels()
        .filter(|p| p[0] < 40 && p[1] < 80 && (120..=160).contains(&p[2]))
        .count();
    assert!(
        matrix > 1000,
        "no confusion matrix on screen ({matrix} pixels)"
    );
    // ...the accuracy bars' track...
    let bars = shot.pixels().filter(|p| p.0 == [0xe3, 0xe8, 0xf0]).count();
    assert!(bars > 1000, "no accuracy bars ({bars} pixels)");
    // ...and the thumbnails: the fixture photos are colourful, the page's text is not.
    let colourful = shot
        .pixels()
        .filter(|p| {
            let (max, min) = (p.0.iter().max().unwrap(), p.0.iter().min().unwrap());
            max - min > 80
        })
        .count();
    assert!(
        colourful > 20_000,
        "no photo thumbnails ({colourful} pixels)"
    );
    // Keep the screenshot for a person to look at.
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    std::fs::copy(&png, keep).unwrap();
}
