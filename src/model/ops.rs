//! Fused CPU kernels for the hot spots of the encoder.
//!
//! With plain candle ops, ViT-B/32 at batch 32 ran at about half PyTorch's speed on two cores:
//! quick_gelu took four tensor passes (about 35 ms per layer, as long as the two MLP matmuls),
//! every bias and residual add another pass, and attention copied q, k and v out of the fused
//! projection and the heads back together. On CPU f32 tensors, foodclip instead:
//!
//! - runs each dense layer as one `gemm` call whose destination starts as bias (+ residual), so
//!   both adds come free, and applies quick_gelu (or SigLIP's tanh GELU) in place in one
//!   vectorised pass;
//! - runs attention per (image, head) straight on the fused qkv buffer with strided `gemm`
//!   calls, softmax in place, writing each head's output into its slot: no layout copies.
//!
//! Other devices and dtypes take candle's ops; unit tests check the two paths agree.

use super::config::Activation;
#[cfg(target_arch = "x86_64")]
use super::epilogue::{Epilogue, Norm};
use super::math::{with_fused, Fused};
use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};
use candle_nn::{LayerNorm, Module, VarBuilder};
use rayon::prelude::*;

/// A pass over f32s in place, written so that its loops vectorise, run by [`in_place`] with the
/// widest vectors the CPU offers.
#[derive(Clone, Copy)]
enum Pass<'a> {
    /// An activation on every value.
    Activation(Fused),
    /// Softmax over each row of `width` attention scores, after adding `mask` (as many values
    /// as the rows hold) when there is one.
    Softmax {
        width: usize,
        mask: Option<&'a [f32]>,
    },
}

#[inline(always)]
fn pass_plain(xs: &mut [f32], pass: Pass) {
    match pass {
        Pass::Activation(f) => with_fused!(f, |act| for x in xs.iter_mut() {
            *x = act(*x);
        }),
        Pass::Softmax { width, mask } => {
            for (r, row) in xs.chunks_mut(width.max(1)).enumerate() {
                softmax_row(row, mask.map(|m| &m[r * width..][..row.len()]));
            }
        }
    }
}

/// Softmax of one row in place, `mask` added first; the largest value and the sum are taken in
/// 16 lanes, so that every loop vectorises.
#[inline(always)]
fn softmax_row(row: &mut [f32], mask: Option<&[f32]>) {
    use super::math::{exp, lane_max, lane_sum};
    if let Some(m) = mask {
        row.iter_mut().zip(m).for_each(|(s, m)| *s += m);
    }
    let max = lane_max(row, |x| x);
    row.iter_mut().for_each(|x| *x = exp(*x - max));
    let sum = lane_sum(row, |x| x);
    row.iter_mut().for_each(|x| *x /= sum);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pass_avx512(xs: &mut [f32], pass: Pass) {
    pass_plain(xs, pass)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pass_avx2(xs: &mut [f32], pass: Pass) {
    pass_plain(xs, pass)
}

/// Whether AVX-512 kernels may run: the CPU has AVX-512 F and the build has the `avx512`
/// feature (without it, foodclip is the AVX2 build).
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs `pass` over `xs` with the widest vectors the CPU (and the build) offers.
fn in_place(xs: &mut [f32], pass: Pass) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512() {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { pass_avx512(xs, pass) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { pass_avx2(xs, pass) };
        }
    }
    pass_plain(xs, pass)
}

/// A fused activation as a candle op: one vectorised pass over the tensor.
struct FusedOp(Fused);

impl CustomOp1 for FusedOp {
    fn name(&self) -> &'static str {
        "fused-activation"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("a fused activation needs a contiguous tensor".into())
        })?;
        let f = self.0;
        let run = |mut v: Vec<f32>| -> Vec<f32> {
            v.par_chunks_mut(1 << 14)
                .for_each(|c| in_place(c, Pass::Activation(f)));
            v
        };
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(run(v[start..end].to_vec())),
            CpuStorage::BF16(v) => CpuStorage::BF16(
                run(v[start..end].iter().map(|x| x.to_f32()).collect())
                    .into_iter()
                    .map(half::bf16::from_f32)
                    .collect(),
            ),
            CpuStorage::F16(v) => CpuStorage::F16(
                run(v[start..end].iter().map(|x| x.to_f32()).collect())
                    .into_iter()
                    .map(half::f16::from_f32)
                    .collect(),
            ),
            other => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    candle_core::backend::BackendStorage::dtype(other),
                    "fused-activation",
                ));
            }
        };
        Ok((out, layout.shape().clone()))
    }
}

/// `f(x)`: one fused pass on the CPU, candle's ops elsewhere.
pub fn fused_activation(x: &Tensor, f: Fused) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&FusedOp(f))?);
    }
    Ok(match f {
        Fused::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
        Fused::GeluTanh => x.gelu()?,
    })
}

/// Runs `f` on the data of `t` if it is a contiguous f32 tensor on the CPU.
fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Some(f(&v[a..b])),
        _ => None,
    }
}

fn threads() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(candle_core::utils::get_num_threads())
}

/// A fresh `(rows, out)` buffer holding `bias` (per column) plus `residual` (row-major), either
/// of which may be absent (then zeros), written in one parallel pass.
fn prefilled(rows: usize, out: usize, bias: Option<&[f32]>, residual: Option<&[f32]>) -> Vec<f32> {
    assert!(residual.is_none_or(|r| r.len() == rows * out));
    let mut dst = Vec::with_capacity(rows * out);
    dst.spare_capacity_mut()[..rows * out]
        .par_chunks_mut(out.max(1))
        .enumerate()
        .for_each(|(m, row)| match (bias, residual) {
            (Some(b), Some(r)) => {
                let r = &r[m * out..][..out];
                for ((d, &b), &r) in row.iter_mut().zip(b).zip(r) {
                    d.write(r + b);
                }
            }
            (Some(b), None) => {
                for (d, &b) in row.iter_mut().zip(b) {
                    d.write(b);
                }
            }
            (None, Some(r)) => {
                for (d, &r) in row.iter_mut().zip(&r[m * out..][..out]) {
                    d.write(r);
                }
            }
            (None, None) => {
                for d in row {
                    d.write(0.0);
                }
            }
        });
    // SAFETY: every one of the `rows * out` values was written just above.
    unsafe { dst.set_len(rows * out) };
    dst
}

/// A pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: each task writes only its own rows/columns (see the callers).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Applies an activation: fused where it can be ([`Fused`]), through candle otherwise.
fn activate(x: Tensor, act: Activation) -> Result<Tensor> {
    Ok(match Fused::of(act) {
        Some(f) => fused_activation(&x, f)?,
        None => x.gelu_erf()?,
    })
}

/// A dense layer `y = x Wᵀ + b` holding `Wᵀ` contiguous, so that every call is one plain 2-D
/// matmul over all tokens of the batch. (Reading `W` through gemm's strides instead saved 3% of
/// start-up but made a row's result depend on how many rows the call has: prompt embeddings
/// then differed in the last digit between a full batch and a partly cached one.)
pub struct Dense {
    weight: Weight,
    bias: Option<Tensor>,
}

/// How a dense layer multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulKind {
    /// In the weights' own dtype.
    #[default]
    Native,
    /// bf16 products with f32 sums on the CPU by a [`super::bf16::Engine`] (AMX tiles or
    /// AVX-512 BF16); weights and activations are f32 tensors (only for CPU f32 models, with an
    /// engine the CPU has: see [`super::bf16::engine`]).
    #[cfg(target_arch = "x86_64")]
    PackedBf16(super::bf16::Engine),
    /// int8 products with int32 sums on the CPU by a [`super::int8::Engine`] (AVX-512 VNNI or
    /// AVX2): weights quantised per output channel at load, activations per row as they are
    /// packed; tensors stay f32 (see [`super::int8::engine`]).
    #[cfg(target_arch = "x86_64")]
    Int8(super::int8::Engine),
}

impl MatmulKind {
    /// How the layers at a tower's edges multiply: the patch embedding, which reads raw pixels,
    /// and the projections into the shared space, which write the embeddings. int8 keeps them
    /// in f32 (they are under 2% of a tower's work, and quantising them adds most of int8's
    /// drift: see the README); every other kind is unchanged.
    pub fn at_edge(self) -> MatmulKind {
        match self {
            #[cfg(target_arch = "x86_64")]
            MatmulKind::Int8(_) => MatmulKind::Native,
            kind => kind,
        }
    }
}

/// A dense layer's weight, as its matmul wants it.
enum Weight {
    /// `Wᵀ`, contiguous.
    Transposed(Tensor),
    /// Packed into bf16 tiles.
    #[cfg(target_arch = "x86_64")]
    Packed(super::bf16::PackedWeight),
    /// Quantised to int8 and packed.
    #[cfg(target_arch = "x86_64")]
    Int8(super::int8::PackedWeight),
}

impl Dense {
    /// Loads `weight` `(out, inp)` and, if `with_bias`, `bias` `(out)`.
    pub fn load(
        inp: usize,
        out: usize,
        with_bias: bool,
        vb: VarBuilder,
        kind: MatmulKind,
    ) -> Result<Self> {
        let weight = vb.get((out, inp), "weight")?;
        let bias = if with_bias {
            Some(vb.get(out, "bias")?)
        } else {
            None
        };
        Ok(Self::new(weight, bias, kind)?)
    }

    /// From a weight `(out, inp)` and an optional bias `(out)`.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        kind: MatmulKind,
    ) -> candle_core::Result<Self> {
        let (out, inp) = weight.dims2()?;
        if let Some(b) = &bias {
            if b.dims() != [out] {
                candle_core::bail!("a bias of shape {:?} for a {out} x {inp} weight", b.dims());
            }
        }
        #[cfg(target_arch = "x86_64")]
        let packed =
            |pack: &dyn Fn(&[f32]) -> Weight| match with_cpu_f32(&weight.contiguous()?, pack) {
                Some(packed) => Ok(packed),
                None => candle_core::bail!("packed CPU layers need CPU f32 weights"),
            };
        let weight = match kind {
            #[cfg(target_arch = "x86_64")]
            MatmulKind::PackedBf16(engine) => {
                packed(&|w| Weight::Packed(super::bf16::pack(w, out, inp, engine)))?
            }
            #[cfg(target_arch = "x86_64")]
            MatmulKind::Int8(engine) => {
                packed(&|w| Weight::Int8(super::int8::pack(w, out, inp, engine)))?
            }
            MatmulKind::Native => Weight::Transposed(transpose(&weight)?),
        };
        Ok(Self { weight, bias })
    }

    /// `(inputs, outputs)`.
    fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match &self.weight {
            Weight::Transposed(wt) => wt.dims2(),
            #[cfg(target_arch = "x86_64")]
            Weight::Packed(p) => Ok((p.inp(), p.out())),
            #[cfg(target_arch = "x86_64")]
            Weight::Int8(p) => Ok((p.inp(), p.out())),
        }
    }

    /// Applies the layer to the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None, None)
    }

    /// `act(x Wᵀ + b) + residual`, with the adds and quick_gelu fused into the matmul on CPU f32
    /// (`act` and `residual` are not used together).
    pub fn forward_with(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        act: Option<Activation>,
    ) -> Result<Tensor> {
        self.forward_full(x, None, residual, act)
    }

    /// `act(norm(x) Wᵀ + b)`. With packed (bf16 or int8) layers the layer norm is applied to each row as the activations
    /// are packed, so the normalised tensor is never written out; elsewhere `norm` runs first.
    pub fn forward_normed(
        &self,
        x: &Tensor,
        norm: &LayerNorm,
        act: Option<Activation>,
    ) -> Result<Tensor> {
        self.forward_full(x, Some(norm), None, act)
    }

    fn forward_full(
        &self,
        x: &Tensor,
        norm: Option<&LayerNorm>,
        residual: Option<&Tensor>,
        act: Option<Activation>,
    ) -> Result<Tensor> {
        let (x, norm) = match norm {
            Some(n) if !self.normalises_in_packing(n) => (n.forward(x)?, None),
            _ => (x.contiguous()?, norm),
        };
        // The shapes are checked before any kernel sees a pointer.
        let (inp, out) = self.dims()?;
        let dims = x.dims();
        if dims.last() != Some(&inp) {
            anyhow::bail!("a dense layer of {inp} inputs got a tensor of shape {dims:?}");
        }
        let rows = x.elem_count() / inp.max(1);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("at least one dimension") = out;
        if let Some(r) = residual {
            if r.dims() != shape {
                anyhow::bail!(
                    "a residual of shape {:?} for an output of shape {shape:?}",
                    r.dims()
                );
            }
        }
        debug_assert!(
            residual.is_none() || act.is_none(),
            "act and residual are not used together"
        );
        if let Some(y) = self.fused(&x, rows, inp, out, norm, residual, act)? {
            let y = Tensor::from_vec(y, shape, x.device())?;
            // Fused activations are applied inside the fused pass; the exact GELU here.
            return match act {
                Some(act) if Fused::of(act).is_none() => activate(y, act),
                _ => Ok(y),
            };
        }
        // Only packed layers keep `norm` for themselves, and they need CPU f32 tensors.
        let Weight::Transposed(weight_t) = &self.weight else {
            anyhow::bail!("packed CPU layers take CPU f32 inputs");
        };
        let mut y = x.reshape((rows, inp))?.matmul(weight_t)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut y = y.reshape(shape)?;
        if let Some(act) = act {
            y = activate(y, act)?;
        }
        if let Some(r) = residual {
            y = (y + r)?;
        }
        Ok(y)
    }

    /// Whether the matmul applies `norm` itself (packed layers, plain layer norms).
    fn normalises_in_packing(&self, norm: &LayerNorm) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Weight::Packed(_) | Weight::Int8(_) = self.weight {
            return norm.remove_mean();
        }
        let _ = norm;
        false
    }

    /// The CPU f32 path: `None` when a tensor is not CPU f32. `norm` is only given to packed layers.
    #[allow(clippy::too_many_arguments)]
    fn fused(
        &self,
        x: &Tensor,
        rows: usize,
        inp: usize,
        out: usize,
        norm: Option<&LayerNorm>,
        residual: Option<&Tensor>,
        act: Option<Activation>,
    ) -> Result<Option<Vec<f32>>> {
        let residual = residual.map(Tensor::contiguous).transpose()?;
        let weight_t = match &self.weight {
            Weight::Transposed(wt) => wt,
            #[cfg(target_arch = "x86_64")]
            Weight::Packed(w) => {
                return Ok(self.packed(x, norm, residual.as_ref(), act, |xs, n, e| {
                    super::bf16::matmul(xs, rows, w, n, e)
                }));
            }
            #[cfg(target_arch = "x86_64")]
            Weight::Int8(w) => {
                return Ok(self.packed(x, norm, residual.as_ref(), act, |xs, n, e| {
                    super::int8::matmul(xs, rows, w, n, e)
                }));
            }
        };
        debug_assert!(norm.is_none(), "only packed layers normalise while packing");
        let Some(bias) = self.bias_vec() else {
            return Ok(None);
        };
        // The destination starts as bias + residual, written in one pass over a fresh buffer.
        // It is only written, never read before its first write: reading untouched pages maps
        // the shared zero page, and the write after it copies the page and flushes the other
        // cores' TLBs (10% of a SigLIP run's time went to those flushes).
        let accumulate = residual.is_some() || bias.is_some();
        let dst = match &residual {
            Some(r) => with_cpu_f32(r, |r| prefilled(rows, out, bias.as_deref(), Some(r))),
            None => Some(prefilled(rows, out, bias.as_deref(), None)),
        };
        let Some(mut dst) = dst else {
            return Ok(None);
        };
        let done = with_cpu_f32(x, |xs| {
            with_cpu_f32(weight_t, |wt| {
                // SAFETY: dst is rows x out, xs rows x inp, wt inp x out, all row-major and
                // contiguous; the destination is read when it holds bias + residual.
                unsafe {
                    gemm::gemm(
                        rows,
                        out,
                        inp,
                        dst.as_mut_ptr(),
                        1,
                        out as isize,
                        accumulate,
                        xs.as_ptr(),
                        1,
                        inp as isize,
                        wt.as_ptr(),
                        1,
                        out as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        threads(),
                    )
                }
            })
        })
        .flatten();
        if done.is_none() {
            return Ok(None);
        }
        if let Some(f) = act.and_then(Fused::of) {
            dst.par_chunks_mut(1 << 14)
                .for_each(|c| in_place(c, Pass::Activation(f)));
        }
        Ok(Some(dst))
    }

    /// The packed (bf16 or int8) path, `product` being the engine's: the layer norm is applied
    /// as activations are packed, and bias, quick_gelu and the residual to each block as it
    /// leaves the product. `None` when a tensor is not CPU f32.
    #[cfg(target_arch = "x86_64")]
    fn packed(
        &self,
        x: &Tensor,
        norm: Option<&LayerNorm>,
        residual: Option<&Tensor>,
        act: Option<Activation>,
        product: impl Fn(&[f32], Option<Norm>, Epilogue) -> Vec<f32>,
    ) -> Option<Vec<f32>> {
        let bias = self.bias_vec()?;
        let norm = match norm {
            Some(n) => Some(NormParams::of(n)?),
            None => None,
        };
        let epilogue = Epilogue {
            bias: bias.as_deref(),
            residual: None,
            activation: act.and_then(Fused::of),
        };
        let norm = norm.as_ref().map(NormParams::as_norm);
        with_cpu_f32(x, |xs| match residual {
            Some(r) => with_cpu_f32(r, |r| {
                let epilogue = Epilogue {
                    residual: Some(r),
                    ..epilogue
                };
                product(xs, norm, epilogue)
            }),
            None => Some(product(xs, norm, epilogue)),
        })
        .flatten()
    }

    /// The bias as a vector (`Some(None)` without one; `None` if it is not CPU f32).
    fn bias_vec(&self) -> Option<Option<Vec<f32>>> {
        match &self.bias {
            Some(b) => Some(Some(with_cpu_f32(b, <[f32]>::to_vec)?)),
            None => Some(None),
        }
    }
}

/// A layer norm's parameters as vectors, for the packed kernels.
#[cfg(target_arch = "x86_64")]
struct NormParams {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    eps: f32,
}

#[cfg(target_arch = "x86_64")]
impl NormParams {
    /// `None` if the parameters are not CPU f32.
    fn of(norm: &LayerNorm) -> Option<Self> {
        Some(Self {
            weight: with_cpu_f32(norm.weight(), <[f32]>::to_vec)?,
            bias: match norm.bias() {
                Some(b) => Some(with_cpu_f32(b, <[f32]>::to_vec)?),
                None => None,
            },
            eps: norm.eps() as f32,
        })
    }

    fn as_norm(&self) -> Norm<'_> {
        Norm {
            weight: &self.weight,
            bias: self.bias.as_deref(),
            eps: self.eps,
        }
    }
}

/// `x + fc2(act(fc1(norm(x))))`, the MLP of an encoder layer. With packed bf16 layers and quick_gelu the
/// hidden activations go from `fc1` to `fc2` as bf16 tiles, never written out in f32 (the same
/// numbers: `fc2` would round them to bf16 anyway).
pub fn mlp(
    fc1: &Dense,
    fc2: &Dense,
    x: &Tensor,
    norm: &LayerNorm,
    act: Activation,
) -> Result<Tensor> {
    let ((inp1, out1), (inp2, out2)) = (fc1.dims()?, fc2.dims()?);
    let width = x.dims().last().copied();
    if width != Some(inp1) || out1 != inp2 || out2 != inp1 {
        anyhow::bail!(
            "an MLP of {inp1} -> {out1} and {inp2} -> {out2} got a tensor of shape {:?}",
            x.dims()
        );
    }
    #[cfg(target_arch = "x86_64")]
    if let (Weight::Packed(w1), Weight::Packed(w2), Some(f)) =
        (&fc1.weight, &fc2.weight, Fused::of(act))
    {
        if let Some(y) = bf16_mlp(fc1, w1, fc2, w2, &x.contiguous()?, norm, f) {
            return Ok(Tensor::from_vec(y, x.shape(), x.device())?);
        }
    }
    let h = fc1.forward_normed(x, norm, Some(act))?;
    fc2.forward_with(&h, Some(x), None)
}

/// The packed bf16 MLP; `None` when a tensor is not CPU f32 or the norm is not a plain layer norm.
#[cfg(target_arch = "x86_64")]
fn bf16_mlp(
    fc1: &Dense,
    w1: &super::bf16::PackedWeight,
    fc2: &Dense,
    w2: &super::bf16::PackedWeight,
    x: &Tensor,
    norm: &LayerNorm,
    activation: Fused,
) -> Option<Vec<f32>> {
    if !norm.remove_mean() {
        return None;
    }
    let (b1, b2, norm) = (fc1.bias_vec()?, fc2.bias_vec()?, NormParams::of(norm)?);
    with_cpu_f32(x, |xs| {
        let rows = xs.len() / x.dim(candle_core::D::Minus1).ok()?;
        let hidden = super::bf16::matmul_to_tiles(
            xs,
            rows,
            w1,
            Some(norm.as_norm()),
            Epilogue {
                bias: b1.as_deref(),
                residual: None,
                activation: Some(activation),
            },
        );
        let epilogue = Epilogue {
            bias: b2.as_deref(),
            residual: Some(xs),
            activation: None,
        };
        Some(super::bf16::matmul_tiles(&hidden, w2, epilogue))
    })
    .flatten()
}

/// `wᵀ` of a 2-D tensor, contiguous. On CPU f32 it copies in cache-sized tiles, many times faster
/// than a strided copy on the large weight matrices read at start-up.
fn transpose(w: &Tensor) -> candle_core::Result<Tensor> {
    const TILE: usize = 32;
    let (rows, cols) = w.dims2()?;
    let w = w.contiguous()?;
    let tiled = with_cpu_f32(&w, |src| {
        let mut dst = Vec::with_capacity(rows * cols);
        // Each task fills TILE rows of the result (TILE columns of the source), a TILE x TILE
        // tile at a time: read into `tile`, then written out a whole result row's part at once.
        // (Writing each value straight to its place kept TILE result rows open at once; when a
        // row is a multiple of 4 KiB apart, as for a 3072-wide MLP, they share one L1 set, and
        // the copy ran 2-3x slower.)
        dst.spare_capacity_mut()[..rows * cols]
            .par_chunks_mut((TILE * rows).max(1))
            .enumerate()
            .for_each(|(t, block)| {
                let c0 = t * TILE;
                let width = block.len() / rows;
                let mut tile = [[0f32; TILE]; TILE];
                for r0 in (0..rows).step_by(TILE) {
                    let height = (rows - r0).min(TILE);
                    for r in 0..height {
                        let row = &src[(r0 + r) * cols + c0..][..width];
                        for (line, &v) in tile.iter_mut().zip(row) {
                            line[r] = v;
                        }
                    }
                    for (c, line) in tile.iter().enumerate().take(width) {
                        for (d, &v) in block[c * rows + r0..][..height].iter_mut().zip(line) {
                            d.write(v);
                        }
                    }
                }
            });
        // SAFETY: the tasks cover all `cols` result rows, each over all `rows` columns.
        unsafe { dst.set_len(rows * cols) };
        dst
    });
    match tiled {
        Some(dst) => Tensor::from_vec(dst, (cols, rows), w.device()),
        None => w.t()?.contiguous(),
    }
}

/// Cuts `pixels` `(b, c, size, size)` into non-overlapping `p x p` patches, row by row:
/// `(b, (size/p)², c·p·p)`, each patch flattened channel-major as a convolution kernel is.
pub fn patchify(pixels: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = pixels.dims4()?;
    if p == 0 || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
        anyhow::bail!("{h}x{w} pixels do not divide into {p}x{p} patches");
    }
    let (gh, gw) = (h / p, w / p);
    let pixels = pixels.contiguous()?;
    let fused = with_cpu_f32(&pixels, |src| {
        let mut out = vec![0f32; b * gh * gw * c * p * p];
        out.par_chunks_mut(c * p * p)
            .enumerate()
            .for_each(|(i, patch)| {
                let (bi, gy, gx) = (i / (gh * gw), (i / gw) % gh, i % gw);
                for ch in 0..c {
                    for py in 0..p {
                        let row = ((bi * c + ch) * h + gy * p + py) * w + gx * p;
                        patch[(ch * p + py) * p..][..p].copy_from_slice(&src[row..row + p]);
                    }
                }
            });
        out
    });
    Ok(match fused {
        Some(out) => Tensor::from_vec(out, (b, gh * gw, c * p * p), pixels.device())?,
        None => pixels
            .reshape(vec![b, c, gh, p, gw, p])?
            .permute(vec![0, 2, 4, 1, 3, 5])?
            .reshape((b, gh * gw, c * p * p))?,
    })
}

/// Scaled dot-product attention over the fused projection `qkv` `(b, t, 3·c)` (q, k, v side by
/// side, each `heads` x `c / heads`), with an additive `mask` `(b or 1, 1, t, t)`. Returns the
/// heads' outputs side by side, `(b, t, c)`.
pub fn attention(qkv: &Tensor, heads: usize, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, t, c3) = qkv.dims3()?;
    if heads == 0 || !c3.is_multiple_of(3) || !(c3 / 3).is_multiple_of(heads) {
        anyhow::bail!("qkv of width {c3} is not q, k and v of {heads} equal heads");
    }
    let c = c3 / 3;
    let d = c / heads;
    let scale = (d as f64).powf(-0.5);
    if let Some(m) = mask {
        let rows = m.dim(0)?;
        if m.dims() != [rows, 1, t, t] || (rows != 1 && rows != b) {
            anyhow::bail!("a mask of shape {:?} for {b} sequences of {t}", m.dims());
        }
    }
    let mask_rows = mask.map_or(1, |m| m.dim(0).unwrap_or(1));
    let mask = mask.map(Tensor::contiguous).transpose()?;
    // Runs the fused kernel with the mask's data borrowed in place (`None` if not CPU f32).
    let fused = |mask_data: Option<&[f32]>| {
        with_cpu_f32(qkv, |qkv_data| {
            let mut out = vec![0f32; b * t * c];
            let out_ptr = SharedMut(out.as_mut_ptr());
            (0..b * heads).into_par_iter().for_each(|bh| {
                let (bi, hi) = (bh / heads, bh % heads);
                let base = bi * t * c3 + hi * d;
                let (q, k, v) = (
                    &qkv_data[base..],
                    &qkv_data[base + c..],
                    &qkv_data[base + 2 * c..],
                );
                let mut scores = vec![0f32; t * t];
                // SAFETY: q, k, v are t x d views with row stride 3c inside qkv_data; scores is t x t.
                unsafe {
                    gemm::gemm(
                        t,
                        t,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        t as isize,
                        false,
                        q.as_ptr(),
                        1,
                        c3 as isize,
                        k.as_ptr(),
                        c3 as isize,
                        1,
                        0.0,
                        scale as f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                let mask_block = mask_data
                    .as_ref()
                    .map(|m| &m[(bi % mask_rows) * t * t..][..t * t]);
                let softmax = Pass::Softmax {
                    width: t,
                    mask: mask_block,
                };
                in_place(&mut scores, softmax);
                let dst = out_ptr;
                // SAFETY: this task alone writes the t x d block of head hi of image bi, at
                // offset bi*t*c + hi*d with row stride c.
                unsafe {
                    gemm::gemm(
                        t,
                        d,
                        t,
                        dst.0.add(bi * t * c + hi * d),
                        1,
                        c as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        t as isize,
                        v.as_ptr(),
                        1,
                        c3 as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
            out
        })
    };
    let out = match &mask {
        None => fused(None),
        Some(m) => with_cpu_f32(m, |data| fused(Some(data))).flatten(),
    };
    if let Some(out) = out {
        return Ok(Tensor::from_vec(out, (b, t, c), qkv.device())?);
    }
    // Any other device or dtype: candle's ops.
    let qkv = qkv.reshape((b, t, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
    let q = (qkv.get(0)? * scale)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let mut logits = q.matmul(&k.t()?)?;
    if let Some(mask) = &mask {
        logits = logits.broadcast_add(&mask.to_dtype(logits.dtype())?)?;
    }
    let weights = candle_nn::ops::softmax_last_dim(&logits)?;
    Ok(weights.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_activations_match_candles_formulas() {
        let x = Tensor::arange(-3000f32, 3000f32, &candle_core::Device::Cpu).unwrap();
        let x = (x / 100.0).unwrap();
        let quick = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        for (f, want, tolerance) in [
            (Fused::QuickGelu, quick, 1e-6),
            (Fused::GeluTanh, x.gelu().unwrap(), 2e-6),
        ] {
            let want = want.to_vec1::<f32>().unwrap();
            let close = |got: &[f32], what: &str| {
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= tolerance * b.abs().max(1.0),
                        "{f:?} {what}: {a} vs {b}"
                    );
                }
            };
            let fused = fused_activation(&x, f).unwrap().to_vec1::<f32>().unwrap();
            close(&fused, "dispatched");
            // Every variant the CPU can run, whichever one the dispatch picks here.
            let fresh = x.to_vec1::<f32>().unwrap();
            let mut xs = fresh.clone();
            pass_plain(&mut xs, Pass::Activation(f));
            close(&xs, "plain");
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx2") && has!("fma") {
                    xs.copy_from_slice(&fresh);
                    // SAFETY: the CPU has AVX2 and FMA (checked).
                    unsafe { pass_avx2(&mut xs, Pass::Activation(f)) };
                    close(&xs, "avx2");
                }
                if has!("avx512f") {
                    xs.copy_from_slice(&fresh);
                    // SAFETY: the CPU has AVX-512 F (checked).
                    unsafe { pass_avx512(&mut xs, Pass::Activation(f)) };
                    close(&xs, "avx512");
                }
            }
        }
    }

    /// Softmax with a mask on ragged widths, every variant the CPU can run, against f64.
    #[test]
    fn softmax_matches_f64_in_every_variant() {
        for width in [1, 7, 16, 50, 77] {
            let rows = 3;
            let xs: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let mask: Vec<f32> = (0..rows * width)
                .map(|i| if i % 5 == 0 { -1e4 } else { 0.0 })
                .collect();
            let mut want = Vec::new();
            for (row, m) in xs.chunks(width).zip(mask.chunks(width)) {
                let s: Vec<f64> = row.iter().zip(m).map(|(&x, &m)| (x + m) as f64).collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
                want.extend(s.iter().map(|x| (x - max).exp() / sum));
            }
            let pass = Pass::Softmax {
                width,
                mask: Some(&mask),
            };
            let check = |run: &dyn Fn(&mut [f32]), what: &str| {
                let mut got = xs.clone();
                run(&mut got);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() < 1e-6,
                        "{what} {width} at {i}: {a} vs {b}"
                    );
                }
            };
            check(&|xs| pass_plain(xs, pass), "plain");
            check(&|xs| in_place(xs, pass), "dispatched");
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx2") && has!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked).
                    check(&|xs| unsafe { pass_avx2(xs, pass) }, "avx2");
                }
                if has!("avx512f") {
                    // SAFETY: the CPU has AVX-512 F (checked).
                    check(&|xs| unsafe { pass_avx512(xs, pass) }, "avx512");
                }
            }
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn fused_attention_matches_candle_ops() {
        let dev = candle_core::Device::Cpu;
        let (b, t, heads, d) = (3, 7, 2, 4);
        let qkv = Tensor::randn(0f32, 1., (b, t, 3 * heads * d), &dev).unwrap();
        let mut mask = vec![0f32; b * t * t];
        for (i, m) in mask.iter_mut().enumerate() {
            let (q, k) = ((i / t) % t, i % t);
            if k > q || (i / (t * t) == 1 && k > 3) {
                *m = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, t), &dev).unwrap();
        for m in [None, Some(&mask)] {
            let fused = attention(&qkv, heads, m).unwrap();
            // The same through candle's ops (bf16 takes that path; compare in f32 via a copy).
            let plain = attention(
                &qkv.to_dtype(DType::F64).unwrap(),
                heads,
                m.map(|m| m.to_dtype(DType::F64).unwrap()).as_ref(),
            )
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
            assert!(max_diff(&fused, &plain) < 1e-5);
        }
    }

    #[test]
    fn patchify_matches_the_permutation() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 8, 8), &dev).unwrap();
        let fused = patchify(&x, 4).unwrap();
        let plain = patchify(&x.to_dtype(DType::F64).unwrap(), 4)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(fused.dims(), [2, 4, 48]);
        assert_eq!(max_diff(&fused, &plain), 0.0);
    }

    #[test]
    fn tiled_transpose_matches_strided_copy() {
        let dev = candle_core::Device::Cpu;
        // Sizes that are not multiples of the tile, and a non-contiguous input.
        for (r, c) in [(1, 1), (33, 70), (100, 31), (64, 64), (1030, 45)] {
            let w = Tensor::randn(0f32, 1., (r, c), &dev).unwrap();
            let want = w.t().unwrap().contiguous().unwrap();
            assert_eq!(max_diff(&transpose(&w).unwrap(), &want), 0.0);
            let wt = transpose(&w.t().unwrap()).unwrap();
            assert_eq!(max_diff(&wt, &w), 0.0);
        }
        let empty = Tensor::zeros((0, 5), DType::F32, &dev).unwrap();
        assert_eq!(transpose(&empty).unwrap().dims(), [5, 0]);
    }

    #[test]
    fn fused_dense_matches_candle_ops() {
        let dev = candle_core::Device::Cpu;
        let w = Tensor::randn(0f32, 1., (6, 5), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., 6, &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 3, 5), &dev).unwrap();
        let r = Tensor::randn(0f32, 1., (2, 3, 6), &dev).unwrap();
        let f32_layer = Dense::new(w.clone(), Some(bias.clone()), MatmulKind::Native).unwrap();
        let f64_layer = Dense::new(
            w.to_dtype(DType::F64).unwrap(),
            Some(bias.to_dtype(DType::F64).unwrap()),
            MatmulKind::Native,
        )
        .unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        let r64 = r.to_dtype(DType::F64).unwrap();
        for act in [None, Some(Activation::QuickGelu), Some(Activation::Gelu)] {
            let fused = f32_layer.forward_with(&x, None, act).unwrap();
            let plain = f64_layer
                .forward_with(&x64, None, act)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            assert!(max_diff(&fused, &plain) < 1e-4, "{act:?}");
        }
        let fused = f32_layer.forward_with(&x, Some(&r), None).unwrap();
        let plain = f64_layer
            .forward_with(&x64, Some(&r64), None)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert!(max_diff(&fused, &plain) < 1e-4);
    }

    /// With every engine: the emulation, and each one the CPU has (see `bf16::Engine`).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_mlp_passes_tiles_between_layers_without_changing_results() {
        for engine in super::super::bf16::engines() {
            mlp_hand_off(engine);
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn mlp_hand_off(engine: super::super::bf16::Engine) {
        let dev = candle_core::Device::Cpu;
        // Widths that are not multiples of the tiles; 2 x 25 rows.
        let (hidden, inter) = (40, 70);
        let x = Tensor::randn(0f32, 1., (2, 25, hidden), &dev).unwrap();
        let layer = |out, inp| {
            let w = Tensor::randn(0f32, 0.2, (out, inp), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.2, out, &dev).unwrap();
            Dense::new(w, Some(b), MatmulKind::PackedBf16(engine)).unwrap()
        };
        let (fc1, fc2) = (layer(inter, hidden), layer(hidden, inter));
        let norm = LayerNorm::new(
            Tensor::randn(1f32, 0.1, hidden, &dev).unwrap(),
            Tensor::randn(0f32, 0.1, hidden, &dev).unwrap(),
            1e-5,
        );
        let fused = mlp(&fc1, &fc2, &x, &norm, Activation::QuickGelu).unwrap();
        // The same layers one at a time, the hidden activations written out in f32 (the norm
        // applied while packing in both, so that the bf16 operands are the same).
        let h = fc1
            .forward_normed(&x, &norm, Some(Activation::QuickGelu))
            .unwrap();
        let apart = fc2.forward_with(&h, Some(&x), None).unwrap();
        assert_eq!(fused.dims(), x.dims());
        assert!(max_diff(&fused, &apart) < 1e-4);
    }

    /// An int8 MLP (norm while packing, bias, activation and residual in the epilogue) with
    /// every int8 engine, emulated ones included, stays close to the f32 MLP of the same
    /// weights, with the fused quick_gelu and with the exact GELU applied afterwards.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn int8_mlp_stays_close_to_f32() {
        let dev = candle_core::Device::Cpu;
        let (hidden, inter) = (72, 130);
        let x = Tensor::randn(0f32, 1., (2, 21, hidden), &dev).unwrap();
        let weights = [(inter, hidden), (hidden, inter)].map(|(out, inp)| {
            (
                Tensor::randn(0f32, 0.2, (out, inp), &dev).unwrap(),
                Tensor::randn(0f32, 0.2, out, &dev).unwrap(),
            )
        });
        let layers = |kind| {
            weights
                .clone()
                .map(|(w, b)| Dense::new(w, Some(b), kind).unwrap())
        };
        let norm = LayerNorm::new(
            Tensor::randn(1f32, 0.1, hidden, &dev).unwrap(),
            Tensor::randn(0f32, 0.1, hidden, &dev).unwrap(),
            1e-5,
        );
        let [f1, f2] = layers(MatmulKind::Native);
        for act in [Activation::QuickGelu, Activation::Gelu] {
            let exact = mlp(&f1, &f2, &x, &norm, act).unwrap();
            let delta = (&exact - &x).unwrap();
            for engine in super::super::int8::engines() {
                let [q1, q2] = layers(MatmulKind::Int8(engine));
                let ours = mlp(&q1, &q2, &x, &norm, act).unwrap();
                let err = (&ours - &exact).unwrap().sqr().unwrap().sum_all().unwrap();
                let scale = delta.sqr().unwrap().sum_all().unwrap();
                let rel =
                    (err.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap()).sqrt();
                assert!(rel < 0.02, "{engine:?} {act:?}: relative error {rel}");
            }
        }
    }

    #[test]
    fn dense_refuses_mismatched_shapes() {
        let dev = candle_core::Device::Cpu;
        let w = Tensor::randn(0f32, 1., (5, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 5, &dev).unwrap();
        let layer = Dense::new(w.clone(), Some(b), MatmulKind::Native).unwrap();
        let wide = Tensor::randn(0f32, 1., (2, 4), &dev).unwrap();
        assert!(
            layer.forward(&wide).is_err(),
            "4 inputs for a 3-input layer"
        );
        let x = Tensor::randn(0f32, 1., (2, 3), &dev).unwrap();
        let residual = Tensor::randn(0f32, 1., (2, 4), &dev).unwrap();
        assert!(layer.forward_with(&x, Some(&residual), None).is_err());
        let bad_bias = Tensor::randn(0f32, 1., 4, &dev).unwrap();
        assert!(Dense::new(w, Some(bad_bias), MatmulKind::Native).is_err());
    }

    #[test]
    fn dense_matches_linear_on_3d_input() {
        let dev = candle_core::Device::Cpu;
        let w = Tensor::randn(0f32, 1., (5, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 5, &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 4, 3), &dev).unwrap();
        let ours = Dense::new(w.clone(), Some(b.clone()), MatmulKind::Native)
            .unwrap()
            .forward(&x)
            .unwrap();
        let theirs = candle_core::Module::forward(&candle_nn::Linear::new(w, Some(b)), &x).unwrap();
        let diff = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5);
    }
}
