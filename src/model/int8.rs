//! int8 matrix products on the CPU, for `--precision int8`: weights are quantised once, at load,
//! to signed 8-bit integers (symmetric, one scale per output channel), activations to unsigned
//! 8-bit integers as each product packs them (asymmetric, one scale and zero point per row, as
//! ONNX Runtime's dynamic quantisation does), and the products sum in int32. Layer norms,
//! softmax, the attention scores and everything between the products stay f32.
//!
//! Five engines share every step but the innermost product, best first:
//! - Intel AMX tiles (`tdpbusd`: Sapphire Rapids and later, [`super::amx`]);
//! - AVX-512 VNNI (`vpdpbusd`, four u8 x s8 products summed into each int32 lane: Intel Xeon
//!   since Cascade Lake, AMD Zen 4 and later);
//! - AVX-VNNI (the same on 256-bit vectors: Intel desktops and laptops since Alder Lake);
//! - AVX-512 BW without VNNI (`vpmaddubsw`, two u8 x s8 products summed into each 16-bit lane,
//!   then `vpmaddwd` by ones into int32 lanes: Intel Xeon Skylake-SP);
//! - plain AVX2 (the same on 256-bit vectors, as ONNX Runtime does: every x86 CPU of the last
//!   ten years).
//!
//! All sum exactly. `vpmaddubsw` saturates each pair of products at 16 bits, which ONNX
//! Runtime accepts; here the engines that use it quantise so that no pair can overflow
//! (activations to `PAIR_ACTIVATION_LEVELS`, pairs of weights within `PAIR_LEVELS`), which
//! costs them a little precision: the others give the same results as one another.
//!
//! The layout is AMX's, as in [`super::bf16`]: 64-byte lines, tiles of 16 lines; a weight line
//! holds four consecutive inputs of 16 outputs, an activation line 64 consecutive inputs of one
//! row.
//! Each 32x32 block of int32 sums is dequantised (`sa · sw · (acc − zp · Σw)`) and run through
//! the epilogue (bias, activation, residual) while it is in L1 ([`super::epilogue`]).
//!
//! [`engine`] picks the first engine the CPU has, else none (int8 then runs in f32).
//! `FOODCLIP_INT8=amx|vnni|avx-vnni|avx512bw|avx2|off` forces one, so that one machine can
//! measure every path. In tests, emulated engines compute the sums in plain Rust (exactly, and
//! saturating as `vpmaddubsw` does), so the packing, quantisation and blocking are tested on
//! any CPU.

use super::amx::{self, Dot};
use super::epilogue::{self, collect_rows, finish_block, for_isa, Block, Grid, Isa};
pub use super::epilogue::{Epilogue, Norm};
use super::math::lane_max;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Whether the CPU has AVX-512 VNNI (and AVX-512 F and BW), and the build its AVX-512 kernels.
pub fn vnni_available() -> bool {
    avx512bw_available() && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// Whether AMX int8 can be used here: the CPU has it (and AVX-512 VNNI, whose f32 steps the
/// engine shares), the OS saves the tile state, and Linux has granted it to this process.
pub fn amx_available() -> bool {
    vnni_available() && amx::available(Dot::Int8)
}

/// Whether the CPU has AVX-512 F and BW, and the build its AVX-512 kernels.
pub fn avx512bw_available() -> bool {
    super::ops::avx512() && std::arch::is_x86_feature_detected!("avx512bw")
}

/// Whether the CPU has AVX2 and FMA.
pub fn avx2_available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the CPU has AVX-VNNI (`vpdpbusd` on 256-bit vectors, VEX-encoded: Intel Alder Lake
/// and later desktops and laptops, Sapphire Rapids, AMD Zen 5), and AVX2 and FMA.
pub fn avx_vnni_available() -> bool {
    avx2_available() && std::arch::is_x86_feature_detected!("avxvnni")
}

/// What runs a packed weight's products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The AMX tiles' `tdpbusd` (only where [`amx_available`]).
    Amx,
    /// AVX-512 VNNI dot products (only where [`vnni_available`]).
    Avx512Vnni,
    /// AVX-VNNI dot products, 256 bits wide (only where [`avx_vnni_available`]).
    AvxVnni,
    /// AVX-512 BW `vpmaddubsw` products, of weights whose pairs cannot saturate (only where
    /// [`avx512bw_available`]).
    Avx512Bw,
    /// AVX2 `vpmaddubsw` products, as [`Engine::Avx512Bw`]'s on 256-bit vectors (only where
    /// [`avx2_available`]).
    Avx2,
    /// The same sums in plain Rust, for tests on any CPU.
    #[cfg(test)]
    Emulated,
    /// The `vpmaddubsw` engines' sums in plain Rust, each pair of products saturated at 16 bits
    /// as `vpmaddubsw` does, on weights quantised as for them.
    #[cfg(test)]
    EmulatedAvx2,
}

/// The environment variable that forces an int8 engine: `amx`, `vnni`, `avx-vnni`, `avx512bw`,
/// `avx2`, or `off` (no int8 arithmetic: `--precision int8` runs f32).
pub const FORCE_VAR: &str = "FOODCLIP_INT8";

/// The int8 engines, best first.
fn choices() -> [epilogue::Choice<Engine>; 5] {
    let amx = "AMX int8 (or Linux did not grant the tile state)";
    [
        ("amx", amx_available(), amx, Engine::Amx),
        ("vnni", vnni_available(), "AVX-512 VNNI", Engine::Avx512Vnni),
        (
            "avx-vnni",
            avx_vnni_available(),
            "AVX-VNNI",
            Engine::AvxVnni,
        ),
        (
            "avx512bw",
            avx512bw_available(),
            "AVX-512 BW",
            Engine::Avx512Bw,
        ),
        ("avx2", avx2_available(), "AVX2", Engine::Avx2),
    ]
}

/// The engine for int8 products on this CPU: AMX, else AVX-512 VNNI, else AVX-VNNI, else AVX-512
/// BW, else AVX2;
/// `Ok(None)` when it has none of them (or `FOODCLIP_INT8=off`). A forced engine the CPU lacks
/// is an error.
pub fn engine() -> Result<Option<Engine>, String> {
    epilogue::choose(FORCE_VAR, &choices())
}

impl Engine {
    /// The instructions of its f32 steps.
    fn isa(self) -> Isa {
        match self {
            Engine::Amx | Engine::Avx512Vnni | Engine::Avx512Bw => Isa::Avx512,
            Engine::AvxVnni | Engine::Avx2 => Isa::Avx2,
            #[cfg(test)]
            Engine::Emulated | Engine::EmulatedAvx2 => Isa::Plain,
        }
    }

    /// Whether it quantises so that each pair of products fits 16 bits (`vpmaddubsw`'s engines):
    /// activations to [`PAIR_ACTIVATION_LEVELS`], each pair of same-signed weights within
    /// [`PAIR_LEVELS`].
    fn bounds_pairs(self) -> bool {
        match self {
            Engine::Avx512Bw | Engine::Avx2 => true,
            #[cfg(test)]
            Engine::EmulatedAvx2 => true,
            _ => false,
        }
    }

    /// The largest quantised activation.
    fn activation_levels(self) -> u8 {
        if self.bounds_pairs() {
            PAIR_ACTIVATION_LEVELS
        } else {
            ACTIVATION_LEVELS
        }
    }

    /// Checks that this engine can run here.
    fn check(self) {
        match self {
            Engine::Amx => assert!(amx_available(), "AMX int8 is not available"),
            Engine::Avx512Vnni => assert!(vnni_available(), "AVX-512 VNNI is not available"),
            Engine::AvxVnni => assert!(avx_vnni_available(), "AVX-VNNI is not available"),
            Engine::Avx512Bw => assert!(avx512bw_available(), "AVX-512 BW is not available"),
            Engine::Avx2 => assert!(avx2_available(), "AVX2 is not available"),
            #[cfg(test)]
            Engine::Emulated | Engine::EmulatedAvx2 => {}
        }
    }
}

/// 64 bytes, aligned to a cache line: four inputs of 16 outputs (weights), or 64 inputs of one
/// row (activations).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

const ZERO_LINE: Line = Line([0; 64]);

/// Lines per tile (16 rows, or 16 groups of four inputs).
const TILE: usize = 16;

/// Inputs per tile.
const K: usize = 64;

/// The largest quantised weight (and minus the smallest).
const WEIGHT_LEVELS: f32 = 127.0;

/// The largest quantised activation.
const ACTIVATION_LEVELS: u8 = 255;

/// The `vpmaddubsw` engines' largest quantised activation, and the largest sum of the
/// magnitudes of two same-signed quantised weights that `vpmaddubsw` multiplies as a pair
/// (inputs `2i` and `2i + 1`): their product fits 16 bits, so no pair of products saturates. (A pair of
/// opposite signs cannot overflow.) A weight's scale grows where a pair passes the bound. This
/// split (activations 0.3 bit short of 8) moved the random ViT-B/32's embeddings least of
/// those tried (mean 1 − cosine to f32 over 48 photos, ×10⁻⁴: 255 and 128, 0.65; 231 and
/// 141, 0.55; 207 and 158, 0.54; 199 and 164, 0.59; the other engines, 0.44).
const PAIR_ACTIVATION_LEVELS: u8 = 207;
/// See [`PAIR_ACTIVATION_LEVELS`].
const PAIR_LEVELS: f32 = 158.0;
const _: () = assert!(PAIR_ACTIVATION_LEVELS as i32 * PAIR_LEVELS as i32 <= i16::MAX as i32);

/// A weight `(out, inp)` quantised per output channel and packed in tiles: for each 16 outputs
/// and 64 inputs, 16 lines of four inputs for each of the 16 outputs. Outputs are padded to a
/// multiple of 32, inputs of 64, with zeros.
pub struct PackedWeight {
    data: Vec<Line>,
    /// Per output: the real weight is `scale · q`.
    scales: Vec<f32>,
    /// Per output: `Σ q` over the inputs, for the activations' zero point.
    sums: Vec<i32>,
    inp: usize,
    out: usize,
    k_tiles: usize,
    engine: Engine,
}

/// Quantises a row-major f32 weight `(out, inp)` to int8 and packs it for `engine`'s products.
pub fn pack(w: &[f32], out: usize, inp: usize, engine: Engine) -> PackedWeight {
    assert_eq!(w.len(), out * inp, "the weight is out x inp");
    let k_tiles = inp.div_ceil(K).max(1);
    let padded = out.div_ceil(32) * 32;
    let (mut scales, mut sums) = (vec![0f32; padded], vec![0i32; padded]);
    let mut q = vec![0i8; padded * inp];
    q.par_chunks_mut(inp.max(1))
        .zip(scales.par_iter_mut().zip(sums.par_iter_mut()))
        .take(out)
        .enumerate()
        .for_each(|(n, (q, (scale, sum)))| {
            let row = &w[n * inp..][..inp];
            let mut step = lane_max(row, f32::abs) / WEIGHT_LEVELS;
            if engine.bounds_pairs() {
                step = step.max(same_sign_pair_max(row) / PAIR_LEVELS);
            }
            *scale = if step > 0.0 { step } else { 1.0 };
            let inv = 1.0 / *scale;
            for (q, &x) in q.iter_mut().zip(row) {
                *q = round_even_int(within(x * inv, WEIGHT_LEVELS)) as i8;
            }
            if engine.bounds_pairs() {
                bound_pairs(q);
            }
            *sum = q.iter().map(|&v| v as i32).sum();
        });
    let mut data = vec![ZERO_LINE; padded / 16 * k_tiles * TILE];
    epilogue::fill_weight_tiles(&mut data, (out, inp, k_tiles, 4), |line, at, run| {
        for (dst, &v) in line.0[at..].iter_mut().zip(&q[run]) {
            *dst = v as u8;
        }
    });
    PackedWeight {
        data,
        scales,
        sums,
        inp,
        out,
        k_tiles,
        engine,
    }
}

/// The largest `|a| + |b|` over a row's pairs of inputs `(2i, 2i + 1)` of the same sign.
fn same_sign_pair_max(row: &[f32]) -> f32 {
    row.chunks_exact(2)
        .filter(|p| (p[0] >= 0.0) == (p[1] >= 0.0))
        .map(|p| p[0].abs() + p[1].abs())
        .fold(0.0, f32::max)
}

/// Trims the larger of any pair of same-signed quantised weights whose magnitudes sum past
/// [`PAIR_LEVELS`]: the scale keeps them within it, but rounding both up can pass it by one.
fn bound_pairs(q: &mut [i8]) {
    let limit = PAIR_LEVELS as i32;
    for p in q.chunks_exact_mut(2) {
        let (a, b) = (p[0] as i32, p[1] as i32);
        let excess = a.abs() + b.abs() - limit;
        if excess > 0 && a.signum() == b.signum() {
            let big = if a.abs() >= b.abs() { 0 } else { 1 };
            p[big] -= (excess * p[big].signum() as i32) as i8;
        }
    }
}

impl PackedWeight {
    /// Outputs.
    pub fn out(&self) -> usize {
        self.out
    }

    /// Inputs.
    pub fn inp(&self) -> usize {
        self.inp
    }
}

/// Activations quantised per row and packed like the weights: for each group of 16 rows,
/// `k_tiles` tiles of 16 lines (one per row) of 64 inputs. Rows are padded to a multiple of 32.
#[derive(Default)]
struct Quantized {
    lines: Vec<Line>,
    /// Per row: the scale and the quantised value of 0; the real activation is
    /// `scale · (q − zero)`.
    params: Vec<(f32, i32)>,
}

thread_local! {
    /// The packed activations of the last product on this thread, kept so that every call does
    /// not allocate (and fault in) fresh buffers.
    static ACTIVATIONS: RefCell<Quantized> = RefCell::new(Quantized::default());
}

/// A row's quantisation to `0..=levels`: the range `[min(0, lo), max(0, hi)]` (so that 0 is
/// exact) split into that many steps. Returns `(scale, zero point)`.
#[inline(always)]
fn row_params(row: &[f32], levels: u8) -> (f32, i32) {
    let (mut los, mut his) = ([0f32; 16], [0f32; 16]);
    let chunks = row.chunks_exact(16);
    let (mut lo, mut hi) = (0f32, 0f32);
    for &x in chunks.remainder() {
        (lo, hi) = (lo.min(x), hi.max(x));
    }
    for chunk in chunks {
        // Selects rather than `f32::min`, whose NaN rule keeps the loop from vectorising.
        for ((l, h), &x) in los.iter_mut().zip(his.iter_mut()).zip(chunk) {
            *l = if x < *l { x } else { *l };
            *h = if x > *h { x } else { *h };
        }
    }
    let lo = los.iter().fold(lo, |a, &b| a.min(b));
    let hi = his.iter().fold(hi, |a, &b| a.max(b));
    let levels = levels as f32;
    let scale = if hi > lo { (hi - lo) / levels } else { 1.0 };
    let zero = (-lo / scale).round_ties_even().clamp(0.0, levels) as i32;
    (scale, zero)
}

/// `x` clamped to `-limit..=limit` with selects: unlike `f32::clamp` (and `as` to an
/// integer), they let the loops around it vectorise.
#[inline(always)]
fn within(x: f32, limit: f32) -> f32 {
    if x < -limit {
        -limit
    } else if x > limit {
        limit
    } else {
        x
    }
}

/// 1.5 · 2^23: a float of this size has no fraction bits, so adding it rounds `|x| <= 2^22`
/// to the nearest integer, ties to even (the default rounding mode).
const MAGIC: f32 = 12_582_912.0;

/// `x` rounded to the nearest integer, ties to even, for `|x| <= 2^22`: the low mantissa bits
/// of `x + MAGIC` are the integer. Unlike `f32::round_ties_even`, it vectorises without
/// SSE4.1.
#[inline(always)]
fn round_even_int(x: f32) -> i32 {
    (x + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// Quantises one row to `0..=levels` into every `TILE`th line of `dst` (64 inputs a line; the
/// padding is the zero point, which meets zero weights).
#[inline(always)]
fn quantize_row(row: &[f32], (scale, zero): (f32, i32), levels: u8, dst: &mut [Line]) {
    let inv = 1.0 / scale;
    let (limit, levels) = (levels as f32, levels as i32);
    for (kt, chunk) in row.chunks(K).enumerate() {
        let line = &mut dst[kt * TILE].0;
        for (q, &x) in line.iter_mut().zip(chunk) {
            // The row's values lie within `levels` steps of 0, so the first clamp
            // only guards the rounding's range.
            *q = (round_even_int(within(x * inv, limit)) + zero).clamp(0, levels) as u8;
        }
        line[chunk.len()..].fill(zero as u8);
    }
}

/// Quantises one row to `0..=levels` into every `TILE`th line of `dst`; returns its scale and
/// zero point.
#[inline(always)]
fn quantize_plain(row: &[f32], levels: u8, dst: &mut [Line]) -> (f32, i32) {
    let params = row_params(row, levels);
    quantize_row(row, params, levels, dst);
    params
}

for_isa! {
    /// [`quantize_plain`] with `isa`'s instructions.
    fn quantize(row: &[f32], levels: u8, dst: &mut [Line]) -> (f32, i32) = quantize_plain
}

/// Quantises activations `(rows, inp)` into `q`, layer-normalising each row first with `norm`.
fn pack_activations(
    x: &[f32],
    rows: usize,
    inp: usize,
    k_tiles: usize,
    norm: Option<Norm>,
    engine: Engine,
    q: &mut Quantized,
) {
    let padded = rows.div_ceil(32) * 32;
    q.lines.resize(padded / 16 * k_tiles * TILE, ZERO_LINE);
    q.params.resize(padded, (0.0, 0));
    let isa = engine.isa();
    let lines = (&mut q.lines[..], k_tiles * TILE, ZERO_LINE);
    epilogue::pack_rows(
        x,
        rows,
        inp,
        norm,
        isa,
        lines,
        &mut q.params,
        |row, dst, p| *p = quantize(isa, row, engine.activation_levels(), dst),
    );
}

/// A 32x32 block of int32 sums.
#[repr(C, align(64))]
struct Sums([i32; 32 * 32]);

/// `act(norm(x) · Wᵀ + bias) + residual` for `x` `(rows, inp)`, row-major: int8 products, int32
/// sums, the norm, dequantisation and epilogue in f32. Returns `(rows, out)`.
pub fn matmul(
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    norm: Option<Norm>,
    epilogue: Epilogue,
) -> Vec<f32> {
    w.engine.check();
    assert_eq!(x.len(), rows * w.inp);
    assert!(norm.is_none_or(|n| n.weight.len() == w.inp && n.bias.is_none_or(|b| b.len() == w.inp)));
    epilogue.check(rows, w.out);
    let mut q = ACTIVATIONS.with(|buf| std::mem::take(&mut *buf.borrow_mut()));
    pack_activations(x, rows, w.inp, w.k_tiles, norm, w.engine, &mut q);
    let lines = &q.lines;
    let out = w.out;
    let strip = w.k_tiles * TILE;
    let grid = Grid {
        rows,
        out,
        block_bytes: 32 * strip * size_of::<Line>() / TILE,
    };
    let isa = w.engine.isa();
    let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
        let init = || (Sums([0; 32 * 32]), Block([0f32; 32 * 32]));
        epilogue::for_each_block(grid, y, out, init, |(sums, block), at, y, mp| {
            let a = &lines[(at.row / 16) * strip..][..2 * strip];
            let b = &w.data[(at.col / 16) * strip..][..2 * strip];
            tile_product(w.engine, a, b, w.k_tiles, sums);
            let cols = at.col..at.col + 32;
            let rows = &q.params[at.row..at.row + 32];
            dequantize(
                isa,
                sums,
                rows,
                (&w.scales[cols.clone()], &w.sums[cols]),
                block,
            );
            finish_block(isa, block, at, &epilogue, &mut y[mp * out..]);
        })
    };
    // SAFETY: the blocks cover every row and column of the output exactly once, and
    // `finish_block` writes each of their values.
    let y = unsafe { collect_rows(rows, out, fill) };
    ACTIVATIONS.with(|buf| *buf.borrow_mut() = q);
    y
}

/// `block = sa · sw · (sums − zero · Σw)` for each row (scale `sa`, zero point) and column
/// (scale `sw`, weight sum `Σw`) of the block.
#[inline(always)]
fn dequantize_plain(
    sums: &Sums,
    rows: &[(f32, i32)],
    (col_scales, col_sums): (&[f32], &[i32]),
    block: &mut Block,
) {
    // Fixed lengths, so that the loop vectorises without a scalar fallback.
    let col_scales: &[f32; 32] = col_scales[..32].try_into().expect("32 scales");
    let col_sums: &[i32; 32] = col_sums[..32].try_into().expect("32 sums");
    for (m, &(sa, zero)) in rows[..32].iter().enumerate() {
        let out: &mut [f32; 32] = (&mut block.0[m * 32..][..32]).try_into().expect("a row");
        let acc: &[i32; 32] = sums.0[m * 32..][..32].try_into().expect("a row");
        for n in 0..32 {
            out[n] = (acc[n] - zero * col_sums[n]) as f32 * (sa * col_scales[n]);
        }
    }
}

for_isa! {
    /// [`dequantize_plain`] with `isa`'s instructions.
    fn dequantize(
        sums: &Sums,
        rows: &[(f32, i32)],
        cols: (&[f32], &[i32]),
        block: &mut Block,
    ) = dequantize_plain
}

/// One 32x32 block of int32 sums of `A · B` into `c` with `engine`: A is two strips of
/// `k_tiles` packed activation tiles (rows 0-15, then 16-31), B two strips of packed weight
/// tiles (columns 0-15, then 16-31).
fn tile_product(engine: Engine, a: &[Line], b: &[Line], k_tiles: usize, c: &mut Sums) {
    assert!(a.len() >= 2 * k_tiles * TILE && b.len() >= 2 * k_tiles * TILE);
    match engine {
        // SAFETY: the engine is only used where the CPU has AMX int8; the lengths are checked
        // above.
        Engine::Amx => unsafe {
            let c = c.0.as_mut_ptr().cast();
            amx::product(Dot::Int8, a.as_ptr().cast(), b.as_ptr().cast(), k_tiles, c)
        },
        // SAFETY: the engine is only used where the CPU has AVX-512 VNNI; the lengths are
        // checked above.
        Engine::Avx512Vnni => unsafe {
            rows_vnni::<12>((a, b), k_tiles, c, 0);
            rows_vnni::<12>((a, b), k_tiles, c, 12);
            rows_vnni::<8>((a, b), k_tiles, c, 24);
        },
        // SAFETY: the engine is only used where the CPU has AVX-512 BW; the lengths are
        // checked above.
        Engine::Avx512Bw => unsafe {
            rows_avx512bw::<12>((a, b), k_tiles, c, 0);
            rows_avx512bw::<12>((a, b), k_tiles, c, 12);
            rows_avx512bw::<8>((a, b), k_tiles, c, 24);
        },
        // SAFETY: the engine is only used where the CPU has AVX-VNNI; the lengths are checked.
        Engine::AvxVnni => unsafe {
            for half in 0..2 {
                for m0 in (0..30).step_by(6) {
                    rows_avx_vnni::<6>((a, b), k_tiles, c, (m0, half));
                }
                rows_avx_vnni::<2>((a, b), k_tiles, c, (30, half));
            }
        },
        // SAFETY: the engine is only used where the CPU has AVX2; the lengths are checked.
        Engine::Avx2 => unsafe {
            for half in 0..2 {
                for m0 in (0..32).step_by(4) {
                    rows_avx2::<4>((a, b), k_tiles, c, (m0, half));
                }
            }
        },
        #[cfg(test)]
        Engine::Emulated => product_emulated(a, b, k_tiles, c, false),
        #[cfg(test)]
        Engine::EmulatedAvx2 => product_emulated(a, b, k_tiles, c, true),
    }
}

/// Rows `m0..m0 + R` of a block on 512-bit vectors, each step `acc = dot(acc, x, w)` adding
/// four inputs' products per int32 lane: each weight line holds four inputs of 16 columns, and
/// each row's four activations are broadcast to all 16 lanes. 12 rows x 2 vectors are 24
/// accumulators, which leaves registers for the weights and `dot`'s temporaries.
///
/// # Safety
/// The CPU must have AVX-512 F (and whatever `dot` uses); `a` and `b` must each hold
/// `2 * k_tiles` tiles; `m0 + R <= 32`.
#[inline(always)]
unsafe fn rows_512<const R: usize>(
    (a, b): (&[Line], &[Line]),
    k_tiles: usize,
    c: &mut Sums,
    m0: usize,
    dot: impl Fn(__m512i, __m512i, __m512i) -> __m512i,
) {
    let strip = k_tiles * TILE;
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    let rows: [*const i32; R] = epilogue::row_lines(a, strip, m0);
    for kt in 0..k_tiles {
        for r in 0..TILE {
            let b0 = _mm512_load_si512(b.add(kt * TILE + r).cast());
            let b1 = _mm512_load_si512(b.add(strip + kt * TILE + r).cast());
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let x = _mm512_set1_epi32(*row.add(kt * TILE * 16 + r));
                acc[0] = dot(acc[0], x, b0);
                acc[1] = dot(acc[1], x, b1);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let out = c.0.as_mut_ptr().add((m0 + i) * 32);
        _mm512_store_si512(out.cast(), acc[0]);
        _mm512_store_si512(out.add(16).cast(), acc[1]);
    }
}

/// [`rows_512`] with AVX-512 VNNI's `vpdpbusd`.
///
/// # Safety
/// The CPU must have AVX-512 F and VNNI; as for [`rows_512`].
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn rows_vnni<const R: usize>(
    ab: (&[Line], &[Line]),
    k_tiles: usize,
    c: &mut Sums,
    m0: usize,
) {
    rows_512::<R>(ab, k_tiles, c, m0, |acc, x, w| {
        _mm512_dpbusd_epi32(acc, x, w)
    })
}

/// [`rows_512`] with AVX-512 BW: `vpmaddubsw` (pairs of u8 x s8 products in 16-bit lanes;
/// exact, as the engine's quantisation bounds them), `vpmaddwd` by ones (the pairs summed into
/// int32 lanes) and an add.
///
/// # Safety
/// The CPU must have AVX-512 F and BW; as for [`rows_512`].
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows_avx512bw<const R: usize>(
    ab: (&[Line], &[Line]),
    k_tiles: usize,
    c: &mut Sums,
    m0: usize,
) {
    let ones = _mm512_set1_epi16(1);
    rows_512::<R>(ab, k_tiles, c, m0, |acc, x, w| {
        _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(x, w), ones))
    })
}

/// Rows `m0..m0 + R` and columns `16 · half..16 · half + 16` of a block on 256-bit vectors, each
/// step `acc = dot(acc, x, w)` adding four inputs' products per int32 lane: a weight line is
/// two vectors (four inputs of columns 0-7, then 8-15), and each row's four activations are
/// broadcast to all 8 lanes.
///
/// # Safety
/// The CPU must have AVX2 (and whatever `dot` uses); `a` and `b` must each hold `2 * k_tiles`
/// tiles; `m0 + R <= 32`, `half < 2`.
#[inline(always)]
unsafe fn rows_256<const R: usize>(
    (a, b): (&[Line], &[Line]),
    k_tiles: usize,
    c: &mut Sums,
    (m0, half): (usize, usize),
    dot: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) {
    let strip = k_tiles * TILE;
    let (a, b) = (a.as_ptr(), b.as_ptr().add(half * strip));
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let rows: [*const i32; R] = epilogue::row_lines(a, strip, m0);
    for kt in 0..k_tiles {
        for r in 0..TILE {
            let line = b.add(kt * TILE + r).cast::<__m256i>();
            let (b0, b1) = (_mm256_load_si256(line), _mm256_load_si256(line.add(1)));
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let x = _mm256_set1_epi32(*row.add(kt * TILE * 16 + r));
                acc[0] = dot(acc[0], x, b0);
                acc[1] = dot(acc[1], x, b1);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let out = c.0.as_mut_ptr().add((m0 + i) * 32 + half * 16);
        _mm256_store_si256(out.cast(), acc[0]);
        _mm256_store_si256(out.add(8).cast(), acc[1]);
    }
}

/// [`rows_256`] with AVX-VNNI's `vpdpbusd`. 6 rows x 2 vectors are 12 of the 16 registers.
///
/// # Safety
/// The CPU must have AVX2 and AVX-VNNI; as for [`rows_256`].
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn rows_avx_vnni<const R: usize>(
    ab: (&[Line], &[Line]),
    k_tiles: usize,
    c: &mut Sums,
    at: (usize, usize),
) {
    rows_256::<R>(ab, k_tiles, c, at, |acc, x, w| {
        _mm256_dpbusd_avx_epi32(acc, x, w)
    })
}

/// [`rows_256`] with plain AVX2: `vpmaddubsw` (pairs of u8 x s8 products in 16-bit lanes;
/// exact, as the engine's quantisation bounds them), `vpmaddwd` by ones (the pairs summed into
/// int32 lanes) and an add, as ONNX Runtime does. 4 rows x 2 vectors are 8 accumulators,
/// beside the weights, the ones, a broadcast and the products.
///
/// # Safety
/// The CPU must have AVX2; as for [`rows_256`].
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2<const R: usize>(
    ab: (&[Line], &[Line]),
    k_tiles: usize,
    c: &mut Sums,
    at: (usize, usize),
) {
    let ones = _mm256_set1_epi16(1);
    rows_256::<R>(ab, k_tiles, c, at, |acc, x, w| {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones))
    })
}

/// A block of sums in plain Rust; with `saturate`, each pair of products is saturated to 16
/// bits first, as `vpmaddubsw` does.
#[cfg(test)]
fn product_emulated(a: &[Line], b: &[Line], k_tiles: usize, c: &mut Sums, saturate: bool) {
    let strip = k_tiles * TILE;
    for m in 0..32 {
        for n in 0..32 {
            let mut sum = 0i32;
            for kt in 0..k_tiles {
                let arow = &a[(m / 16) * strip + kt * TILE + m % 16].0;
                for r in 0..TILE {
                    let brow = &b[(n / 16) * strip + kt * TILE + r].0;
                    let (x, w) = (&arow[4 * r..][..4], &brow[4 * (n % 16)..][..4]);
                    for j in [0, 2] {
                        let pair: i32 = (j..j + 2).map(|j| x[j] as i32 * w[j] as i8 as i32).sum();
                        sum += if saturate {
                            pair.clamp(i16::MIN.into(), i16::MAX.into())
                        } else {
                            pair
                        };
                    }
                }
            }
            c.0[m * 32 + n] = sum;
        }
    }
}

#[cfg(test)]
/// The emulations everywhere, and each hardware engine where the CPU has it.
pub(crate) fn engines() -> Vec<Engine> {
    epilogue::testable(&[Engine::Emulated, Engine::EmulatedAvx2], &choices())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::epilogue::layer_norm;

    /// Deterministic values in `[-1, 1)` with some spread of magnitudes.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 23) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// What `engine`'s product should be, from the quantised values in plain Rust: each weight
    /// quantised per output (for AVX2, within the pair bound), each row of activations per
    /// row, exact integer sums.
    fn reference(x: &[f32], rows: usize, (w, out): (&[f32], usize), engine: Engine) -> Vec<f32> {
        let inp = x.len() / rows;
        let mut y = vec![0f32; rows * out];
        for m in 0..rows {
            let row = &x[m * inp..][..inp];
            let (sa, zero) = row_params(row, engine.activation_levels());
            let levels = engine.activation_levels() as f32;
            let qa: Vec<i32> = row
                .iter()
                .map(|&v| {
                    ((v * (1.0 / sa)).round_ties_even() + zero as f32).clamp(0.0, levels) as i32
                })
                .collect();
            for n in 0..out {
                let wrow = &w[n * inp..][..inp];
                let mut max = wrow.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                if engine.bounds_pairs() {
                    for p in wrow.chunks_exact(2).filter(|p| p[0] * p[1] >= 0.0) {
                        max = max.max((p[0].abs() + p[1].abs()) / 158.0);
                    }
                }
                let sw = if max > 0.0 { max } else { 1.0 };
                let mut qw: Vec<i8> = wrow
                    .iter()
                    .map(|&v| (v * (1.0 / sw)).round_ties_even().clamp(-127.0, 127.0) as i8)
                    .collect();
                if engine.bounds_pairs() {
                    bound_pairs(&mut qw);
                }
                let acc: i64 = qa
                    .iter()
                    .zip(&qw)
                    .map(|(&a, &b)| ((a - zero) * b as i32) as i64)
                    .sum();
                y[m * out + n] = acc as f32 * sa * sw;
            }
        }
        y
    }

    /// Every engine against the plain reference on ragged shapes (rows, inputs and outputs
    /// off the 32-, 64- and 16-multiples), with zero rows and a residual and bias.
    #[test]
    fn products_match_the_integer_reference_on_ragged_shapes() {
        for engine in engines() {
            for &(rows, inp, out) in &[
                (1, 1, 1),
                (3, 63, 17),
                (17, 64, 32),
                (33, 65, 33),
                (40, 130, 70),
                (64, 200, 48),
                // Several blocks of rows per thread under each block of columns, and several
                // blocks of columns.
                (300, 100, 70),
            ] {
                let mut x = values(rows * inp, (rows * 31 + inp) as u64);
                x[..inp].fill(0.0); // a row of zeros
                let w = values(out * inp, (out * 7 + inp) as u64);
                let bias = values(out, 5);
                let residual = values(rows * out, 9);
                let packed = pack(&w, out, inp, engine);
                let ours = matmul(
                    &x,
                    rows,
                    &packed,
                    None,
                    Epilogue {
                        bias: Some(&bias),
                        residual: Some(&residual),
                        activation: None,
                    },
                );
                let expected = reference(&x, rows, (&w, out), engine);
                for (i, (a, e)) in ours.iter().zip(&expected).enumerate() {
                    let e = e + bias[i % out] + residual[i];
                    assert!(
                        (a - e).abs() <= 1e-5 * (1.0 + e.abs()),
                        "{engine:?} {rows}x{inp}x{out} at {i}: {a} vs {e}"
                    );
                }
            }
        }
    }

    /// Quantisation costs little: against the f32 product, the error stays near one step of
    /// the activations' scale over the input width.
    #[test]
    fn products_stay_close_to_f32() {
        let (rows, inp, out) = (24, 256, 40);
        let x = values(rows * inp, 1);
        let w = values(out * inp, 2);
        for engine in engines() {
            let y = matmul(
                &x,
                rows,
                &pack(&w, out, inp, engine),
                None,
                Epilogue::default(),
            );
            let (mut err, mut norm) = (0f64, 0f64);
            for m in 0..rows {
                for n in 0..out {
                    let exact: f32 = (0..inp).map(|k| x[m * inp + k] * w[n * inp + k]).sum();
                    err += ((y[m * out + n] - exact) as f64).powi(2);
                    norm += (exact as f64).powi(2);
                }
            }
            let rel = (err / norm).sqrt();
            assert!(rel < 0.02, "{engine:?}: relative error {rel}");
        }
    }

    /// At the extremes (every activation at its engine's top; weights ±127 and -128, and pairs
    /// of one sign at AVX2's bound) every engine's sums are exact; past the bound,
    /// `vpmaddubsw`'s pairs saturate (so the emulation does).
    #[test]
    fn extreme_values_sum_exactly() {
        let k_tiles = 3;
        // Pairs of weights: opposite signs at the extremes, and one sign summing to 158.
        let pairs: [[i8; 2]; 6] = [
            [127, -128],
            [79, 79],
            [31, 127],
            [-100, -58],
            [79, 79],
            [127, 31],
        ];
        let b: Vec<Line> = (0..2 * k_tiles * TILE)
            .map(|i| Line(std::array::from_fn(|j| pairs[(i + j / 2) % 6][j % 2] as u8)))
            .collect();
        let sums = |engine, top: u8, b: &[Line]| {
            let a = vec![Line([top; 64]); 2 * k_tiles * TILE];
            let mut sums = Sums([0; 1024]);
            tile_product(engine, &a, b, k_tiles, &mut sums);
            sums.0
        };
        for engine in engines() {
            let top = engine.activation_levels();
            let expected = sums(Engine::Emulated, top, &b);
            assert!(expected.iter().any(|&v| v.abs() > 1 << 20));
            assert_eq!(sums(engine, top, &b), expected, "{engine:?}");
        }
        let past: Vec<Line> = b.iter().map(|_| Line([100; 64])).collect();
        let (emulated, saturated) = (Engine::Emulated, Engine::EmulatedAvx2);
        assert_ne!(sums(saturated, 207, &past), sums(emulated, 207, &past));
    }

    /// AVX2's weights keep every pair of one sign within [`PAIR_LEVELS`], on rows made to
    /// press against it (equal weights, and rounding on the edge); the other engines' do not.
    #[test]
    fn avx2_weights_keep_pairs_within_the_bound() {
        let inp = 64;
        let rows: Vec<Vec<f32>> = vec![
            vec![1.0; inp],
            (0..inp)
                .map(|k| if k % 2 == 0 { 79.5 } else { 78.5 })
                .collect(),
            // Scaled so that the pair sums to 158, these round to 103 and 56.
            [0.662_447_15, 0.358_690_86].repeat(inp / 2),
            (0..inp).map(|k| -(1.0 + (k % 7) as f32 / 13.0)).collect(),
            values(inp, 11),
        ];
        let w: Vec<f32> = rows.concat();
        for engine in [Engine::Emulated, Engine::EmulatedAvx2] {
            let packed = pack(&w, rows.len(), inp, engine);
            let mut worst = 0;
            for line in &packed.data {
                for p in line.0.chunks_exact(2) {
                    let (a, b) = (p[0] as i8 as i32, p[1] as i8 as i32);
                    if a.signum() == b.signum() {
                        worst = worst.max(a.abs() + b.abs());
                    }
                }
            }
            assert_eq!(worst <= 158, engine.bounds_pairs(), "{engine:?}: {worst}");
        }
        let mut q = [79, 80, -127, -32, 3, -127, 0, 127];
        bound_pairs(&mut q);
        assert_eq!(q, [79, 79, -126, -32, 3, -127, 0, 127]);
    }

    /// The layer norm applied while packing gives what normalising first gives.
    #[test]
    fn normalising_while_packing_matches_normalising_first() {
        let (rows, inp, out) = (5, 96, 20);
        let x = values(rows * inp, 3);
        let w = values(out * inp, 4);
        let (scale, shift) = (values(inp, 6), values(inp, 7));
        let norm = Norm {
            weight: &scale,
            bias: Some(&shift),
            eps: 1e-5,
        };
        for engine in engines() {
            let packed = pack(&w, out, inp, engine);
            let mut normed = vec![0f32; rows * inp];
            for (row, dst) in x.chunks(inp).zip(normed.chunks_mut(inp)) {
                layer_norm(engine.isa(), row, &norm, dst);
            }
            let first = matmul(&normed, rows, &packed, None, Epilogue::default());
            let fused = matmul(&x, rows, &packed, Some(norm), Epilogue::default());
            assert_eq!(first, fused, "{engine:?}");
        }
    }
}
