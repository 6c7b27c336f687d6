//! bf16 matrix products on Intel AMX tiles (Sapphire Rapids and later), for `--precision bf16` on
//! CPUs: weights are stored in bf16 and multiplied with bf16 activations, accumulating in f32,
//! while everything else (layer norms, softmax, activations) stays f32, as PyTorch's bf16
//! autocast does.
//!
//! Stable Rust has no AMX intrinsics, so the few AMX instructions are written as bytes (their
//! encodings are checked against GNU as in the comments). Linux must grant each process the
//! tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`available`] asks once.

use rayon::prelude::*;
use std::arch::asm;
use std::cell::Cell;
use std::sync::OnceLock;

/// Whether AMX bf16 can be used here: the CPU has it, the OS saves the tile state, and Linux has
/// granted it to this process.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| cpu_has_amx() && os_grants_tiles())
}

fn cpu_has_amx() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // cpuid exists on every x86_64 CPU; leaf 7 is read only when the CPU has it.
    let (max, leaf1) = (__cpuid_count(0, 0).eax, __cpuid_count(1, 0));
    if max < 7 || leaf1.ecx & (1 << 27) == 0 {
        return false; // no leaf 7, or no OSXSAVE (so no xgetbv)
    }
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    let (lo, _hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so xgetbv is allowed; it reads XCR0 into edx:eax.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") _hi, options(nomem, nostack)) };
    // XCR0 bits 17 and 18: the OS saves XTILECFG and XTILEDATA.
    amx_bf16 && amx_tile && lo & (3 << 17) == 3 << 17
}

#[cfg(target_os = "linux")]
fn os_grants_tiles() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with these arguments only changes this process's
    // permitted extended state; it reads and writes no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        )
    };
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn os_grants_tiles() -> bool {
    false
}

/// The tile palette: tiles 0-3 hold 16x16 f32 results, 4-5 activations and 6-7 weights, each
/// 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

thread_local! {
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// Loads the tile configuration on this thread (once; nothing else here uses AMX).
fn configure_thread() {
    CONFIGURED.with(|done| {
        if !done.get() {
            // SAFETY: ldtilecfg [rdi] (c4 e2 78 49 07) reads the 64-byte config; `available()`
            // was checked by the caller.
            unsafe {
                asm!(".byte 0xc4, 0xe2, 0x78, 0x49, 0x07", in("rdi") &CONFIG, options(nostack, readonly))
            };
            done.set(true);
        }
    });
}

/// A weight `(out, inp)` packed as AMX B tiles: for each block of 16 outputs and 32 inputs, 16
/// rows of 16 (input pair) bf16 pairs. Outputs are padded to a multiple of 32, inputs of 32.
pub struct PackedWeight {
    data: Vec<u16>,
    inp: usize,
    out: usize,
    k_tiles: usize,
    n_tiles: usize,
}

const TILE: usize = 16 * 32;

/// Packs a row-major f32 weight `(out, inp)` into bf16 tiles.
pub fn pack(w: &[f32], out: usize, inp: usize) -> PackedWeight {
    let k_tiles = inp.div_ceil(32);
    let n_tiles = out.div_ceil(32) * 2;
    let mut data = vec![0u16; n_tiles * k_tiles * TILE];
    data.par_chunks_mut(k_tiles * TILE)
        .enumerate()
        .for_each(|(nt, column)| {
            for (kt, tile) in column.chunks_mut(TILE).enumerate() {
                for r in 0..16 {
                    for c in 0..16 {
                        let n = nt * 16 + c;
                        for j in 0..2 {
                            let k = kt * 32 + 2 * r + j;
                            if n < out && k < inp {
                                tile[r * 32 + c * 2 + j] =
                                    half::bf16::from_f32(w[n * inp + k]).to_bits();
                            }
                        }
                    }
                }
            }
        });
    PackedWeight {
        data,
        inp,
        out,
        k_tiles,
        n_tiles,
    }
}

impl PackedWeight {
    /// Outputs.
    pub fn out(&self) -> usize {
        self.out
    }
}

/// Rows of activations each task multiplies (a multiple of 32).
const ROWS_PER_TASK: usize = 192;

/// `dst += x · Wᵀ` for `x` `(rows, inp)` and `dst` `(rows, out)`, row-major: bf16 products,
/// f32 sums. Only call when [`available`].
pub fn matmul_acc(x: &[f32], rows: usize, w: &PackedWeight, dst: &mut [f32]) {
    assert!(available(), "AMX is not available");
    assert_eq!(x.len(), rows * w.inp);
    assert_eq!(dst.len(), rows * w.out);
    let kp = w.k_tiles * 32;
    let padded_rows = rows.div_ceil(32) * 32;
    // Activations in bf16, padded with zeros to whole tiles.
    let mut a = vec![0u16; padded_rows * kp];
    a.par_chunks_mut(kp)
        .zip(x.par_chunks(w.inp))
        .for_each(|(dst, src)| {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = half::bf16::from_f32(s).to_bits();
            }
        });
    let out = w.out;
    dst.par_chunks_mut(ROWS_PER_TASK * out)
        .enumerate()
        .for_each(|(task, dst)| {
            configure_thread();
            let first_row = task * ROWS_PER_TASK;
            let task_rows = dst.len() / out;
            let mut block = [0f32; 32 * 32];
            for np in 0..w.n_tiles / 2 {
                let b0 = &w.data[(2 * np) * w.k_tiles * TILE..];
                let b1 = &w.data[(2 * np + 1) * w.k_tiles * TILE..];
                for mp in (0..task_rows).step_by(32) {
                    let a0 = &a[(first_row + mp) * kp..];
                    // SAFETY: the tiles read 16 rows of 64 bytes: a0 holds 32 rows of kp
                    // values, b0 and b1 k_tiles whole tiles; block has room for 32x32 f32.
                    unsafe {
                        block_32x32(
                            a0.as_ptr(),
                            kp,
                            b0.as_ptr(),
                            b1.as_ptr(),
                            w.k_tiles,
                            &mut block,
                        )
                    };
                    let cols = (out - np * 32).min(32);
                    for r in 0..(task_rows - mp).min(32) {
                        let d = &mut dst[(mp + r) * out + np * 32..][..cols];
                        d.iter_mut()
                            .zip(&block[r * 32..])
                            .for_each(|(d, v)| *d += v);
                    }
                }
            }
        });
}

/// One 32x32 block of `A · B`: A is 32 rows of `kp` bf16 (`a`, row stride `kp`), B two columns
/// of `k_tiles` packed tiles each.
///
/// # Safety
/// The tile configuration must be loaded on this thread, and the pointers must cover the data
/// described.
unsafe fn block_32x32(
    a: *const u16,
    kp: usize,
    b0: *const u16,
    b1: *const u16,
    k_tiles: usize,
    out: &mut [f32; 1024],
) {
    let a_stride = kp * 2;
    // tilezero tmm0..tmm3
    asm!(
        ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xc0",
        ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xc8",
        ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xd0",
        ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xd8",
        options(nostack, nomem)
    );
    for kt in 0..k_tiles {
        // tileloadd tmm4, [rax+rcx]; tmm5, [rdx+rcx]  (rows 0-15 and 16-31 of A)
        asm!(
            ".byte 0xc4, 0xe2, 0x7b, 0x4b, 0x24, 0x08",
            ".byte 0xc4, 0xe2, 0x7b, 0x4b, 0x2c, 0x0a",
            in("rax") a.add(kt * 32),
            in("rdx") a.add(16 * kp + kt * 32),
            in("rcx") a_stride,
            options(nostack, readonly)
        );
        // tileloadd tmm6, [rax+rcx]; tmm7, [rdx+rcx]  (the two column tiles of B, stride 64)
        asm!(
            ".byte 0xc4, 0xe2, 0x7b, 0x4b, 0x34, 0x08",
            ".byte 0xc4, 0xe2, 0x7b, 0x4b, 0x3c, 0x0a",
            in("rax") b0.add(kt * TILE),
            in("rdx") b1.add(kt * TILE),
            in("rcx") 64usize,
            options(nostack, readonly)
        );
        // tdpbf16ps tmm0, tmm4, tmm6; tmm1, tmm4, tmm7; tmm2, tmm5, tmm6; tmm3, tmm5, tmm7
        asm!(
            ".byte 0xc4, 0xe2, 0x4a, 0x5c, 0xc4",
            ".byte 0xc4, 0xe2, 0x42, 0x5c, 0xcc",
            ".byte 0xc4, 0xe2, 0x4a, 0x5c, 0xd5",
            ".byte 0xc4, 0xe2, 0x42, 0x5c, 0xdd",
            options(nostack, nomem)
        );
    }
    let o = out.as_mut_ptr();
    // tilestored [rax+rcx], tmm0 / tmm1 / tmm2 / tmm3 into the four 16x16 quarters (stride 128).
    asm!(
        ".byte 0xc4, 0xe2, 0x7a, 0x4b, 0x04, 0x08",
        in("rax") o,
        in("rcx") 128usize,
        options(nostack)
    );
    asm!(
        ".byte 0xc4, 0xe2, 0x7a, 0x4b, 0x0c, 0x08",
        in("rax") o.add(16),
        in("rcx") 128usize,
        options(nostack)
    );
    asm!(
        ".byte 0xc4, 0xe2, 0x7a, 0x4b, 0x14, 0x08",
        in("rax") o.add(16 * 32),
        in("rcx") 128usize,
        options(nostack)
    );
    asm!(
        ".byte 0xc4, 0xe2, 0x7a, 0x4b, 0x1c, 0x08",
        in("rax") o.add(16 * 32 + 16),
        in("rcx") 128usize,
        options(nostack)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "timing, run by hand: cargo test --release --lib amx -- --ignored --nocapture"]
    fn speed_against_f32_gemm() {
        let (rows, inp, out) = (1600, 768, 3072);
        let x = vec![0.5f32; rows * inp];
        let w = vec![0.25f32; out * inp];
        let packed = pack(&w, out, inp);
        let mut dst = vec![0f32; rows * out];
        let start = std::time::Instant::now();
        for _ in 0..10 {
            matmul_acc(&x, rows, &packed, &mut dst);
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
            "amx {:.1} GFLOP/s, f32 gemm {:.1} GFLOP/s",
            flops / amx / 1e9,
            flops / f32 / 1e9
        );
    }

    #[test]
    fn matches_a_bf16_reference_product() {
        if !available() {
            eprintln!("skipped: no AMX on this CPU");
            return;
        }
        // Sizes that are not multiples of the tiles.
        for (rows, inp, out) in [(1, 32, 16), (50, 70, 45), (100, 768, 96)] {
            let x: Vec<f32> = (0..rows * inp)
                .map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..out * inp)
                .map(|i| ((i * 104729) % 199) as f32 / 99.0 - 1.0)
                .collect();
            let bf = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
            let mut dst = vec![1.0f32; rows * out];
            matmul_acc(&x, rows, &pack(&w, out, inp), &mut dst);
            for r in 0..rows {
                for n in 0..out {
                    let want: f64 = 1.0
                        + (0..inp)
                            .map(|k| bf(x[r * inp + k]) * bf(w[n * inp + k]))
                            .sum::<f64>();
                    let got = dst[r * out + n] as f64;
                    assert!(
                        (got - want).abs() <= 1e-3 * (1.0 + want.abs()),
                        "({rows},{inp},{out}) [{r},{n}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
