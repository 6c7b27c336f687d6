//! How far reduced precisions move the fixtures' embeddings from f32's.

use super::*;
use foodclip::classify::{embed_pictures, embed_prompts};
use foodclip::model::Precision;

/// Each of `precisions` (with the engines this process picks) keeps every image and prompt
/// embedding of every fixture within cosine 0.999 of f32's; prints the lowest cosine of each.
pub fn assert_close_to_f32(precisions: &[Precision]) {
    for name in CHECKPOINTS {
        let reference = reference(name);
        let f32_ckpt = checkpoint(name);
        let pictures: Vec<image::RgbImage> = reference
            .images
            .iter()
            .map(|i| exact_picture(&f32_ckpt, &i.file))
            .collect();
        let prompts: Vec<String> = reference.prompts.iter().map(|p| p.text.clone()).collect();
        // Image rows, then prompt rows.
        let embed = |ckpt: &Checkpoint| {
            let mut rows = embed_pictures(ckpt, &pictures)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let text = embed_prompts(ckpt, &prompts, None, |_| {}).unwrap().0;
            rows.extend(text.to_vec2::<f32>().unwrap());
            rows
        };
        let full = embed(&f32_ckpt);
        for &precision in precisions {
            let reduced = embed(&load_checkpoint(&fixtures().join(name), precision));
            let mut worst = 1f64;
            for (a, b) in reduced.iter().zip(&full) {
                let cos = cosine(a, b);
                assert!(cos >= 0.999, "{name} {precision}: cosine {cos}");
                worst = worst.min(cos);
            }
            eprintln!("{name} {precision}: lowest cosine to f32 {worst:.6}");
        }
    }
}
