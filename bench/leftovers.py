#!/usr/bin/env python3
"""Leftovers: what `foodclip leftovers` costs over classifying the served photos alone.

    /tmp/bench-venv/bin/python bench/leftovers.py [--trays 16] [--workdir /tmp/foodclip-bench]

Makes (once, under --workdir) 12-megapixel served/returned tray pairs with
tests/fixtures/leftovers/generate.py (`--width 4000`: shifted, turned, relit, noisy JPEGs with
exact truth) and uses bench.py's random ViT-B/32 checkpoint. Then, with the prompt cache warm:

1. `foodclip classify --layout labels/trays/school-5.toml` on the served photos alone;
2. `foodclip leftovers --pairs ... --layout ...` on the pairs, from the photos alone and with
   `--empty-tray`;
3. the same leftovers run over the pairs listed twice, for peak memory as the run grows.

Prints trays/s, the ratio of leftovers' time to classify's (goal: at most 1.5x), the accuracy
against the truth, and each process's peak memory (`/usr/bin/time`). Nothing is asserted; run it
on an otherwise idle machine. There is no transformers peer for this: the reference is
foodclip's own classify on the same photos.
"""

import argparse
import csv
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, make_checkpoint, timed_peak as timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/foodclip-bench")
    ap.add_argument("--trays", type=int, default=16)
    args = ap.parse_args()

    ckpt = os.path.join(args.workdir, "vit-b32")
    make_checkpoint(ckpt)
    pairs_dir = os.path.join(args.workdir, f"leftovers-{args.trays}")
    if not os.path.exists(os.path.join(pairs_dir, "pairs.csv")):
        subprocess.run([sys.executable, os.path.join(ROOT, "tests", "fixtures", "leftovers", "generate.py"),
                        "--out", pairs_dir, "--trays", str(args.trays), "--width", "4000"], check=True)
    pairs = os.path.join(pairs_dir, "pairs.csv")
    with open(pairs, encoding="utf-8") as f:
        rows = list(csv.reader(f))
    twice = os.path.join(pairs_dir, "pairs-twice.csv")
    with open(twice, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        for k in range(2):
            w.writerows([[f"{r[0]}-{k}"] + r[1:] for r in rows[1:]])
    served = sorted(os.path.join(pairs_dir, "served", p) for p in os.listdir(os.path.join(pairs_dir, "served")))

    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "foodclip"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "foodclip")
    env = dict(os.environ, FOODCLIP_CACHE_DIR=os.path.join(args.workdir, "cache"))
    labels = os.path.join(ROOT, "labels", "korean.txt")
    layout = os.path.join(ROOT, "labels", "trays", "school-5.toml")
    common = [exe, "--model", ckpt]
    classify = common + ["classify", "-", "--layout", layout, "--labels", labels, "--format", "jsonl"]
    listing = "\n".join(served) + "\n"
    timed(classify, stdin=listing, env=env)  # warm the page cache and the prompt cache
    c_wall, c_peak, _ = timed(classify, stdin=listing, env=env)
    print(f"classify --layout, {len(served)} served photos of 12 MP: {c_wall:.2f} s "
          f"({len(served) / c_wall:.2f} photos/s), peak {c_peak / 1024:.0f} MiB", flush=True)

    def leftovers(pairs_file, *extra):
        cmd = common + ["leftovers", "--pairs", pairs_file, "--layout", layout, "--labels", labels,
                        "--truth", os.path.join(pairs_dir, "truth.csv"), "--format", "jsonl", *extra]
        timed(cmd, env=env)
        return timed(cmd, env=env)

    empty = os.path.join(pairs_dir, "empty.jpg")
    for name, extra in (("from the photos", ()), ("with --empty-tray", ("--empty-tray", empty))):
        wall, peak, out = leftovers(pairs, *extra)
        acc = [l for l in out.stderr.splitlines() if "against the truth" in l][-1].split(": ", 2)[-1]
        print(f"leftovers {name}, {len(served)} pairs of 12 MP: {wall:.2f} s "
              f"({len(served) / wall:.2f} trays/s), {wall / c_wall:.2f}x classify's time, "
              f"peak {peak / 1024:.0f} MiB; {acc}", flush=True)
    wall, peak, _ = leftovers(twice)
    print(f"leftovers over the pairs listed twice ({2 * len(served)} pairs): {wall:.2f} s, "
          f"peak {peak / 1024:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
