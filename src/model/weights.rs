//! Strict weight loading: every tensor the model asks for must be in the file with the right
//! shape. Nothing is ever initialised at random (candle-transformers' CLIP silently draws a random
//! `class_embedding` and a default `logit_scale` when they are missing; foodclip refuses instead).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;

/// Reads `model.safetensors` or a PyTorch `pytorch_model.bin` into a [`VarBuilder`] holding
/// `dtype` tensors on `device`. A missing tensor or a wrong shape is an error when the model asks
/// for it.
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let tensors = read(path).with_context(|| format!("cannot load weights {}", path.display()))?;
    let mut converted = HashMap::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let tensor = if tensor.dtype().is_float() {
            tensor.to_dtype(dtype)?.to_device(device)?
        } else {
            tensor.to_device(device)?
        };
        converted.insert(name, tensor);
    }
    Ok(VarBuilder::from_tensors(converted, dtype, device))
}

fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let meta = std::fs::metadata(path)?;
    if meta.len() == 0 {
        bail!("the file is empty");
    }
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let tensors: HashMap<String, Tensor> = if is_safetensors {
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            anyhow::anyhow!("not a valid safetensors file (truncated or corrupt?): {e}")
        })?
    } else {
        candle_core::pickle::read_all(path)
            .map_err(|e| {
                anyhow::anyhow!("not a valid PyTorch checkpoint (truncated or corrupt?): {e}")
            })?
            .into_iter()
            .collect()
    };
    if tensors.is_empty() {
        bail!("the file holds no tensors");
    }
    Ok(tensors)
}
