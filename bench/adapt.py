#!/usr/bin/env python3
"""`foodclip adapt`: how long adapting takes, and what applying an adapter costs.

    .venv/bin/python bench/adapt.py [--workdir /tmp/foodclip-bench]

Uses bench.py's random ViT-B/32 checkpoint and 48 tray photos.

1. Stored embeddings of 2,352 pictures (the 48 photos cut into 7x7 grids, embedded once with
   `--save-embeddings`) are relabelled as 150 classes x ~16 photos (labels/korean.txt). Then
   `foodclip adapt --embeddings` runs on them, with and without `--fit`, timing the whole process.
2. `foodclip classify` of the 48 photos runs with and without that adapter (prompt cache warm),
   photos/s from its summary, alternating, best of 3.

Nothing is asserted.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, rate, run_timed as run, setup  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/foodclip-bench")
    args = ap.parse_args()
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    ckpt, paths = setup(args.workdir, 48)
    listing = "\n".join(paths) + "\n"
    labels = os.path.join(ROOT, "labels", "korean.txt")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "foodclip"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "foodclip")
    env = dict(os.environ, FOODCLIP_CACHE_DIR=os.path.join(args.workdir, "cache"))
    base = [exe, "--model", ckpt]

    grid = os.path.join(args.workdir, "grid.safetensors")
    if not os.path.exists(grid):
        run(base + ["classify", "-", "--grid", "7x7", "--labels", labels, "--format", "jsonl",
                    "--save-embeddings", grid], stdin=listing, env=env)
    with safe_open(grid, "np") as f:
        meta = f.metadata()
    emb = load_file(grid)["embeddings"]
    names = [l.split("|")[0].strip() for l in open(labels, encoding="utf-8")
             if l.strip() and not l.startswith("#") and not l.startswith("[")]
    support_dir = os.path.join(args.workdir, "support")
    os.makedirs(support_dir, exist_ok=True)
    fake = [os.path.join(support_dir, f"p{i:05d}.jpg") for i in range(len(emb))]
    stored = os.path.join(args.workdir, "support.safetensors")
    save_file({"embeddings": emb}, stored, metadata={
        "format": meta["format"], "checkpoint": meta["checkpoint"], "paths": json.dumps(fake)})
    dataset = os.path.join(support_dir, "support.csv")
    with open(dataset, "w", encoding="utf-8") as f:
        for i, p in enumerate(fake):
            f.write(f"{os.path.basename(p)},\"{names[i % len(names)]}\"\n")
    adapter = os.path.join(args.workdir, "bench-adapter.safetensors")
    print(f"support: {len(fake)} stored embeddings, {len(names)} classes")
    for extra in ([], ["--fit"]):
        wall, out = run(base + ["adapt", dataset, "--embeddings", stored, "--labels", labels,
                                "-o", adapter, "--format", "json"] + extra, env=env)
        report = json.loads(out.stdout)["report"]
        print(f"adapt {' '.join(extra) or '(no --fit)'}: {wall:.2f} s whole process; "
              f"{report['folds']} folds; method {report['method']}", flush=True)

    plain = base + ["classify", "-", "--labels", labels, "--format", "jsonl"]
    adapted = base + ["classify", "-", "--adapter", adapter, "--format", "jsonl"]
    run(plain, stdin=listing, env=env)
    best = {"plain": 0.0, "adapter": 0.0}
    for _ in range(3):
        for name, cmd in (("plain", plain), ("adapter", adapted)):
            _, out = run(cmd, stdin=listing, env=env)
            best[name] = max(best[name], rate(out.stderr))
    print(f"classify 48 photos: {best['plain']:.2f} photos/s without, {best['adapter']:.2f} with "
          f"the adapter ({len(fake)} cached photos): {100 * (best['plain'] / best['adapter'] - 1):+.1f}% time")


if __name__ == "__main__":
    main()
