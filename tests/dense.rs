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
