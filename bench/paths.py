#!/usr/bin/env python3
"""Model-only throughput of every CPU path, foodclip against PyTorch restricted the same way.

    .venv/bin/python bench/paths.py [--rounds 3] [--workdir /tmp/foodclip-bench]

Random ViT-B/32 (bench.py's checkpoint), batch 32, image embeddings from random pixels. Each
path is measured on both sides in the same run, alternating foodclip and PyTorch for --rounds
rounds; the median of each is reported:

| path | foodclip | PyTorch |
| --- | --- | --- |
| bf16, AMX | `FOODCLIP_BF16=amx` | bf16 autocast |
| bf16, AVX-512 BF16 | `FOODCLIP_BF16=avx512` | autocast, `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` |
| fp32, AVX-512 | default build | fp32 |
| fp32, AVX2 | `--no-default-features` build | fp32, `ONEDNN_MAX_CPU_ISA=AVX2` |

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


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":")[1].split())
    return set()


def foodclip(ckpt, precision, iterations, env, target):
    out = subprocess.run(
        ["cargo", "bench", "--quiet", "--bench", "model"]
        + ([] if target is None else ["--no-default-features"])
        + ["--", ckpt, "32", str(iterations), precision],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env=dict(os.environ, **env, **({} if target is None else {"CARGO_TARGET_DIR": target})),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_second"]


def torch(ckpt, precision, iterations, isa):
    env = dict(os.environ)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
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
    for name, precision, env, target, isa in [] if args.auto_only else paths:
        ours, peer = [], []
        for _ in range(args.rounds):
            ours.append(foodclip(ckpt, precision, args.iterations, env, target))
            peer.append(torch(ckpt, precision, args.iterations, isa))
        o, p = statistics.median(ours), statistics.median(peer)
        print(f"{name}: foodclip {o:.1f} img/s, PyTorch {p:.1f} img/s "
              f"({'ONEDNN_MAX_CPU_ISA=' + isa if isa else 'unrestricted'}), ratio {o / p:.2f}x",
              flush=True)
    auto, f32 = [], []
    for _ in range(args.rounds):
        auto.append(foodclip(ckpt, "auto", args.iterations, {}, None))
        f32.append(foodclip(ckpt, "f32", args.iterations, {}, None))
    a, f = statistics.median(auto), statistics.median(f32)
    print(f"auto (measured): foodclip {a:.1f} img/s against its f32 {f:.1f} img/s, ratio {a / f:.2f}x",
          flush=True)


if __name__ == "__main__":
    main()
