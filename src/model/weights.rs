//! Strict weight loading: every tensor the model asks for must be in the file with the right
//! shape. Nothing is ever initialised at random (candle-transformers' CLIP silently draws a random
//! `class_embedding` and a default `logit_scale` when they are missing; foodclip refuses instead).
//!
//! Tensors are read when the model asks for them, so a tower that is never built (the text tower,
//! when every prompt's embedding is cached) is never read from disk.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::path::Path;

/// Opens `model.safetensors` or a PyTorch `pytorch_model.bin` as a [`VarBuilder`] that reads
/// each tensor on request, as `dtype` on `device`. The file's structure is checked here; a
/// missing tensor or a wrong shape is an error when the model asks for it.
pub fn open(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    open_checked(path, dtype, device)
        .with_context(|| format!("cannot load weights {}", path.display()))
}

fn open_checked(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    if std::fs::metadata(path)?.len() == 0 {
        bail!("the file is empty");
    }
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let backend: Box<dyn SimpleBackend> = if is_safetensors {
        // SAFETY: the file is mapped read-only. Like every mmap-based loader (candle's examples,
        // safetensors in Python), it relies on nobody truncating the file while it is in use.
        let tensors =
            unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(|e| {
                anyhow::anyhow!("not a valid safetensors file (truncated or corrupt?): {e}")
            })?;
        if tensors.tensors().is_empty() {
            bail!("the file holds no tensors");
        }
        Box::new(tensors)
    } else {
        let tensors = candle_core::pickle::PthTensors::new(path, None).map_err(|e| {
            anyhow::anyhow!("not a valid PyTorch checkpoint (truncated or corrupt?): {e}")
        })?;
        if tensors.tensor_infos().is_empty() {
            bail!("the file holds no tensors");
        }
        Box::new(tensors)
    };
    Ok(VarBuilder::from_backend(backend, dtype, device.clone()))
}
