//! Memory stays bounded however many photos a run reads: its own test binary, so that the peak
//! resident size of the children it measures is not mixed with other tests' children.

mod common;

use common::photos::{synthetic, write_jpeg};
use common::{children_peak_kib, fixtures, foodclip};

/// Embeds the photos of `dir`, whole and as the six regions of a 2x3 grid.
fn classify_folder(dir: &std::path::Path) {
    for regions in [&[][..], &["--grid", "2x3"]] {
        let o = foodclip()
            .args(["--quiet", "--exact-preprocess", "--model"])
            .arg(fixtures().join("tiny-openai"))
            .args(["embed", "--batch-size", "4", "--format", "jsonl"])
            .args(regions)
            .arg(dir)
            .output()
            .unwrap();
        assert!(o.status.success());
    }
}

#[test]
fn peak_memory_does_not_grow_with_the_folder_for_photos_or_regions() {
    // 1600x1200 photos: 5.8 MB each decoded, so holding a folder of 96 would take 550 MB.
    let small = tempfile::tempdir().unwrap();
    let large = tempfile::tempdir().unwrap();
    let photo = synthetic(1600, 1200, 1);
    for i in 0..8 {
        write_jpeg(&photo, &small.path().join(format!("{i:03}.jpg")));
    }
    for i in 0..96 {
        std::fs::copy(
            small.path().join("000.jpg"),
            large.path().join(format!("{i:03}.jpg")),
        )
        .unwrap();
    }
    classify_folder(small.path());
    let peak_small = children_peak_kib();
    classify_folder(large.path());
    let peak_large = children_peak_kib();
    assert!(
        peak_large < peak_small + 64 * 1024,
        "peak grew from {peak_small} KiB to {peak_large} KiB with 12x the photos"
    );
}
