//! Headless Chromium for the tests that check pages and drawings as a browser shows them.
//!
//! Needs `chromium` (Debian's package; `.ci/run` installs it, with a Korean font). Where it is
//! missing [`chromium`] says so and the test passes, except under CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `FOODCLIP_CHROMIUM`, else the first Chromium on `PATH` (as `.ci/run` looks for it); `None`
/// (after saying so) where there is none outside CI.
pub fn chromium() -> Option<PathBuf> {
    let from_env = std::env::var_os("FOODCLIP_CHROMIUM").map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|dir| ["chromium", "chromium-browser", "google-chrome"].map(|n| dir.join(n)));
    let found = from_env.into_iter().chain(on_path).find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("skipped: no chromium (apt-get install chromium fonts-nanum)");
    }
    found
}

/// Screenshots `page` with headless Chromium into `png`, in a window of `(width, height)`.
pub fn screenshot(browser: &Path, page: &Path, png: &Path, profile: &Path, (w, h): (u32, u32)) {
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
        ])
        .arg(format!("--window-size={w},{h}"))
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
