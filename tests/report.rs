//! The HTML report of `foodclip eval --report`, opened in a real browser: headless Chromium
//! renders it to a screenshot, and the screenshot must show the report's pictures.
//!
//! Needs `chromium` (Debian's package; `.ci/run` installs it, with a Korean font). Where it is
//! missing the test says so and passes, except under CI (`CI` set), where it fails.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `FOODCLIP_CHROMIUM`, else the first Chromium on `PATH` (as `.ci/run` looks for it).
fn chromium() -> Option<PathBuf> {
    let from_env = std::env::var_os("FOODCLIP_CHROMIUM").map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|dir| ["chromium", "chromium-browser", "google-chrome"].map(|n| dir.join(n)));
    from_env.into_iter().chain(on_path).find(|p| p.is_file())
}

/// Screenshots `page` with headless Chromium into `png`.
fn screenshot(browser: &Path, page: &Path, png: &Path, profile: &Path) {
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1200,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        png.is_file(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_report_renders_its_pictures_in_a_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("skipped: no chromium (apt-get install chromium fonts-nanum)");
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
