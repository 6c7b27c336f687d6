//! Parity with the reference implementation (transformers) on the random-weight fixture
//! checkpoints: tokens, pixels, embeddings and scores.

mod common;

use common::*;
use foodclip::classify::{embed_pictures, embed_prompts, Classifier};
use foodclip::labels::{LabelSet, Templates};
use foodclip::model::Scoring;

#[test]
fn tokens_equal_transformers_ids() {
    for name in CHECKPOINTS {
        let ckpt = checkpoint(name);
        let reference = reference(name);
        for p in &reference.prompts {
            let tokens = ckpt.tokenizer.encode(&p.text).unwrap();
            assert_eq!(tokens.ids, p.ids, "{name}: {:?}", p.text);
        }
        // The long class overflows tiny-gelu's 32-token context and the SigLIPs' 64 (their
        // small vocabularies spell it in many pieces): truncated, EOS kept where there is one
        // (SigLIP 2's tokenizer adds none).
        let long = reference
            .prompts
            .iter()
            .find(|p| p.text.starts_with("a photo of a very long"))
            .unwrap();
        let tokens = ckpt.tokenizer.encode(&long.text).unwrap();
        assert_eq!(tokens.truncated, name != "tiny-openai");
        assert_eq!(tokens.ids.len(), long.ids.len());
        match name {
            "tiny-siglip2" => assert!(!tokens.ids.contains(&1), "{:?}", tokens.ids),
            "tiny-siglip" => assert_eq!(*tokens.ids.last().unwrap(), 1),
            _ => assert_eq!(*tokens.ids.last().unwrap(), 49407),
        }
    }
}

/// SigLIP lower-cases: transformers' SigLIP tokenizer does, and so must foodclip whatever the
/// checkpoint's `tokenizer.json` holds (SigLIP 2's Gemma tokenizer keeps case).
#[test]
fn siglip_prompts_are_lower_cased_and_padded_with_the_tokenizers_pad() {
    let ckpt = checkpoint("tiny-siglip");
    let reference = reference("tiny-siglip");
    let shouted = ckpt.tokenizer.encode("A PHOTO OF KIMCHI STEW").unwrap();
    assert_eq!(
        shouted.ids,
        ckpt.tokenizer.encode("a photo of kimchi stew").unwrap().ids
    );
    let p = &reference.prompts[0];
    assert_eq!(
        ckpt.tokenizer.encode(&p.text.to_uppercase()).unwrap().ids,
        p.ids
    );
    assert_eq!(ckpt.tokenizer.pad_id(), Some(1));
    assert_eq!(ckpt.config.text_config.pad_token_id, 1);
    assert!(!ckpt.tokenizer.pads_left());
    // SigLIP 2: Gemma's tokenizer keeps case in its tokenizer.json; transformers lower-cases in
    // front of it, pads with <pad> (0, where the config says 1) and on the left.
    let ckpt = checkpoint("tiny-siglip2");
    let p = &common::reference("tiny-siglip2").prompts[0];
    assert_eq!(
        ckpt.tokenizer.encode(&p.text.to_uppercase()).unwrap().ids,
        p.ids
    );
    assert_eq!(ckpt.config.text_config.pad_token_id, 0);
    assert!(ckpt.tokenizer.pads_left() && ckpt.config.text_config.pad_left);
}

/// Mean absolute difference, in 8-bit levels, between our prepared picture and a reference PNG.
fn pixel_difference(ours: &image::RgbImage, reference: &std::path::Path) -> (f64, u8) {
    let theirs = image::open(reference).unwrap().to_rgb8();
    assert_eq!(
        ours.dimensions(),
        theirs.dimensions(),
        "{}",
        reference.display()
    );
    let diffs: Vec<u8> = ours
        .as_raw()
        .iter()
        .zip(theirs.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    (mean, *diffs.iter().max().unwrap())
}

#[test]
fn preview_pixels_match_clip_image_processor() {
    for name in CHECKPOINTS {
        let ckpt = checkpoint(name);
        for img in &reference(name).images {
            let ours = exact_picture(&ckpt, &img.file);
            let png = format!("{}.png", img.file.rsplit_once('.').unwrap().0);
            // SigLIP's fixture has only the Pillow backend's pixels (its torchvision backend
            // resizes as CLIP's does, checked here on the CLIP fixtures).
            let torchvision = fixtures()
                .join("reference")
                .join(format!("{name}-torchvision"));
            if name.starts_with("tiny-siglip") {
                assert!(!torchvision.exists());
            } else {
                // CLIPImageProcessor (torchvision backend since transformers 5): within 1/255
                // on average.
                let (mean, _) = pixel_difference(&ours, &torchvision.join(&png));
                assert!(
                    mean <= 1.0,
                    "{name}/{}: mean abs difference {mean:.3}/255 to CLIPImageProcessor",
                    img.file
                );
            }
            // The Pillow backend, which foodclip reproduces: the same pixels up to JPEG decoder
            // rounding (libjpeg-turbo versions), in practice identical.
            let (mean, max) =
                pixel_difference(&ours, &fixtures().join("reference").join(name).join(&png));
            assert!(
                mean <= 0.02 && max <= 1,
                "{name}/{}: {mean:.4}/255 mean, {max} max to the Pillow backend",
                img.file
            );
        }
    }
}

#[test]
fn image_embeddings_match() {
    for name in CHECKPOINTS {
        let ckpt = checkpoint(name);
        for img in &reference(name).images {
            let pic = exact_picture(&ckpt, &img.file);
            let ours = embed_pictures(&ckpt, &[pic])
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let cos = cosine(&ours[0], &img.embedding);
            assert!(cos >= 0.99999, "{name}/{}: cosine {cos}", img.file);
        }
    }
}

#[test]
fn text_embeddings_match_in_one_padded_batch() {
    for name in CHECKPOINTS {
        let ckpt = checkpoint(name);
        let reference = reference(name);
        let prompts: Vec<String> = reference.prompts.iter().map(|p| p.text.clone()).collect();
        let ours = embed_prompts(&ckpt, &prompts, None, |_| {})
            .unwrap()
            .0
            .to_vec2::<f32>()
            .unwrap();
        for (o, p) in ours.iter().zip(&reference.prompts) {
            let cos = cosine(o, &p.embedding);
            assert!(cos >= 0.99999, "{name}: {:?}: cosine {cos}", p.text);
        }
    }
}

#[test]
fn scores_and_probs_match() {
    for name in CHECKPOINTS {
        let ckpt = checkpoint(name);
        let reference = reference(name);
        assert!((ckpt.model.logit_scale() - reference.logit_scale).abs() < 1e-6);
        match (ckpt.model.scoring(), reference.logit_bias) {
            (Scoring::Softmax { .. }, None) => {}
            (Scoring::Sigmoid { bias, .. }, Some(b)) => assert!((bias - b).abs() < 1e-6),
            (s, b) => panic!("{name}: scoring {s:?} with a reference bias {b:?}"),
        }
        let labels = LabelSet::load(&fixtures().join("labels/mixed.txt")).unwrap();
        let templates = Templates::Custom(reference.templates.clone());
        let mut warnings = Vec::new();
        let classifier =
            Classifier::new(&ckpt, &labels, &templates, None, |w| warnings.push(w)).unwrap();
        // A warning for each prompt cut to the context: none for tiny-openai, the long class
        // (line 6) in one template for tiny-gelu's 32 tokens and tiny-siglip's 64, in both
        // templates for tiny-siglip2's byte-level vocabulary.
        assert_eq!(
            warnings.len(),
            match name {
                "tiny-openai" => 0,
                "tiny-siglip2" => 2,
                _ => 1,
            },
            "{warnings:?}"
        );
        if let Some(w) = warnings.first() {
            assert!(w.contains("mixed.txt:6:") && w.contains("truncated"), "{w}");
        }
        let classes = classifier.embeddings().to_vec2::<f32>().unwrap();
        for (c, r) in classes.iter().zip(&reference.classes) {
            assert!(
                cosine(c, &r.embedding) >= 0.99999,
                "{name}: class {:?}",
                r.names
            );
        }
        for img in &reference.images {
            let pic = exact_picture(&ckpt, &img.file);
            let emb = embed_pictures(&ckpt, &[pic]).unwrap();
            let preds = &classifier.predict(&emb).unwrap()[0].predictions;
            for (class, (&score, &prob)) in reference
                .classes
                .iter()
                .zip(img.scores.iter().zip(&img.probs))
            {
                let p = preds.iter().find(|p| p.label == class.names[0]).unwrap();
                assert!(
                    (p.score - score).abs() <= 1e-4,
                    "{name}/{} {}: score {} vs {score}",
                    img.file,
                    p.label,
                    p.score
                );
                assert!(
                    (p.prob - prob).abs() <= 1e-3,
                    "{name}/{} {}: prob {} vs {prob}",
                    img.file,
                    p.label,
                    p.prob
                );
            }
            assert!(preds.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }
}

/// transformers' zero-shot image-classification pipeline on a SigLIP checkpoint: per-class
/// sigmoids (not a softmax), prompts padded to 64 tokens. foodclip with the same template and
/// the same names gives the same probabilities.
#[test]
fn siglip_probabilities_match_the_zero_shot_pipeline() {
    for name in ["tiny-siglip", "tiny-siglip2"] {
        pipeline_probabilities_match(name);
    }
}

fn pipeline_probabilities_match(name: &str) {
    let reference = reference(name);
    let pipeline = reference.pipeline.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("names.txt");
    let names: Vec<String> = reference
        .classes
        .iter()
        .map(|c| c.names[0].clone())
        .collect();
    std::fs::write(&labels, names.join("\n") + "\n").unwrap();
    let o = foodclip()
        .args(["--exact-preprocess", "--model"])
        .arg(fixtures().join(name))
        .args(["classify", "--format", "jsonl", "--top-k", "10", "-t"])
        .arg(&pipeline.template)
        .arg("--labels")
        .arg(&labels)
        .arg(fixtures().join("images").join(&pipeline.file))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let record = &jsonl_records(&o.stdout)[0];
    let ours = record["predictions"].as_array().unwrap();
    assert_eq!(ours.len(), pipeline.answer.len());
    let total: f64 = ours.iter().map(|p| p["prob"].as_f64().unwrap()).sum();
    assert!(
        (total - 1.0).abs() > 0.05,
        "{name}: sigmoids, not a softmax: they sum to {total}"
    );
    for (mine, theirs) in ours.iter().zip(&pipeline.answer) {
        assert_eq!(mine["label"], theirs["label"]);
        let (a, b) = (
            mine["prob"].as_f64().unwrap(),
            theirs["score"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-4,
            "{name}: {}: {a} vs {b}",
            mine["label"]
        );
    }
}

/// bf16, f16 and int8 (with the engine this CPU picks) keep every image and prompt embedding
/// of every fixture within cosine 0.999 of f32's.
#[test]
fn reduced_precision_embeddings_stay_close_to_f32() {
    use foodclip::model::Precision;
    drift::assert_close_to_f32(&[Precision::Bf16, Precision::F16, Precision::Int8]);
}

/// The default model's config says `eos_token_id: 2`, which makes transformers pool at the
/// highest token id (its legacy rule). tiny-openai's weights and tokenizer under that config
/// must still match transformers.
#[test]
fn legacy_eos_config_pools_as_transformers_does() {
    let dir = tempfile::tempdir().unwrap();
    copy_checkpoint("tiny-openai", dir.path());
    std::fs::copy(
        fixtures().join("tiny-legacy-eos/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let ckpt = load_checkpoint(dir.path(), foodclip::model::Precision::F32);
    assert_eq!(ckpt.config.text_config.eos_token_id, 2);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/tiny-legacy-eos.json")).unwrap(),
    )
    .unwrap();
    let prompts: Vec<RefPrompt> = serde_json::from_value(reference["prompts"].clone()).unwrap();
    assert!(prompts.len() >= 10);
    let texts: Vec<String> = prompts.iter().map(|p| p.text.clone()).collect();
    let ours = embed_prompts(&ckpt, &texts, None, |_| {})
        .unwrap()
        .0
        .to_vec2::<f32>()
        .unwrap();
    for (p, e) in prompts.iter().zip(&ours) {
        assert_eq!(
            ckpt.tokenizer.encode(&p.text).unwrap().ids,
            p.ids,
            "{:?}",
            p.text
        );
        let c = cosine(e, &p.embedding);
        assert!(c >= 0.99999, "{:?}: cosine {c}", p.text);
    }
}

/// `--precision bf16` on every path this CPU can take, each forced with `FOODCLIP_BF16`: the
/// AMX tiles, AVX-512 BF16, and no bf16 arithmetic (f32). (The kernels of the engines a CPU
/// lacks are tested emulated, in `model::bf16`.)
#[test]
fn bf16_on_every_path_keeps_embeddings_and_top1() {
    every_path_keeps_embeddings_and_top1(
        "bf16",
        "FOODCLIP_BF16",
        &["amx", "avx512", "off"],
        "no bf16 arithmetic",
    );
}

/// `--precision int8` on every path this CPU can take, each forced with `FOODCLIP_INT8`: the
/// AMX tiles, AVX-512 VNNI, AVX-VNNI, AVX-512 BW, AVX2, and no int8 arithmetic (f32). (The
/// kernels of the engines a CPU lacks are tested emulated, in `model::int8`.)
#[test]
fn int8_on_every_path_keeps_embeddings_and_top1() {
    every_path_keeps_embeddings_and_top1(
        "int8",
        "FOODCLIP_INT8",
        &["amx", "vnni", "avx-vnni", "avx512bw", "avx2", "off"],
        "no int8 dot products",
    );
}

/// `--precision precision` with each engine `var` can force: image embeddings stay within
/// cosine 0.999 of transformers' f32 ones, and every photo's top-1 class is unchanged. The
/// path `off` runs f32 and says so (`off_note`); a path this CPU lacks is skipped, said on
/// stderr.
fn every_path_keeps_embeddings_and_top1(
    precision: &str,
    var: &str,
    paths: &[&str],
    off_note: &str,
) {
    for name in CHECKPOINTS {
        let reference = reference(name);
        let images = fixtures().join("images");
        for &path in paths {
            let o = foodclip()
                .env(var, path)
                .args(["--exact-preprocess", "--precision", precision, "--model"])
                .arg(fixtures().join(name))
                .args(["embed", "--format", "jsonl"])
                .args(reference.images.iter().map(|i| images.join(&i.file)))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            if o.status.code() == Some(2) && err.contains("this CPU has no") {
                eprintln!("{name}: skipped {var}={path}: {}", err.trim());
                continue;
            }
            assert!(o.status.success(), "{name} {path}: {err}");
            assert_eq!(err.contains(off_note), path == "off", "{err}");
            let records = jsonl_records(&o.stdout);
            for (img, record) in reference.images.iter().zip(&records) {
                let ours: Vec<f32> = serde_json::from_value(record["embedding"].clone()).unwrap();
                let cos = cosine(&ours, &img.embedding);
                assert!(cos >= 0.999, "{name} {path} {}: cosine {cos}", img.file);
                let best = |scores: &[f32]| {
                    (0..scores.len())
                        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                        .unwrap()
                };
                let scores: Vec<f32> = reference
                    .classes
                    .iter()
                    .map(|c| c.embedding.iter().zip(&ours).map(|(a, b)| a * b).sum())
                    .collect();
                assert_eq!(
                    best(&scores),
                    best(&img.scores),
                    "{name} {path} {}",
                    img.file
                );
            }
        }
    }
}
