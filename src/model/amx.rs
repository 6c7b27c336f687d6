//! Intel AMX tiles (Sapphire Rapids and later), shared by the bf16 and int8 engines: whether the
//! CPU and OS allow them, the tile configuration, and one 32x32 block of products on the tiles.
//!
//! Both engines lay their operands out as AMX wants them: an activation tile is 16 rows of 64
//! bytes, a weight tile 16 lines of 64 bytes, each holding one group of inputs (two bf16 or four
//! bytes) for 16 outputs. Only the dot product differs: `tdpbf16ps` (bf16 pairs, f32 sums) or
//! `tdpbusd` (unsigned x signed byte quads, int32 sums).
//!
//! Stable Rust has no AMX intrinsics, so the few AMX instructions are written as bytes (their
//! encodings are checked against GNU as in the comments). Linux must grant each process the
//! tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`available`] asks once.

use std::arch::asm;
use std::cell::Cell;
use std::sync::OnceLock;

/// The tile dot product an engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dot {
    /// `tdpbf16ps`: pairs of bf16, summed in f32 (the `amx_bf16` feature).
    Bf16,
    /// `tdpbusd`: quads of unsigned activation and signed weight bytes, summed in int32 (the
    /// `amx_int8` feature).
    Int8,
}

/// Whether the tiles can run `dot` here: the CPU has AMX and that dot product, the OS saves the
/// tile state, and Linux has granted it to this process.
pub fn available(dot: Dot) -> bool {
    static TILES: OnceLock<bool> = OnceLock::new();
    let bit = match dot {
        Dot::Bf16 => 22,
        Dot::Int8 => 25,
    };
    leaf7_edx().is_some_and(|edx| edx & (1 << bit) != 0)
        && *TILES.get_or_init(|| cpu_has_tiles() && os_grants_tiles())
}

/// cpuid leaf 7's edx, where the CPU has leaf 7 and the OS uses xsave (so xgetbv is allowed);
/// read once (cpuid traps to the hypervisor in a VM).
fn leaf7_edx() -> Option<u32> {
    use std::arch::x86_64::__cpuid_count;
    static EDX: OnceLock<Option<u32>> = OnceLock::new();
    *EDX.get_or_init(|| {
        // cpuid exists on every x86_64 CPU; leaf 7 is read only when the CPU has it.
        let (max, leaf1) = (__cpuid_count(0, 0).eax, __cpuid_count(1, 0));
        (max >= 7 && leaf1.ecx & (1 << 27) != 0).then(|| __cpuid_count(7, 0).edx)
    })
}

/// Whether the CPU has the tiles (`amx_tile`) and the OS saves their state.
fn cpu_has_tiles() -> bool {
    let Some(edx) = leaf7_edx() else {
        return false;
    };
    let (lo, _hi): (u32, u32);
    // SAFETY: OSXSAVE is set (`leaf7_edx`), so xgetbv is allowed; it reads XCR0 into edx:eax.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") _hi, options(nomem, nostack)) };
    // XCR0 bits 17 and 18: the OS saves XTILECFG and XTILEDATA.
    edx & (1 << 24) != 0 && lo & (3 << 17) == 3 << 17
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

/// The tile palette: tiles 0-3 hold 16x16 sums, 4-5 activations and 6-7 weights, each 16 rows
/// of 64 bytes.
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

/// Loads the tile configuration on this thread (once; both engines use the same one). The
/// caller must have checked [`available`].
fn configure_thread() {
    CONFIGURED.with(|done| {
        if !done.get() {
            // SAFETY: ldtilecfg [rdi] (c4 e2 78 49 07) reads the 64-byte config; the caller
            // checked that the tiles are available.
            unsafe {
                asm!(".byte 0xc4, 0xe2, 0x78, 0x49, 0x07", in("rdi") &CONFIG, options(nostack, readonly))
            };
            done.set(true);
        }
    });
}

/// One step of the tile loop: loads A rows 0-15 (tmm4) and 16-31 (tmm5), B columns 0-15 (tmm6)
/// and 16-31 (tmm7), interleaved with the four products (given as bytes) that free their
/// registers first.
macro_rules! tile_step {
    ($a0:expr, $a1:expr, $b0:expr, $b1:expr, [$p0:literal, $p1:literal, $p2:literal, $p3:literal]) => {
        // tileloadd tmm4, [rax+rcx]; tileloadd tmm6, [rdx+rcx]; product tmm0, tmm4, tmm6;
        // tileloadd tmm7, [rsi+rcx]; product tmm1, tmm4, tmm7; tileloadd tmm5, [rdi+rcx];
        // product tmm2, tmm5, tmm6; product tmm3, tmm5, tmm7
        asm!(
            ".byte 0xc4, 0xe2, 0x7b, 0x4b, 0x24, 0x08",
            ".byte 0xc4, 0xe2, 0x7b, 0x4b, 0x34, 0x0a",
            $p0,
            ".byte 0xc4, 0xe2, 0x7b, 0x4b, 0x3c, 0x0e",
            $p1,
            ".byte 0xc4, 0xe2, 0x7b, 0x4b, 0x2c, 0x0f",
            $p2,
            $p3,
            in("rax") $a0,
            in("rdi") $a1,
            in("rdx") $b0,
            in("rsi") $b1,
            in("rcx") 64usize,
            options(nostack, readonly)
        )
    };
}

/// One 32x32 block of sums of `A · B` on the tiles, into `c` (32 rows of 32 four-byte sums, f32
/// for [`Dot::Bf16`], int32 for [`Dot::Int8`]): A is two strips of `k_tiles` tiles (rows 0-15,
/// then 16-31), B two strips of `k_tiles` tiles (columns 0-15, then 16-31); each tile is 16
/// lines of 64 bytes, strips follow each other.
///
/// # Safety
/// `dot` must be [`available`]; `a` and `b` must each point to `2 * k_tiles * 16` lines of 64
/// bytes, and `c` to 4096 writable bytes.
pub unsafe fn product(
    dot: Dot,
    a: *const [u8; 64],
    b: *const [u8; 64],
    k_tiles: usize,
    c: *mut u8,
) {
    configure_thread();
    // tilezero tmm0..tmm3
    asm!(
        ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xc0",
        ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xc8",
        ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xd0",
        ".byte 0xc4, 0xe2, 0x7b, 0x49, 0xd8",
        options(nostack, nomem)
    );
    let strip = k_tiles * 16;
    for kt in 0..k_tiles {
        let (a0, a1) = (a.add(kt * 16), a.add(strip + kt * 16));
        let (b0, b1) = (b.add(kt * 16), b.add(strip + kt * 16));
        match dot {
            // tdpbf16ps tmm0, tmm4, tmm6; tmm1, tmm4, tmm7; tmm2, tmm5, tmm6; tmm3, tmm5, tmm7
            Dot::Bf16 => tile_step!(
                a0,
                a1,
                b0,
                b1,
                [
                    ".byte 0xc4, 0xe2, 0x4a, 0x5c, 0xc4",
                    ".byte 0xc4, 0xe2, 0x42, 0x5c, 0xcc",
                    ".byte 0xc4, 0xe2, 0x4a, 0x5c, 0xd5",
                    ".byte 0xc4, 0xe2, 0x42, 0x5c, 0xdd"
                ]
            ),
            // tdpbusd tmm0, tmm4, tmm6; tmm1, tmm4, tmm7; tmm2, tmm5, tmm6; tmm3, tmm5, tmm7
            Dot::Int8 => tile_step!(
                a0,
                a1,
                b0,
                b1,
                [
                    ".byte 0xc4, 0xe2, 0x49, 0x5e, 0xc4",
                    ".byte 0xc4, 0xe2, 0x41, 0x5e, 0xcc",
                    ".byte 0xc4, 0xe2, 0x49, 0x5e, 0xd5",
                    ".byte 0xc4, 0xe2, 0x41, 0x5e, 0xdd"
                ]
            ),
        }
    }
    // tilestored [rax+rcx], tmm0; [rdx+rcx], tmm1  (the top quarters, row stride 128 bytes)
    asm!(
        ".byte 0xc4, 0xe2, 0x7a, 0x4b, 0x04, 0x08",
        ".byte 0xc4, 0xe2, 0x7a, 0x4b, 0x0c, 0x0a",
        in("rax") c,
        in("rdx") c.add(64),
        in("rcx") 128usize,
        options(nostack)
    );
    // tilestored [rax+rcx], tmm2; [rdx+rcx], tmm3  (the bottom quarters)
    asm!(
        ".byte 0xc4, 0xe2, 0x7a, 0x4b, 0x14, 0x08",
        ".byte 0xc4, 0xe2, 0x7a, 0x4b, 0x1c, 0x0a",
        in("rax") c.add(16 * 128),
        in("rdx") c.add(16 * 128 + 64),
        in("rcx") 128usize,
        options(nostack)
    );
}
