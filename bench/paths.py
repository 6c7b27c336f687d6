#!/usr/bin/env python3
"""Model-only throughput of every CPU path, foodclip against PyTorch restricted the same way.

    .venv/bin/python bench/paths.py [--rounds 3] [--workdir /tmp/foodclip-bench]

Random ViT-B/32 (bench.py's checkpoint), batch 32, image embeddings from random pixels. Each
path is measured on both sides in the same run, alternating foodclip and PyTorch for --rounds
rounds; the median of each is reported:

| path | foodclip | peer (PyTorch or ONNX Runtime) |
| --- | --- | --- |
| bf16, AMX | `FOODCLIP_BF16=amx` | bf16 autocast |
| bf16, AVX-512 BF16 | `FOODCLIP_BF16=avx512` | autocast, `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` |
| fp32, AVX-512 | default build | fp32 |
| fp32, AVX2 | `--no-default-features` build | fp32, `ONEDNN_MAX_CPU_ISA=AVX2` |
| int8, AMX | `--precision int8` (`FOODCLIP_INT8=amx`) | ONNX Runtime dynamic int8 |
| int8, AVX-512 VNNI | `FOODCLIP_INT8=vnni` | ONNX Runtime dynamic int8 |
| int8, AVX-VNNI | `FOODCLIP_INT8=avx-vnni`, CPU masked to AVX-VNNI | ONNX Runtime dynamic int8, masked the same |
| int8, AVX-512 BW | `FOODCLIP_INT8=avx512bw`, CPU masked to AVX-512 without VNNI | ONNX Runtime dynamic int8, masked the same |
| int8, AVX2 | `FOODCLIP_INT8=avx2`, CPU masked to AVX2 | ONNX Runtime dynamic int8, masked the same |
| fp32, AVX2 | default build, CPU masked to AVX2 | ONNX Runtime fp32, masked the same |

Then ONNX Runtime (PyPI `onnxruntime`), as CPU deployments of CLIP run it: the same image tower
and projection exported with `torch.onnx.export`, the CPU provider with as many intra-op
threads as foodclip's (the CPUs this process may use), fp32 against foodclip's f32, and its
dynamic quantisation (`quantize_dynamic`, int8 weights, activations quantised per call) against
foodclip's int8, alternating the same way. `--no-ort` skips it; the exports are kept under
--workdir. Each foodclip run also reports its peak resident memory.

ONNX Runtime has no switch to keep it from AVX-512: it reads the CPU's features with CPUID. So
on the masked rows both processes run under `bench/cpuid_mask.c` (built here with gcc, loaded
with LD_PRELOAD), which makes every CPUID trap (Linux CPUID faulting, CPUs flagged
`cpuid_fault`) and answers it with AVX-512, AMX and AVX512-BF16 hidden (and AVX-VNNI, for the
AVX2 rows; for the AVX-512 BW row, only AVX-512's later subsets, VNNI among them, as on an Intel
Xeon Skylake-SP): both sides pick their kernels as on a CPU without them. Where the CPU cannot fault
on CPUID, those rows run ONNX Runtime unmasked and say so.

A path the CPU lacks is skipped. Then `--precision auto` (the engine its probe measures fastest)
against foodclip's own f32, alternating the same way: it should never be slower. `--auto-only`
measures just that. Nothing is asserted; run it on an otherwise idle machine.

`--siglip` measures a random SigLIP base instead (transformers' default `SiglipConfig`: ViT-B/16
at 224 px, 196 patches and the attention-pooling head), built once under --workdir.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, make_checkpoint  # noqa: E402

# PyTorch in a process of its own, so that ONEDNN_MAX_CPU_ISA takes effect: bench.py's timing.
TORCH = r"""
import sys
sys.path.insert(0, sys.argv[5])
from bench import torch_model_only
ckpt, batch, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(batch / torch_model_only(ckpt, batch, iterations, sys.argv[4] == "bf16"))
"""


def make_siglip_checkpoint(path):
    """A random SigLIP base (the default `SiglipConfig`) with tiny-siglip's tokenizer files."""
    import shutil

    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    if os.path.exists(os.path.join(path, "model.safetensors")):
        return
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(0)
    SiglipModel(SiglipConfig()).eval().save_pretrained(path)
    SiglipImageProcessorPil(size={"height": 224, "width": 224}, resample=3).save_pretrained(path)
    tok = os.path.join(ROOT, "tests", "fixtures", "tiny-siglip")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok, f), os.path.join(path, f))


# ONNX Runtime in a process of its own: the export (once) and the timing.
ORT_EXPORT = r"""
import sys, torch
from transformers import AutoModel
from onnxruntime.quantization import QuantType, quantize_dynamic
ckpt, fp32_path, int8_path = sys.argv[1:4]
model = AutoModel.from_pretrained(ckpt).eval()

class Tower(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        out = self.m.get_image_features(pixel_values=pixel_values)
        return getattr(out, "pooler_output", out)

with torch.no_grad():
    torch.onnx.export(Tower(model), (torch.randn(2, 3, 224, 224),), fp32_path,
                      input_names=["pixel_values"], output_names=["embeds"],
                      dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=17, dynamo=False)
quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)
"""

ORT_TIME = r"""
import sys, time
import numpy as np, onnxruntime as ort
path, batch, iterations, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
session.run(None, {"pixel_values": x})
start = time.perf_counter()
for _ in range(iterations):
    session.run(None, {"pixel_values": x})
print(batch * iterations / (time.perf_counter() - start))
"""


def ort_models(ckpt):
    """The tower exported to ONNX in fp32 and dynamically quantised to int8, beside `ckpt`."""
    fp32, int8 = ckpt + "-fp32.onnx", ckpt + "-int8.onnx"
    if not (os.path.exists(fp32) and os.path.exists(int8)):
        subprocess.run([sys.executable, "-c", ORT_EXPORT, ckpt, fp32, int8], check=True,
                       capture_output=True)
    return {"f32": fp32, "int8": int8}


def ort(model, iterations, env=None):
    threads = len(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", ORT_TIME, model, "32", str(iterations), str(threads)],
                         capture_output=True, text=True, check=True, env=dict(os.environ, **(env or {})))
    return float(out.stdout.strip().splitlines()[-1])


def cpuid_mask(workdir, features):
    """The environment that runs a process as if the CPU had only `features` ("avx2",
    "avx-vnni" or "avx512"), or None where this CPU cannot fault on CPUID."""
    if "cpuid_fault" not in cpu_flags():
        return None
    lib = os.path.join(workdir, "cpuid_mask.so")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpuid_mask.c")
    if not os.path.exists(lib) or os.path.getmtime(lib) < os.path.getmtime(src):
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", lib, src], check=True)
    return {"LD_PRELOAD": lib, "FOODCLIP_CPUID_MASK": features}


def alternate(rounds, ours, peer):
    """Runs `ours` and `peer` in turn `rounds` times; the median of each."""
    a, b = [], []
    for _ in range(rounds):
        a.append(ours())
        b.append(peer())
    return statistics.median(a), statistics.median(b)


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":")[1].split())
    return set()


def foodclip(ckpt, precision, iterations, env, target):
    bench = (["cargo", "bench", "--quiet", "--bench", "model"]
             + ([] if target is None else ["--no-default-features"]))
    target_env = {} if target is None else {"CARGO_TARGET_DIR": target}
    if "LD_PRELOAD" in env and target not in BUILT:
        # Built first (once per run) without the CPUID mask: rustc installs its own SIGSEGV
        # handler, which cannot answer a trapped CPUID.
        subprocess.run(bench + ["--no-run"], cwd=ROOT, capture_output=True, check=True,
                       env=dict(os.environ, **target_env))
        BUILT.add(target)
    out = subprocess.run(
        bench + ["--", ckpt, "32", str(iterations), precision],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env=dict(os.environ, **env, **target_env),
    )
    record = json.loads(out.stdout.strip().splitlines()[-1])
    shown = {k: v for k, v in env.items() if k != "LD_PRELOAD"}
    PEAK_RSS[precision + "".join(f" {k}={v}" for k, v in shown.items())] = record["peak_rss_mb"]
    return record["images_per_second"]


# The builds (CARGO_TARGET_DIR, None for the default) made unmasked in this run.
BUILT = set()

# Peak resident memory (MB) of the last foodclip run of each precision and environment.
PEAK_RSS = {}


def torch(ckpt, precision, iterations, isa):
    env = dict(os.environ)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
        if isa == "AVX2":
            # PyTorch's fp32 Linear runs on MKL's sgemm, which ignores oneDNN's limit: on an
            # Intel CPU it would still use AVX-512.
            env["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", TORCH, ckpt, "32", str(iterations), precision, here],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/foodclip-bench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--siglip", action="store_true", help="a random SigLIP base, not CLIP ViT-B/32")
    ap.add_argument("--no-avx2", action="store_true", help="skip the AVX2 path (a second build)")
    ap.add_argument("--auto-only", action="store_true", help="only --precision auto against f32")
    ap.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    args = ap.parse_args()
    if args.siglip:
        ckpt = os.path.join(args.workdir, "siglip-b16")
        make_siglip_checkpoint(ckpt)
    else:
        ckpt = os.path.join(args.workdir, "vit-b32")
        make_checkpoint(ckpt)
    flags = cpu_flags()
    avx2_target = os.path.join(ROOT, "target", "avx2-build")
    paths = []
    if "amx_bf16" in flags:
        paths.append(("bf16, AMX", "bf16", {"FOODCLIP_BF16": "amx"}, None, None))
    if "avx512_bf16" in flags:
        paths.append(("bf16, AVX-512 BF16, no AMX", "bf16", {"FOODCLIP_BF16": "avx512"}, None,
                      "AVX512_CORE_BF16"))
    if "avx512f" in flags:
        paths.append(("fp32, AVX-512", "f32", {}, None, None))
    if not args.no_avx2:
        paths.append(("fp32, AVX2 only", "f32", {"FOODCLIP_BF16": "off"}, avx2_target, "AVX2"))
    if args.siglip:
        args.no_ort = True  # the export above is written for CLIP's get_image_features
    if not args.auto_only and not args.no_ort:
        models = ort_models(ckpt)
        # (name, precision, foodclip's environment, the CPU features both sides see)
        ort_paths = []
        if "amx_int8" in flags:
            ort_paths.append(("int8, AMX", "int8", {"FOODCLIP_INT8": "amx"}, None))
        if "avx512_vnni" in flags:
            ort_paths.append(("int8, AVX-512 VNNI", "int8", {"FOODCLIP_INT8": "vnni"}, None))
        if "avx_vnni" in flags:
            ort_paths.append(("int8, AVX-VNNI", "int8", {"FOODCLIP_INT8": "avx-vnni"}, "avx-vnni"))
        if "avx512bw" in flags:
            ort_paths.append(("int8, AVX-512 BW", "int8", {"FOODCLIP_INT8": "avx512bw"}, "avx512"))
        if "avx2" in flags:
            ort_paths.append(("int8, AVX2", "int8", {"FOODCLIP_INT8": "avx2"}, "avx2"))
            if "avx512f" in flags:
                ort_paths.append(("fp32, AVX2", "f32", {"FOODCLIP_BF16": "off"}, "avx2"))
        ort_paths.append(("fp32", "f32", {}, None))
        for name, precision, env, features in ort_paths:
            mask = cpuid_mask(args.workdir, features) if features else None
            o, p = alternate(args.rounds,
                             lambda: foodclip(ckpt, precision, args.iterations, {**env, **(mask or {})}, None),
                             lambda: ort(models[precision], args.iterations, mask))
            seen = (f", both with the CPU masked to {features}" if mask else
                    ", ONNX Runtime unmasked (its best engine)" if features else "")
            print(f"{name}: foodclip {o:.1f} img/s, ONNX Runtime {'int8 dynamic' if precision == 'int8' else 'fp32'} "
                  f"{p:.1f} img/s, ratio {o / p:.2f}x{seen}", flush=True)
    for name, precision, env, target, isa in [] if args.auto_only else paths:
        o, p = alternate(args.rounds, lambda: foodclip(ckpt, precision, args.iterations, env, target),
                         lambda: torch(ckpt, precision, args.iterations, isa))
        print(f"{name}: foodclip {o:.1f} img/s, PyTorch {p:.1f} img/s "
              f"({'ONEDNN_MAX_CPU_ISA=' + isa if isa else 'unrestricted'}), ratio {o / p:.2f}x",
              flush=True)
    a, f = alternate(args.rounds, lambda: foodclip(ckpt, "auto", args.iterations, {}, None),
                     lambda: foodclip(ckpt, "f32", args.iterations, {}, None))
    print(f"auto (measured): foodclip {a:.1f} img/s against its f32 {f:.1f} img/s, ratio {a / f:.2f}x",
          flush=True)
    for run, mb in PEAK_RSS.items():
        print(f"peak resident memory, foodclip {run}: {mb} MB")


if __name__ == "__main__":
    main()
