// LD_PRELOAD shim for bench/paths.py: hides CPU features from a process, so that a library that picks its kernels by
// CPUID (ONNX Runtime's MLAS, oneDNN, numpy) runs the path of a smaller CPU.
// FOODCLIP_CPUID_MASK=avx2      hides AVX-512 (every subset), AVX-VNNI, AVX512-BF16 and AMX;
// FOODCLIP_CPUID_MASK=avx-vnni  hides the same but keeps AVX-VNNI;
// FOODCLIP_CPUID_MASK=avx512    keeps AVX-512 F, CD, BW, DQ and VL (an Intel Xeon Skylake-SP) and
//                               hides the rest of those (AVX-512 VNNI included).
// It uses CPUID faulting (Linux arch_prctl(ARCH_SET_CPUID), CPUs flagged `cpuid_fault`): every
// CPUID traps, and the SIGSEGV handler answers it with the real values, masked. A program that
// installs its own SIGSEGV handler (rustc does; Rust programs keep one that is already there)
// cannot run under it.
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int keep_avx_vnni, keep_avx512;

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    if (leaf == 7 && sub == 0) {
        // EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31.
        uint32_t skylake = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);
        r[1] &= ~((1u << 21) | (1u << 26) | (1u << 27) | (keep_avx512 ? 0 : skylake));
        // ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14.
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        // EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, FP16 23, AMX-TILE 24, AMX-INT8 25.
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
                  (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        // EAX: AVX-VNNI 4, AVX512-BF16 5, AMX-FP16 21. EDX: AVX-VNNI-INT8 4, AMX-COMPLEX 8,
        // AVX10 19 (which implies AVX-512).
        r[0] &= ~((1u << 5) | (1u << 21));
        r[3] &= ~((1u << 8) | (1u << 19));
        if (!keep_avx_vnni) {
            r[0] &= ~(1u << 4);
            r[3] &= ~(1u << 4);
        }
    } else if (leaf == 0x1d || leaf == 0x1e || leaf == 0x24) {
        // AMX tile and AVX10 information: nothing to report.
        r[0] = r[1] = r[2] = r[3] = 0;
    } else if (leaf == 0xd && sub == 0) {
        // XSAVE state components: no opmask / ZMM state (5, 6, 7) and no AMX tiles (17, 18).
        r[0] &= ~((keep_avx512 ? 0 : (1u << 5) | (1u << 6) | (1u << 7)) | (1u << 17) | (1u << 18));
    }
}

static void on_segv(int sig, siginfo_t *info, void *ctx) {
    ucontext_t *uc = ctx;
    greg_t *g = uc->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)g[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {  // not CPUID: a real fault
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
        return;
    }
    uint32_t leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX], r[4];
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    real_cpuid(leaf, sub, r);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    mask(leaf, sub, r);
    g[REG_RAX] = r[0];
    g[REG_RBX] = r[1];
    g[REG_RCX] = r[2];
    g[REG_RDX] = r[3];
    g[REG_RIP] += 2;
    (void)sig;
    (void)info;
}

__attribute__((constructor)) static void start(void) {
    const char *how = getenv("FOODCLIP_CPUID_MASK");
    if (!how || !*how) return;
    if (strcmp(how, "avx2") && strcmp(how, "avx-vnni") && strcmp(how, "avx512")) {
        fprintf(stderr, "cpuid_mask: FOODCLIP_CPUID_MASK=%s: use avx2, avx-vnni or avx512\n", how);
        exit(2);
    }
    keep_avx_vnni = !strcmp(how, "avx-vnni");
    keep_avx512 = !strcmp(how, "avx512");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        perror("cpuid_mask: arch_prctl(ARCH_SET_CPUID) (does this CPU have cpuid_fault?)");
        exit(2);
    }
}
