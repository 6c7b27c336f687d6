//! bf16 matrix products on the CPU, for `--precision bf16`: weights are stored in bf16 and
//! multiplied with bf16 activations, accumulating in f32, while everything else (layer norms,
//! softmax, activations) stays f32, as PyTorch's bf16 autocast does. Two engines share every
//! step but the innermost product: Intel AMX tiles (Sapphire Rapids and later), and AVX-512 BF16
//! dot products (`vdpbf16ps`: AMD Zen 4 and 5, Intel Cooper Lake, and AMX CPUs too).
//!
//! Each product packs its activations into tile order in one AVX-512 BF16 pass (applying the
//! preceding layer norm on the way), computes 32x32 blocks (on the tiles, or in 16-lane
//! registers), and runs bias, quick_gelu and the residual on each block while it is in L1; an
//! MLP hands its hidden layer to the next product as tiles. All tile buffers are cache-line
//! aligned.
//!
//! The AMX tile product is shared with the int8 engine ([`super::amx`]).
//!
//! [`engine`] picks the engine: AMX, else AVX-512 BF16, else none (bf16 then runs in f32,
//! faster than bf16 storage without bf16 arithmetic). `FOODCLIP_BF16=amx|avx512|off` forces
//! one, so that one machine can measure every path.
//!
//! In tests, an emulated [`Engine`] runs the tile product, the bf16 conversion and every
//! AVX-512 step in plain Rust, so that all the packing, blocking, epilogue and hand-off logic is
//! tested on any CPU; the kernel tests run each hardware engine where the CPU has it.

use super::amx::{self, Dot};
use super::epilogue::{self, collect_rows, finish_block, finished_row, Block, Grid, Isa, Place};
pub use super::epilogue::{Epilogue, Norm};
use std::cell::RefCell;

/// Whether AMX bf16 can be used here: the CPU has it (and AVX-512 F and BF16, to convert
/// activations), the OS saves the tile state, and Linux has granted it to this process.
pub fn amx_available() -> bool {
    avx512_bf16_available() && amx::available(Dot::Bf16)
}

/// Whether the CPU has AVX-512 F and BF16 (`vdpbf16ps`, `vcvtne2ps2bf16`), and the build its
/// AVX-512 kernels (the `avx512` feature).
pub fn avx512_bf16_available() -> bool {
    super::ops::avx512() && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// What runs a packed weight's products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The AMX tiles and AVX-512 BF16 (only where [`amx_available`]).
    Amx,
    /// AVX-512 BF16 dot products in registers (only where [`avx512_bf16_available`]).
    Avx512,
    /// The same steps in plain Rust, for tests on CPUs without AMX.
    #[cfg(test)]
    Emulated,
}

/// The environment variable that forces a bf16 engine: `amx`, `avx512`, or `off` (no bf16
/// arithmetic: `--precision bf16` runs f32).
pub const FORCE_VAR: &str = "FOODCLIP_BF16";

/// The bf16 engines, best first.
fn choices() -> [epilogue::Choice<Engine>; 2] {
    let amx = "AMX (or Linux did not grant the tile state)";
    [
        ("amx", amx_available(), amx, Engine::Amx),
        (
            "avx512",
            avx512_bf16_available(),
            "AVX-512 BF16",
            Engine::Avx512,
        ),
    ]
}

/// The engine for bf16 products on this CPU: AMX, else AVX-512 BF16; `Ok(None)` when it has no
/// bf16 arithmetic (or `FOODCLIP_BF16=off`). A forced engine the CPU lacks is an error.
pub fn engine() -> Result<Option<Engine>, String> {
    epilogue::choose(FORCE_VAR, &choices())
}

impl Engine {
    /// The instructions of its f32 steps.
    fn isa(self) -> Isa {
        match self {
            Engine::Amx | Engine::Avx512 => Isa::Avx512,
            #[cfg(test)]
            Engine::Emulated => Isa::Plain,
        }
    }

    /// Checks that this engine can run here.
    fn check(self) {
        match self {
            Engine::Amx => assert!(amx_available(), "AMX is not available"),
            Engine::Avx512 => assert!(avx512_bf16_available(), "AVX-512 BF16 is not available"),
            #[cfg(test)]
            Engine::Emulated => {}
        }
    }
}

/// One tile row: 32 bf16 values (64 bytes), aligned to a cache line. Tile loads from unaligned
/// rows (each split over two lines) run about seven times slower.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u16; 32]);

const ZERO_LINE: Line = Line([0; 32]);

/// Lines per tile (16 rows).
const TILE: usize = 16;

/// A weight `(out, inp)` packed as AMX B tiles: for each block of 16 outputs and 32 inputs, 16
/// rows of 16 (input pair) bf16 pairs. Outputs are padded to a multiple of 32, inputs of 32.
pub struct PackedWeight {
    data: Vec<Line>,
    inp: usize,
    out: usize,
    k_tiles: usize,
    engine: Engine,
}

/// Packs a row-major f32 weight `(out, inp)` into bf16 tiles for `engine`'s products.
pub fn pack(w: &[f32], out: usize, inp: usize, engine: Engine) -> PackedWeight {
    assert_eq!(w.len(), out * inp, "the weight is out x inp");
    let k_tiles = inp.div_ceil(32);
    let mut data = vec![ZERO_LINE; out.div_ceil(32) * 2 * k_tiles * TILE];
    epilogue::fill_weight_tiles(&mut data, (out, inp, k_tiles, 2), |line, at, run| {
        for (dst, &x) in line.0[at..].iter_mut().zip(&w[run]) {
            *dst = half::bf16::from_f32(x).to_bits();
        }
    });
    PackedWeight {
        data,
        inp,
        out,
        k_tiles,
        engine,
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

thread_local! {
    /// The packed activations of the last product on this thread, kept so that every call does
    /// not allocate (and fault in) a fresh buffer.
    static ACTIVATIONS: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Packs activations `(rows, inp)` into `a` in bf16, laid out like the weights: for each group
/// of 16 rows, `k_tiles` consecutive tiles of 16 rows x 32 values, so that every tile load reads
/// 1 KiB in one piece. Rows are padded to a multiple of 32, inputs to a multiple of 32, with
/// zeros. With `norm`, each row is layer-normalised first.
fn pack_activations(
    x: &[f32],
    rows: usize,
    inp: usize,
    k_tiles: usize,
    norm: Option<Norm>,
    engine: Engine,
    a: &mut Vec<Line>,
) {
    let padded = rows.div_ceil(32) * 32;
    a.resize(padded / 16 * k_tiles * TILE, ZERO_LINE);
    let lines = (&mut a[..], k_tiles * TILE, ZERO_LINE);
    epilogue::pack_rows(
        x,
        rows,
        inp,
        norm,
        engine.isa(),
        lines,
        &mut vec![(); padded],
        |row, dst, _| pack_row(engine, row, dst, k_tiles),
    );
}

/// Converts one row of activations to bf16, 32 values (one tile row) at a time, into every
/// `TILE`th line of `dst`, with `engine`'s instructions.
fn pack_row(engine: Engine, row: &[f32], dst: &mut [Line], k_tiles: usize) {
    assert!(row.len() <= k_tiles * 32 && dst.len() > (k_tiles - 1) * TILE);
    match engine {
        // SAFETY: both engines need AVX-512 F and BF16; the lengths are checked above.
        Engine::Amx | Engine::Avx512 => unsafe { pack_row_avx512(row, dst, k_tiles) },
        #[cfg(test)]
        Engine::Emulated => {
            for kt in 0..k_tiles {
                let line = &mut dst[kt * TILE].0;
                *line = [0; 32];
                for (l, &x) in line.iter_mut().zip(row.iter().skip(kt * 32)) {
                    *l = half::bf16::from_f32(x).to_bits();
                }
            }
        }
    }
}

/// [`pack_row`] with AVX-512 BF16 (`vcvtne2ps2bf16`, round to nearest even).
///
/// # Safety
/// The CPU must have AVX-512 F and BF16, `row` hold at most `k_tiles * 32` values and `dst`
/// more than `(k_tiles - 1) * TILE` lines.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_row_avx512(row: &[f32], dst: &mut [Line], k_tiles: usize) {
    use std::arch::x86_64::*;
    let inp = row.len();
    let mask = |n: usize| -> __mmask16 { (((1u32 << n.min(16)) - 1) & 0xffff) as u16 };
    for kt in 0..k_tiles {
        let k = kt * 32;
        let n = inp.saturating_sub(k).min(32);
        // Masked loads read only the values the row has; the rest are zeros. A pointer is
        // only formed inside the row (never past its end).
        let lo = if n > 0 {
            _mm512_maskz_loadu_ps(mask(n), row.as_ptr().add(k))
        } else {
            _mm512_setzero_ps()
        };
        let hi = if n > 16 {
            _mm512_maskz_loadu_ps(mask(n - 16), row.as_ptr().add(k + 16))
        } else {
            _mm512_setzero_ps()
        };
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_store_si512((&mut dst[kt * TILE] as *mut Line).cast(), packed);
    }
}

/// Activations in bf16 tiles, as [`matmul_to_tiles`] leaves them for the next layer: `rows`
/// rows of `k_tiles` tiles' width, laid out as packed activations.
pub struct Tiles {
    lines: Vec<Line>,
    rows: usize,
    k_tiles: usize,
}

/// Checks the arguments of a product and packs `x` into this thread's reused buffer, then runs
/// `f` on the packed activations.
fn with_packed<R>(
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    norm: Option<Norm>,
    epilogue: &Epilogue,
    f: impl FnOnce(&[Line]) -> R,
) -> R {
    w.engine.check();
    assert_eq!(x.len(), rows * w.inp);
    assert!(norm.is_none_or(|n| n.weight.len() == w.inp && n.bias.is_none_or(|b| b.len() == w.inp)));
    epilogue.check(rows, w.out);
    let mut a = ACTIVATIONS.with(|buf| std::mem::take(&mut *buf.borrow_mut()));
    pack_activations(x, rows, w.inp, w.k_tiles, norm, w.engine, &mut a);
    let result = f(&a);
    ACTIVATIONS.with(|buf| *buf.borrow_mut() = a);
    result
}

/// `act(norm(x) · Wᵀ + bias) + residual` for `x` `(rows, inp)`, row-major: bf16 products, f32
/// sums, the norm and epilogue in f32. Returns `(rows, out)`. Only call when [`avx512_bf16_available`].
pub fn matmul(
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    norm: Option<Norm>,
    epilogue: Epilogue,
) -> Vec<f32> {
    with_packed(x, rows, w, norm, &epilogue, |a| {
        product_rows(a, rows, w, &epilogue)
    })
}

/// Like [`matmul`], but leaves the result in bf16 tiles, ready to be the input of the next
/// layer's [`matmul_tiles`] without passing through f32 memory (the hidden layer of an MLP).
pub fn matmul_to_tiles(
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    norm: Option<Norm>,
    epilogue: Epilogue,
) -> Tiles {
    with_packed(x, rows, w, norm, &epilogue, |a| {
        let k_tiles = w.out.div_ceil(32);
        let mut lines = vec![ZERO_LINE; rows.div_ceil(32) * 32 * k_tiles];
        for_each_block(a, rows, w, &mut lines, k_tiles, |block, at, lines, mp| {
            pack_block(
                w.engine,
                block,
                at,
                &epilogue,
                &mut lines[(mp / 16) * k_tiles * TILE..],
                k_tiles,
            )
        });
        Tiles {
            lines,
            rows,
            k_tiles,
        }
    })
}

/// `act(x · Wᵀ + bias) + residual` for activations already in tiles. Returns `(rows, out)`.
pub fn matmul_tiles(x: &Tiles, w: &PackedWeight, epilogue: Epilogue) -> Vec<f32> {
    w.engine.check();
    assert_eq!(x.k_tiles, w.k_tiles);
    epilogue.check(x.rows, w.out);
    product_rows(&x.lines, x.rows, w, &epilogue)
}

/// The product of packed activations with `w`, through the epilogue into f32 rows.
fn product_rows(a: &[Line], rows: usize, w: &PackedWeight, epilogue: &Epilogue) -> Vec<f32> {
    let out = w.out;
    let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
        for_each_block(a, rows, w, y, out, |block, at, dst, mp| {
            finish_block(w.engine.isa(), block, at, epilogue, &mut dst[mp * out..])
        })
    };
    // SAFETY: the blocks cover every row and column of the output exactly once, and
    // `finish_block` writes each of their values.
    unsafe { collect_rows(rows, out, fill) }
}

/// Computes every 32x32 block of `A · Wᵀ` and hands it to `finish` with its place, its
/// thread's share of `y` (`per_row` elements per row of the result) and its row in that share.
fn for_each_block<T: Send>(
    a: &[Line],
    rows: usize,
    w: &PackedWeight,
    y: &mut [T],
    per_row: usize,
    finish: impl Fn(&Block, Place, &mut [T], usize) + Sync,
) {
    let grid = Grid {
        rows,
        out: w.out,
        block_bytes: 32 * w.k_tiles * 32 * 2,
    };
    let strip = w.k_tiles * TILE;
    let init = || Block([0f32; 32 * 32]);
    epilogue::for_each_block(grid, y, per_row, init, |block, at, y, mp| {
        let a = &a[(at.row / 16) * strip..][..2 * strip];
        let b = &w.data[(at.col / 16) * strip..][..2 * strip];
        tile_product(w.engine, a, b, w.k_tiles, block);
        finish(block, at, y, mp);
    });
}

/// Writes a finished block through the epilogue into bf16 tiles: `lines` starts at the block's
/// first group of 16 rows, whose tiles are `k_tiles` wide; the block fills tile `col / 32` of
/// two groups. Rows past the end are left zero.
fn pack_block(
    engine: Engine,
    block: &Block,
    at: Place,
    epilogue: &Epilogue,
    lines: &mut [Line],
    k_tiles: usize,
) {
    match engine {
        // SAFETY: both engines are only used where the CPU has AVX-512 F and BF16.
        Engine::Amx | Engine::Avx512 => unsafe {
            pack_block_avx512(block, at, epilogue, lines, k_tiles)
        },
        #[cfg(test)]
        Engine::Emulated => pack_block_plain(engine, block, at, epilogue, lines, k_tiles),
    }
}

#[inline(always)]
fn pack_block_plain(
    engine: Engine,
    block: &Block,
    at: Place,
    epilogue: &Epilogue,
    lines: &mut [Line],
    k_tiles: usize,
) {
    for r in 0..at.rows {
        let row = finished_row(block, at, epilogue, r);
        let line = (r / 16) * k_tiles * TILE + (at.col / 32) * TILE + r % 16;
        pack_row(engine, &row, &mut lines[line..], 1);
    }
}

/// [`pack_block_plain`] compiled for AVX-512 (the epilogue's quick_gelu vectorised).
///
/// # Safety
/// The CPU must have AVX-512 F and BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_block_avx512(
    block: &Block,
    at: Place,
    epilogue: &Epilogue,
    lines: &mut [Line],
    k_tiles: usize,
) {
    pack_block_plain(Engine::Avx512, block, at, epilogue, lines, k_tiles)
}

/// One 32x32 f32 block of `A · B` into `c` with `engine`: A is two strips of `k_tiles` packed
/// activation tiles (rows 0-15, then 16-31), B two strips of packed weight tiles (columns 0-15,
/// then 16-31).
fn tile_product(engine: Engine, a: &[Line], b: &[Line], k_tiles: usize, c: &mut Block) {
    assert!(a.len() >= 2 * k_tiles * TILE && b.len() >= 2 * k_tiles * TILE);
    match engine {
        // SAFETY: the engine is only used where the CPU has AMX bf16; the lengths are checked
        // above.
        Engine::Amx => unsafe {
            let c = c.0.as_mut_ptr().cast();
            amx::product(Dot::Bf16, a.as_ptr().cast(), b.as_ptr().cast(), k_tiles, c)
        },
        // SAFETY: the engine is only used where the CPU has AVX-512 BF16; the lengths are
        // checked above.
        Engine::Avx512 => unsafe { tile_product_avx512(a, b, k_tiles, c) },
        #[cfg(test)]
        Engine::Emulated => tile_product_emulated(a, b, k_tiles, c),
    }
}

/// [`tile_product`] with `vdpbf16ps`: for each pair of inputs, the weights' tile line holds the
/// pair for 16 columns, and each row's pair is broadcast to all 16 lanes. The block's 32 rows
/// go 12, 12 and 8 at a time: 12 rows x 2 vectors of 16 columns are 24 accumulators, which
/// leaves registers for the weights.
///
/// # Safety
/// The CPU must have AVX-512 F and BF16; `a` and `b` must each hold `2 * k_tiles` tiles.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_product_avx512(a: &[Line], b: &[Line], k_tiles: usize, c: &mut Block) {
    rows_avx512::<12>(a, b, k_tiles, c, 0);
    rows_avx512::<12>(a, b, k_tiles, c, 12);
    rows_avx512::<8>(a, b, k_tiles, c, 24);
}

/// Rows `m0..m0 + R` of [`tile_product_avx512`], their sums held in registers.
///
/// # Safety
/// As [`tile_product_avx512`], and `m0 + R <= 32`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn rows_avx512<const R: usize>(
    a: &[Line],
    b: &[Line],
    k_tiles: usize,
    c: &mut Block,
    m0: usize,
) {
    use std::arch::x86_64::*;
    let strip = k_tiles * TILE;
    let (a, b) = (a.as_ptr(), b.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let rows: [*const u32; R] = epilogue::row_lines(a, strip, m0);
    for kt in 0..k_tiles {
        for r in 0..TILE {
            let b0: __m512bh = std::mem::transmute(_mm512_load_si512(b.add(kt * TILE + r).cast()));
            let b1: __m512bh =
                std::mem::transmute(_mm512_load_si512(b.add(strip + kt * TILE + r).cast()));
            for (acc, row) in acc.iter_mut().zip(&rows) {
                let pair = *row.add(kt * TILE * 16 + r);
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let out = c.0.as_mut_ptr().add((m0 + i) * 32);
        _mm512_store_ps(out, acc[0]);
        _mm512_store_ps(out.add(16), acc[1]);
    }
}

/// What `tdpbf16ps` computes, in plain Rust: for each 16x16 quarter of `c`, the sum over the
/// tiles of `A[m][2k] B[k][2n] + A[m][2k+1] B[k][2n+1]`, in f32.
#[cfg(test)]
fn tile_product_emulated(a: &[Line], b: &[Line], k_tiles: usize, c: &mut Block) {
    let strip = k_tiles * TILE;
    let bf = |bits: u16| half::bf16::from_bits(bits).to_f32();
    c.0 = [0.0; 32 * 32];
    for (qa, qb) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        for kt in 0..k_tiles {
            let ta = &a[qa * strip + kt * TILE..][..TILE];
            let tb = &b[qb * strip + kt * TILE..][..TILE];
            for (m, arow) in ta.iter().enumerate() {
                for n in 0..16 {
                    let mut sum = c.0[(qa * 16 + m) * 32 + qb * 16 + n];
                    for (k, brow) in tb.iter().enumerate() {
                        sum += bf(arow.0[2 * k]) * bf(brow.0[2 * n])
                            + bf(arow.0[2 * k + 1]) * bf(brow.0[2 * n + 1]);
                    }
                    c.0[(qa * 16 + m) * 32 + qb * 16 + n] = sum;
                }
            }
        }
    }
}

#[cfg(test)]
/// The emulation everywhere, and each hardware engine where the CPU has it.
pub(crate) fn engines() -> Vec<Engine> {
    epilogue::testable(&[Engine::Emulated], &choices())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::epilogue::layer_norm;

    #[test]
    #[ignore = "timing, run by hand: cargo test --release --lib bf16 -- --ignored --nocapture"]
    fn speed_against_f32_gemm() {
        let (rows, inp, out) = (1600, 768, 3072);
        let x = vec![0.5f32; rows * inp];
        let w = vec![0.25f32; out * inp];
        let engine = engine().unwrap().expect("a CPU with AMX or AVX-512 BF16");
        let packed = pack(&w, out, inp, engine);
        matmul(&x, rows, &packed, None, Epilogue::default()); // warm-up: threads, tile permission
        let start = std::time::Instant::now();
        for _ in 0..10 {
            matmul(&x, rows, &packed, None, Epilogue::default());
        }
        let amx = start.elapsed().as_secs_f64() / 10.0;
        let xt = candle_core::Tensor::from_vec(x, (rows, inp), &candle_core::Device::Cpu).unwrap();
        let wt = candle_core::Tensor::from_vec(w, (out, inp), &candle_core::Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        let start = std::time::Instant::now();
        for _ in 0..10 {
            xt.matmul(&wt).unwrap();
        }
        let f32 = start.elapsed().as_secs_f64() / 10.0;
        let flops = 2.0 * (rows * inp * out) as f64;
        println!(
            "{engine:?} {:.1} GFLOP/s, f32 gemm {:.1} GFLOP/s",
            flops / amx / 1e9,
            flops / f32 / 1e9
        );
    }

    #[test]
    fn matches_a_bf16_reference_product() {
        for engine in engines() {
            bf16_reference_product(engine);
        }
    }

    /// `n` deterministic values `((i * mul) % modulo) / div - off`, spread over a few units.
    fn ramp(n: usize, mul: usize, modulo: usize, div: f32, off: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * mul) % modulo) as f32 / div - off)
            .collect()
    }

    fn bf16_reference_product(engine: Engine) {
        // Sizes that are not multiples of the tiles; the largest first, so that the smaller
        // ones reuse a packing buffer holding older data. Each with bias and residual, with
        // bias and quick_gelu, and with a layer norm applied while packing.
        for (rows, inp, out) in [(100, 768, 96), (1, 32, 16), (50, 70, 45), (333, 96, 70)] {
            let x: Vec<f32> = ramp(rows * inp, 7919, 201, 100.0, 1.0);
            let w: Vec<f32> = ramp(out * inp, 104729, 199, 99.0, 1.0);
            let bias: Vec<f32> = (0..out).map(|i| i as f32 / 10.0 - 2.0).collect();
            let residual: Vec<f32> = (0..rows * out).map(|i| (i % 13) as f32 - 6.0).collect();
            let bf = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
            let packed = pack(&w, out, inp, engine);
            let with_residual = Epilogue {
                bias: Some(&bias),
                residual: Some(&residual),
                activation: None,
            };
            let with_gelu = Epilogue {
                bias: Some(&bias),
                residual: None,
                activation: Some(crate::model::math::Fused::QuickGelu),
            };
            let gamma: Vec<f32> = (0..inp).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
            let beta: Vec<f32> = (0..inp).map(|i| (i % 5) as f32 / 5.0 - 0.4).collect();
            let norm = Norm {
                weight: &gamma,
                bias: Some(&beta),
                eps: 1e-5,
            };
            let added = matmul(&x, rows, &packed, None, with_residual);
            let activated = matmul(&x, rows, &packed, None, with_gelu);
            let normed = matmul(&x, rows, &packed, Some(norm), Epilogue::default());
            for r in 0..rows {
                let row = &x[r * inp..][..inp];
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / inp as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / inp as f64;
                let xn: Vec<f32> = (0..inp)
                    .map(|k| {
                        let v = (row[k] as f64 - mean) / (var + 1e-5).sqrt();
                        (v * gamma[k] as f64 + beta[k] as f64) as f32
                    })
                    .collect();
                for n in 0..out {
                    let dot = |xs: &[f32]| -> f64 {
                        (0..inp).map(|k| bf(xs[k]) * bf(w[n * inp + k])).sum()
                    };
                    let sum = bias[n] as f64 + dot(row);
                    let gelu = sum / (1.0 + (-1.702 * sum).exp());
                    for (got, want) in [
                        (added[r * out + n], sum + residual[r * out + n] as f64),
                        (activated[r * out + n], gelu),
                        (normed[r * out + n], dot(&xn)),
                    ] {
                        assert!(
                            (got as f64 - want).abs() <= 1e-3 * (1.0 + want.abs()),
                            "{engine:?} ({rows},{inp},{out}) [{r},{n}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn tiles_hand_off_equals_two_products_and_engines_agree() {
        let (rows, inp, hidden) = (45, 40, 70);
        let x: Vec<f32> = ramp(rows * inp, 31, 17, 8.0, 1.0);
        let w1: Vec<f32> = ramp(hidden * inp, 7, 23, 20.0, 0.5);
        let w2: Vec<f32> = ramp(inp * hidden, 11, 19, 18.0, 0.5);
        let b1: Vec<f32> = (0..hidden).map(|i| i as f32 / 50.0 - 0.7).collect();
        let gelu = Epilogue {
            bias: Some(&b1),
            residual: None,
            activation: Some(crate::model::math::Fused::QuickGelu),
        };
        let add_x = Epilogue {
            bias: None,
            residual: Some(&x),
            activation: None,
        };
        let mut results = Vec::new();
        for engine in engines() {
            let (p1, p2) = (
                pack(&w1, hidden, inp, engine),
                pack(&w2, inp, hidden, engine),
            );
            let handed = matmul_tiles(&matmul_to_tiles(&x, rows, &p1, None, gelu), &p2, add_x);
            // The hidden layer through f32 memory: the same numbers, as fc2 rounds it to bf16.
            let h = matmul(&x, rows, &p1, None, gelu);
            let apart = matmul(&h, rows, &p2, None, add_x);
            assert_eq!(handed.len(), rows * inp);
            for (a, b) in handed.iter().zip(&apart) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{engine:?}: {a} vs {b}"
                );
            }
            results.push(handed);
        }
        // Every hardware engine agrees with the emulation up to the order of f32 sums.
        for hardware in &results[1..] {
            for (a, b) in results[0].iter().zip(hardware) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    /// The AVX-512 steps of the Amx engine, on any CPU with AVX-512 BF16 (AMD Zen 4 has it
    /// without AMX): the same bf16 lines and norms as the plain Rust of the emulation.
    #[test]
    fn avx512_packing_and_norm_match_the_plain_code() {
        use std::arch::is_x86_feature_detected;
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")) {
            eprintln!("skipped: no AVX-512 BF16 on this CPU");
            return;
        }
        for len in [1usize, 15, 16, 17, 31, 32, 33, 64, 70] {
            // Ties (low halves 0x8000) round to even; large, small and negative values.
            let row: Vec<f32> = (0..len)
                .map(|i| {
                    let bits = 0x3f80_0000u32 + (i as u32) * 0x1_8000;
                    f32::from_bits(bits) * if i % 3 == 0 { -1.0 } else { 1e3 }
                })
                .collect();
            let k_tiles = len.div_ceil(32);
            let (mut hw, mut plain) = (
                vec![Line([0xffff; 32]); k_tiles * TILE],
                vec![Line([0xffff; 32]); k_tiles * TILE],
            );
            // SAFETY: the CPU has AVX-512 F and BF16 (checked above); the sizes fit.
            unsafe { pack_row_avx512(&row, &mut hw, k_tiles) };
            pack_row(Engine::Emulated, &row, &mut plain, k_tiles);
            for kt in 0..k_tiles {
                assert_eq!(hw[kt * TILE].0, plain[kt * TILE].0, "len {len}, tile {kt}");
            }
            let weight: Vec<f32> = (0..len).map(|i| 0.5 + i as f32 / 50.0).collect();
            let bias: Vec<f32> = (0..len).map(|i| i as f32 / 10.0).collect();
            let norm = Norm {
                weight: &weight,
                bias: Some(&bias),
                eps: 1e-5,
            };
            let (mut a, mut b) = (vec![0f32; len], vec![0f32; len]);
            layer_norm(Isa::Avx512, &row, &norm, &mut a);
            layer_norm(Isa::Plain, &row, &norm, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "len {len}: {x} vs {y}"
                );
            }
        }
    }
}
