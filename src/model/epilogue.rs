//! The f32 steps around a packed CPU product, shared by the bf16 ([`super::bf16`]) and int8
//! ([`super::int8`]) engines: the layer norm applied to each row of activations as it is
//! packed, the walk over 32x32 blocks of results split evenly between threads, and the
//! epilogue (bias, activation, residual) applied to each block while it is still in L1.

use rayon::prelude::*;

/// An engine that an environment variable can force: its name there, whether this CPU has it,
/// what the CPU lacks when it does not, and the engine.
pub(super) type Choice<E> = (&'static str, bool, &'static str, E);

/// The engine `var` forces (by its name), or else the first of `choices` (best first) this CPU
/// has; `Ok(None)` for `off`, or when it has none. A forced engine the CPU lacks is an error.
pub(super) fn choose<E: Copy>(var: &str, choices: &[Choice<E>]) -> Result<Option<E>, String> {
    let forced = std::env::var(var).ok();
    let forced = forced.as_deref().map(str::trim);
    match forced {
        None | Some("") | Some("auto") => Ok(choices.iter().find(|c| c.1).map(|c| c.3)),
        Some("off") => Ok(None),
        Some(name) => match choices.iter().find(|c| c.0 == name) {
            Some(&(_, true, _, engine)) => Ok(Some(engine)),
            Some(&(_, false, lacks, _)) => Err(format!("{var}={name}: this CPU has no {lacks}")),
            None => {
                let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
                Err(format!(
                    "{var}={name:?}: use {}, off or auto",
                    names.join(", ")
                ))
            }
        },
    }
}

/// The emulated engines, and each of `choices` this CPU has (the others said on stderr): the
/// engines the kernel tests run here.
#[cfg(test)]
pub(super) fn testable<E: Copy>(emulated: &[E], choices: &[Choice<E>]) -> Vec<E> {
    let mut engines = emulated.to_vec();
    for &(_, here, lacks, engine) in choices {
        if here {
            engines.push(engine);
        } else {
            eprintln!("no {lacks} on this CPU: its kernel is not run here");
        }
    }
    engines
}

/// The vector instructions the f32 steps are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F (only where the CPU has it).
    Avx512,
    /// AVX2 and FMA (only where the CPU has them).
    Avx2,
    /// Plain Rust, for the emulated engines of the tests.
    #[cfg(test)]
    Plain,
}

/// Defines `fn $name(isa: Isa, args...)`, which runs the plain function `$plain(args...)`
/// (`#[inline(always)]`) compiled for `isa`'s instructions, so that its loops vectorise for
/// the CPU the engine runs on.
macro_rules! for_isa {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $plain:path) => {
        $(#[$meta])*
        $vis fn $name(isa: $crate::model::epilogue::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                $plain($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                $plain($($arg),*)
            }
            match isa {
                // SAFETY: an engine says Avx512 (or Avx2) only where the CPU has it (its
                // `check`).
                $crate::model::epilogue::Isa::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                $crate::model::epilogue::Isa::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(test)]
                $crate::model::epilogue::Isa::Plain => $plain($($arg),*),
            }
        }
    };
}
pub(super) use for_isa;

/// Layer normalisation of the activations, applied to each row as it is packed.
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    /// Scale per input, `(inp)`.
    pub weight: &'a [f32],
    /// Shift per input, `(inp)`.
    pub bias: Option<&'a [f32]>,
    /// Added to the variance.
    pub eps: f32,
}

/// `out = (row - mean) / sqrt(var + eps) * weight + bias`, sums in 16 lanes.
#[inline(always)]
fn layer_norm_plain(row: &[f32], norm: &Norm, out: &mut [f32]) {
    use super::math::lane_sum;
    let n = row.len() as f32;
    let mean = lane_sum(row, |x| x) / n;
    let var = lane_sum(row, |x| (x - mean) * (x - mean)) / n;
    let inv = 1.0 / (var + norm.eps).sqrt();
    for ((o, &x), &w) in out.iter_mut().zip(row).zip(norm.weight) {
        *o = (x - mean) * inv * w;
    }
    if let Some(bias) = norm.bias {
        out.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
    }
}

for_isa! {
    /// Layer-normalises one row with `isa`'s instructions.
    pub(super) fn layer_norm(row: &[f32], norm: &Norm, out: &mut [f32]) = layer_norm_plain
}

/// The lines of rows `m0..m0 + R` of a block in the first tile of their strip, for a kernel's
/// inner loop: packed activations are strips of `strip` lines, 16 rows a tile; each line is read
/// as groups of inputs of type `T` (two bf16 or four bytes: 32 bits).
pub(super) fn row_lines<L, T, const R: usize>(
    a: *const L,
    strip: usize,
    m0: usize,
) -> [*const T; R] {
    std::array::from_fn(|i| {
        let m = m0 + i;
        a.wrapping_add((m / 16) * strip + m % 16).cast::<T>()
    })
}

/// Fills a weight `(out, inp)` into packed tiles, in parallel: `data` holds, for each strip of
/// 16 outputs, `k_tiles` tiles of 16 lines, and line `r` of tile `kt` holds `per` consecutive
/// inputs (from `(16 · kt + r) · per`) of each of the strip's outputs, which
/// `put(line, place in line, run)` writes from `run`, the range of those inputs in the
/// row-major weight (shorter at the last input). Places past `out` or `inp` are left alone
/// (zero padding).
pub(super) fn fill_weight_tiles<L: Send>(
    data: &mut [L],
    (out, inp, k_tiles, per): (usize, usize, usize, usize),
    put: impl Fn(&mut L, usize, std::ops::Range<usize>) + Sync,
) {
    data.par_chunks_mut(k_tiles * 16)
        .enumerate()
        .for_each(|(strip, lines)| {
            // Output by output, so that each reads its row in order.
            for c in 0..16.min(out.saturating_sub(strip * 16)) {
                let row = (strip * 16 + c) * inp;
                for (i, line) in lines.iter_mut().enumerate().take(inp.div_ceil(per)) {
                    let first = i * per; // (16 · kt + r) · per
                    let count = per.min(inp - first);
                    put(line, c * per, row + first..row + first + count);
                }
            }
        });
}

/// Packs activations `(rows, inp)` 16 rows at a time, in parallel: `lines` holds each group of
/// 16 rows in `group_len` lines (tiles of 16 lines, a line per row), `params` each row's
/// parameters. Each row, layer-normalised first with `norm`, goes to `pack(row, lines from
/// the row's own, its parameters)`. Padding rows past `rows` are reset to `zero` and the default
/// parameters (the buffers are reused, so they may hold an earlier product's data).
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_rows<L: Copy + Send + Sync, P: Default + Send>(
    x: &[f32],
    rows: usize,
    inp: usize,
    norm: Option<Norm>,
    isa: Isa,
    (lines, group_len, zero): (&mut [L], usize, L),
    params: &mut [P],
    pack: impl Fn(&[f32], &mut [L], &mut P) + Sync,
) {
    lines
        .par_chunks_mut(group_len)
        .zip(params.par_chunks_mut(16))
        .enumerate()
        .for_each(|(g, (group, params))| {
            let valid = 16.min(rows.saturating_sub(g * 16));
            let mut normed = vec![0f32; if norm.is_some() { inp } else { 0 }];
            for (r, p) in params.iter_mut().enumerate().take(valid) {
                let mut row = &x[(g * 16 + r) * inp..][..inp];
                if let Some(norm) = &norm {
                    layer_norm(isa, row, norm, &mut normed);
                    row = &normed;
                }
                pack(row, &mut group[r..], p);
            }
            for tile in group.chunks_mut(16) {
                tile[valid..].fill(zero);
            }
            params[valid..].iter_mut().for_each(|p| *p = P::default());
        });
}

/// What happens to each block of `x · Wᵀ` on its way to the output, while it is still in the
/// L1 cache: `act(x · Wᵀ + bias) + residual`.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to every row, `(out)`.
    pub bias: Option<&'a [f32]>,
    /// Added after the activation, `(rows, out)`.
    pub residual: Option<&'a [f32]>,
    /// The activation to apply before the residual.
    pub activation: Option<super::math::Fused>,
}

impl Epilogue<'_> {
    /// Panics unless the bias and residual fit a `(rows, out)` result.
    pub(super) fn check(&self, rows: usize, out: usize) {
        assert!(self.bias.is_none_or(|b| b.len() == out));
        assert!(self.residual.is_none_or(|r| r.len() == rows * out));
    }
}

/// A 32x32 f32 block of results, aligned for tile stores.
#[repr(C, align(64))]
pub(super) struct Block(pub [f32; 32 * 32]);

/// Bytes of packed activations a thread works on at a time (half of a 2 MiB L2 cache).
const CHUNK_BYTES: usize = 1024 * 1024;

/// Where a 32x32 block of results goes: its first row and column in the output, how many of its
/// rows and columns are real (at the edges fewer than 32), and the output's width.
#[derive(Clone, Copy)]
pub(super) struct Place {
    pub row: usize,
    pub col: usize,
    pub rows: usize,
    pub cols: usize,
    pub out: usize,
}

/// The shape of a packed product, for [`for_each_block`].
#[derive(Clone, Copy)]
pub(super) struct Grid {
    /// Rows of the result.
    pub rows: usize,
    /// Columns of the result.
    pub out: usize,
    /// Bytes of one 32-row block of packed activations.
    pub block_bytes: usize,
}

/// Hands every 32x32 block of a `(rows, out)` result to `visit`, with its place, its thread's
/// share of `y` (`per_row` elements per row of the result) and its row in that share, and the
/// thread's scratch (made once per thread by `init`). Each thread gets an even share of 32-row
/// blocks, so none waits on a last small task; within a share, rows go in chunks whose
/// activations stay in the core's L2 cache while every weight column passes over them.
pub(super) fn for_each_block<T: Send, S>(
    grid: Grid,
    y: &mut [T],
    per_row: usize,
    init: impl Fn() -> S + Sync,
    visit: impl Fn(&mut S, Place, &mut [T], usize) + Sync,
) {
    let Grid { rows, out, .. } = grid;
    let per_thread = rows
        .div_ceil(32)
        .div_ceil(rayon::current_num_threads())
        .max(1)
        * 32;
    let chunk = (CHUNK_BYTES / grid.block_bytes.max(1)).clamp(1, 16) * 32;
    y.par_chunks_mut(per_thread * per_row)
        .enumerate()
        .for_each(|(share, y)| {
            let mut scratch = init();
            let first = share * per_thread;
            let share_rows = (rows - first).min(per_thread);
            for c0 in (0..share_rows).step_by(chunk) {
                for col in (0..out).step_by(32) {
                    for mp in (c0..(c0 + chunk).min(share_rows)).step_by(32) {
                        let place = Place {
                            row: first + mp,
                            col,
                            rows: (share_rows - mp).min(32),
                            cols: (out - col).min(32),
                            out,
                        };
                        visit(&mut scratch, place, y, mp);
                    }
                }
            }
        });
}

/// Row `r` of a finished block through the epilogue; columns past the output's edge are zero.
#[inline(always)]
pub(super) fn finished_row(block: &Block, at: Place, epilogue: &Epilogue, r: usize) -> [f32; 32] {
    let mut row = [0f32; 32];
    let zeros = [0f32; 32];
    let bias = epilogue
        .bias
        .map_or(&zeros[..at.cols], |b| &b[at.col..][..at.cols]);
    let residual = epilogue.residual.map_or(&zeros[..at.cols], |res| {
        &res[(at.row + r) * at.out + at.col..][..at.cols]
    });
    let sums = &block.0[r * 32..][..at.cols];
    let values = row[..at.cols].iter_mut().zip(sums).zip(bias).zip(residual);
    match epilogue.activation {
        Some(f) => super::math::with_fused!(f, |act| values
            .for_each(|(((v, s), b), res)| *v = act(s + b) + res)),
        None => values.for_each(|(((v, s), b), res)| *v = s + b + res),
    }
    row
}

/// Writes a finished block through the epilogue into `dst`, whose first row is the block's
/// (straight into `dst`: a row assembled on the stack first stalls on store forwarding).
#[inline(always)]
fn finish_block_plain(
    block: &Block,
    at: Place,
    epilogue: &Epilogue,
    dst: &mut [std::mem::MaybeUninit<f32>],
) {
    let zeros = [0f32; 32];
    let bias = epilogue
        .bias
        .map_or(&zeros[..at.cols], |b| &b[at.col..][..at.cols]);
    for r in 0..at.rows {
        let residual = epilogue.residual.map_or(&zeros[..at.cols], |res| {
            &res[(at.row + r) * at.out + at.col..][..at.cols]
        });
        let sums = &block.0[r * 32..][..at.cols];
        let d = &mut dst[r * at.out + at.col..][..at.cols];
        let values = d.iter_mut().zip(sums).zip(bias).zip(residual);
        match epilogue.activation {
            Some(f) => super::math::with_fused!(f, |act| values.for_each(|(((d, s), b), res)| {
                d.write(act(s + b) + res);
            })),
            None => values.for_each(|(((d, s), b), res)| {
                d.write(s + b + res);
            }),
        }
    }
}

for_isa! {
    /// [`finish_block_plain`] with `isa`'s instructions.
    pub(super) fn finish_block(
        block: &Block,
        at: Place,
        epilogue: &Epilogue,
        dst: &mut [std::mem::MaybeUninit<f32>],
    ) = finish_block_plain
}

/// `rows x out` f32 results written by `fill`.
///
/// # Safety
/// `fill` must write every one of them (as `for_each_block` visits with `finish_block` do).
pub(super) unsafe fn collect_rows(
    rows: usize,
    out: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut y = Vec::with_capacity(rows * out);
    fill(&mut y.spare_capacity_mut()[..rows * out]);
    // SAFETY: `fill` wrote every value (the caller's promise).
    unsafe { y.set_len(rows * out) };
    y
}
