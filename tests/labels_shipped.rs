//! The shipped label lists parse and cover their data sets.

use foodclip::labels::{is_korean, LabelSet};
use std::path::Path;

fn load(name: &str) -> LabelSet {
    LabelSet::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("labels")
            .join(name),
    )
    .unwrap()
}

#[test]
fn korean_list_covers_the_150_ai_hub_classes_korean_first() {
    let set = load("korean.txt");
    assert_eq!(set.classes.len(), 150);
    for c in &set.classes {
        assert!(
            is_korean(c.display()),
            "line {}: display name must be Korean",
            c.line
        );
        assert!(
            c.names.iter().any(|n| !is_korean(n)),
            "line {}: needs an English name",
            c.line
        );
    }
    // Every data-set spelling is a name of some class (so folders named after it match).
    let tsv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/labels/kfood150-names.txt");
    let names = std::fs::read_to_string(tsv).unwrap();
    for n in names.lines().filter(|l| !l.is_empty()) {
        assert!(
            set.classes.iter().any(|c| c.names.iter().any(|x| x == n)),
            "{n} is not in labels/korean.txt"
        );
    }
}

#[test]
fn english_list_is_food101() {
    let set = load("english.txt");
    assert_eq!(set.classes.len(), 101);
    assert_eq!(set.classes[0].display(), "apple pie");
    assert!(set.classes.iter().all(|c| !is_korean(c.display())));
}
