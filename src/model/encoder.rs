//! The pre-norm transformer encoder shared by the text and vision towers of CLIP and SigLIP.

use super::config::{Activation, TextConfig, VisionConfig};
use super::ops::{attention, mlp, Dense, MatmulKind};
use anyhow::Result;
use candle_core::{Tensor, D};
use candle_nn::{LayerNorm, LayerNormConfig, VarBuilder};

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
    /// How the dense layers multiply.
    pub matmul: MatmulKind,
}

/// An [`EncoderShape`] from a tower config's fields (text and vision configs name them alike).
macro_rules! shape_of {
    ($c:expr, $matmul:expr) => {
        EncoderShape {
            hidden: $c.hidden_size,
            intermediate: $c.intermediate_size,
            heads: $c.num_attention_heads,
            layers: $c.num_hidden_layers,
            activation: $c.hidden_act,
            eps: $c.layer_norm_eps,
            matmul: $matmul,
        }
    };
}

impl EncoderShape {
    /// The text tower's stack, as its config describes it.
    pub fn of_text(c: &TextConfig, matmul: MatmulKind) -> Self {
        shape_of!(c, matmul)
    }

    /// The vision tower's stack, as its config describes it.
    pub fn of_vision(c: &VisionConfig, matmul: MatmulKind) -> Self {
        shape_of!(c, matmul)
    }
}

pub(crate) fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let config = LayerNormConfig {
        eps,
        ..Default::default()
    };
    Ok(candle_nn::layer_norm(size, config, vb)?)
}

/// Multi-head self-attention with the query, key and value projections fused into one matmul.
struct Attention {
    qkv: Dense,
    out: Dense,
    heads: usize,
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
        Ok(Self {
            qkv: Dense::new(
                Tensor::cat(&weights, 0)?,
                Some(Tensor::cat(&biases, 0)?),
                shape.matmul,
            )?,
            out: Dense::load(h, h, true, vb.pp("out_proj"), shape.matmul)?,
            heads: shape.heads,
        })
    }

    /// `x + attention(norm(x))`; `mask` is added to the attention logits,
    /// `(batch or 1, 1, seq, seq)`.
    fn forward(&self, norm: &LayerNorm, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.out
            .forward_with(&self.heads(norm, x, mask)?, Some(x), None)
    }

    /// The heads' outputs side by side, before the output projection.
    fn heads(&self, norm: &LayerNorm, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        attention(&self.qkv.forward_normed(x, norm, None)?, self.heads, mask)
    }
}

/// The two-layer MLP of each encoder layer (and of SigLIP's pooling head).
pub(crate) struct Mlp {
    fc1: Dense,
    fc2: Dense,
    activation: Activation,
}

impl Mlp {
    pub(crate) fn load(vb: VarBuilder, shape: &EncoderShape) -> Result<Self> {
        Ok(Self {
            fc1: Dense::load(
                shape.hidden,
                shape.intermediate,
                true,
                vb.pp("fc1"),
                shape.matmul,
            )?,
            fc2: Dense::load(
                shape.intermediate,
                shape.hidden,
                true,
                vb.pp("fc2"),
                shape.matmul,
            )?,
            activation: shape.activation,
        })
    }

    /// `x + fc2(act(fc1(norm(x))))`.
    pub(crate) fn forward(&self, norm: &LayerNorm, x: &Tensor) -> Result<Tensor> {
        mlp(&self.fc1, &self.fc2, x, norm, self.activation)
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
        let x = self.self_attn.forward(&self.layer_norm1, x, mask)?;
        self.mlp.forward(&self.layer_norm2, &x)
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

    /// Every layer but the last over `x`, and the last layer, to be run by the caller.
    fn all_but_last(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<(&EncoderLayer, Tensor)> {
        let Some((last, rest)) = self.layers.split_last() else {
            anyhow::bail!("the encoder has no layers");
        };
        let mut x = x.clone();
        for layer in rest {
            x = layer.forward(&x, mask)?;
        }
        Ok((last, x))
    }

    /// Runs every layer over `x` `(batch, seq, hidden)` and returns only the state of one token
    /// per sequence, at `positions[i]` in sequence `i`, `(batch, hidden)`: what a tower that
    /// pools one token reads. The last layer's keys and values need every token, but its
    /// output projection and MLP treat rows one by one, so they run on the pooled rows alone:
    /// most of a layer's work saved (ViT-B/32: 50 rows down to 1 there).
    pub fn forward_pooled(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        positions: &[usize],
    ) -> Result<Tensor> {
        let (last, x) = self.all_but_last(x, mask)?;
        let (b, t, hidden) = x.dims3()?;
        if positions.len() != b || positions.iter().any(|&p| p >= t) {
            anyhow::bail!("pooled positions {positions:?} for {b} sequences of {t}");
        }
        let pooled: Vec<u32> = (0..b).map(|i| (i * t + positions[i]) as u32).collect();
        let rows = Tensor::from_vec(pooled, b, x.device())?;
        let pick = |y: &Tensor| -> Result<Tensor> {
            Ok(y.reshape((b * t, hidden))?.index_select(&rows, 0)?)
        };
        let a = &last.self_attn;
        let heads = pick(&a.heads(&last.layer_norm1, &x, mask)?)?;
        let x = a.out.forward_with(&heads, Some(&pick(&x)?), None)?;
        last.mlp.forward(&last.layer_norm2, &x)
    }

    /// NACLIP's dense pass: every layer but the last as usual, then the last one reduced to its
    /// attention, with keys as queries and `neighbourhood` (`(1, 1, seq, seq)`) added to the
    /// logits, and neither the residual nor the MLP.
    pub fn forward_dense(&self, x: &Tensor, neighbourhood: &Tensor) -> Result<Tensor> {
        let (last, x) = self.all_but_last(x, None)?;
        let a = &last.self_attn;
        let qkv = a.qkv.forward_normed(&x, &last.layer_norm1, None)?;
        let h = qkv.dim(2)? / 3;
        let k = qkv.narrow(2, h, h)?;
        let kkv = Tensor::cat(&[&k, &k, &qkv.narrow(2, 2 * h, h)?], 2)?;
        let heads = attention(&kkv, a.heads, Some(&neighbourhood.to_dtype(kkv.dtype())?))?;
        a.out.forward(&heads)
    }
}

/// Scales each row of `x` (`(n, d)`) to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}
