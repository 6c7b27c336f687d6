//! Why foodclip carries its own CLIP: candle-transformers' CLIP (0.11) does not compute what the
//! reference computes on a checkpoint with `gelu`, `layer_norm_eps = 1e-6` and a pad id above EOS.
//! It reads the text embedding at the highest token id (a pad, once prompts are padded into a
//! batch), knows no activation but quick_gelu and uses `eps = 1e-5`. foodclip matches the same
//! reference (see `parity.rs`); this test keeps the claim honest.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::clip::{self, text_model::Activation, ClipModel};
use common::*;

#[test]
fn candle_transformers_clip_misses_the_reference() {
    let dir = fixtures().join("tiny-gelu");
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let config = clip::ClipConfig {
        text_config: clip::text_model::ClipTextConfig {
            vocab_size: 49409,
            embed_dim: 8,
            activation: Activation::QuickGelu, // its only activation: gelu cannot be expressed
            intermediate_size: 20,
            max_position_embeddings: 32,
            pad_with: None,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            projection_dim: 16,
        },
        vision_config: clip::vision_model::ClipVisionConfig {
            embed_dim: 24,
            activation: Activation::QuickGelu, // its only activation: gelu cannot be expressed
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 3,
            projection_dim: 16,
            num_channels: 3,
            image_size: 96,
            patch_size: 16,
        },
        logit_scale_init_value: 2.6592,
        image_size: 96,
    };
    let model = ClipModel::new(vb, &config).unwrap();
    let reference = reference("tiny-gelu");

    // The prompts padded into one batch, as transformers' tokenizer(padding=True) returns them.
    let len = reference.prompts.iter().map(|p| p.ids.len()).max().unwrap();
    let mut ids = Vec::new();
    for p in &reference.prompts {
        ids.extend(p.ids.iter().copied());
        ids.extend(std::iter::repeat_n(49408u32, len - p.ids.len()));
    }
    let ids = Tensor::from_vec(ids, (reference.prompts.len(), len), &Device::Cpu).unwrap();
    let theirs = model
        .get_text_features(&ids)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let worst = theirs
        .iter()
        .zip(&reference.prompts)
        .map(|(t, p)| cosine(t, &p.embedding))
        .fold(f64::INFINITY, f64::min);
    assert!(
        worst < 0.99,
        "candle-transformers now matches the reference (worst cosine {worst}): reconsider using it"
    );

    // Even unpadded, one prompt at a time, the activation and epsilon differ from the config.
    let p = &reference.prompts[0];
    let single = Tensor::from_vec(p.ids.clone(), (1, p.ids.len()), &Device::Cpu).unwrap();
    let theirs = model
        .get_text_features(&single)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let cos = cosine(&theirs[0], &p.embedding);
    assert!(
        cos < 0.99999,
        "candle-transformers matches unpadded prompts now (cosine {cos})"
    );

    // foodclip on the same inputs.
    let ours = checkpoint("tiny-gelu");
    let emb = foodclip::classify::embed_prompts(&ours, std::slice::from_ref(&p.text), None, |_| {})
        .unwrap()
        .0
        .to_vec2::<f32>()
        .unwrap();
    assert!(cosine(&emb[0], &p.embedding) >= 0.99999);
}
