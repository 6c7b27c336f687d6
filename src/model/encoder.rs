//! The pre-norm transformer encoder shared by CLIP's text and vision towers.

use super::config::Activation;
use anyhow::Result;
use candle_core::{Module, Tensor, D};
use candle_nn::{LayerNorm, LayerNormConfig, Linear, VarBuilder};

/// Shape of one encoder stack.
#[derive(Debug, Clone, Copy)]
pub struct EncoderShape {
    /// Model width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Attention heads.
    pub heads: usize,
    /// Layers.
    pub layers: usize,
    /// MLP activation.
    pub activation: Activation,
    /// Layer-norm epsilon.
    pub eps: f64,
}

pub(crate) fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let config = LayerNormConfig {
        eps,
        ..Default::default()
    };
    Ok(candle_nn::layer_norm(size, config, vb)?)
}

fn linear(inp: usize, out: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(candle_nn::linear(inp, out, vb)?)
}

/// Multi-head self-attention with the query, key and value projections fused into one matmul.
struct Attention {
    qkv: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn load(vb: VarBuilder, shape: &EncoderShape) -> Result<Self> {
        let h = shape.hidden;
        let weights: Vec<Tensor> = ["q_proj", "k_proj", "v_proj"]
            .iter()
            .map(|n| vb.get((h, h), &format!("{n}.weight")))
            .collect::<candle_core::Result<_>>()?;
        let biases: Vec<Tensor> = ["q_proj", "k_proj", "v_proj"]
            .iter()
            .map(|n| vb.get(h, &format!("{n}.bias")))
            .collect::<candle_core::Result<_>>()?;
        let qkv = Linear::new(Tensor::cat(&weights, 0)?, Some(Tensor::cat(&biases, 0)?));
        let head_dim = h / shape.heads;
        Ok(Self {
            qkv,
            out: linear(h, h, vb.pp("out_proj"))?,
            heads: shape.heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `mask` is added to the attention logits: shape `(batch or 1, 1, seq, seq)`.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, t, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)? * self.scale)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut logits = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            logits = logits.broadcast_add(mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&logits)?;
        let y = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
        Ok(self.out.forward(&y)?)
    }
}

/// The two-layer MLP of each encoder layer.
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl Mlp {
    fn load(vb: VarBuilder, shape: &EncoderShape) -> Result<Self> {
        Ok(Self {
            fc1: linear(shape.hidden, shape.intermediate, vb.pp("fc1"))?,
            fc2: linear(shape.intermediate, shape.hidden, vb.pp("fc2"))?,
            activation: shape.activation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.fc1.forward(x)?;
        let x = match self.activation {
            Activation::QuickGelu => (&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
        };
        Ok(self.fc2.forward(&x)?)
    }
}

/// One pre-norm layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    fn load(vb: VarBuilder, shape: &EncoderShape) -> Result<Self> {
        Ok(Self {
            layer_norm1: layer_norm(shape.hidden, shape.eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::load(vb.pp("self_attn"), shape)?,
            layer_norm2: layer_norm(shape.hidden, shape.eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::load(vb.pp("mlp"), shape)?,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?;
        let x = (x + h)?;
        let h = self.mlp.forward(&self.layer_norm2.forward(&x)?)?;
        Ok((x + h)?)
    }
}

/// A stack of encoder layers (`encoder.layers.N`).
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// Loads `layers.0 ..` under `vb` (which points at `…encoder`).
    pub fn load(vb: VarBuilder, shape: &EncoderShape) -> Result<Self> {
        let layers = (0..shape.layers)
            .map(|i| EncoderLayer::load(vb.pp(format!("layers.{i}")), shape))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Runs every layer over `x` of shape `(batch, seq, hidden)`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask)?;
        }
        Ok(x)
    }
}

/// Scales each row of `x` (`(n, d)`) to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}
