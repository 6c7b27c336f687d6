#!/usr/bin/env python3
"""Trays: foodclip against transformers on regions, same checkpoint, same photos, same boxes.

    .venv/bin/python bench/regions.py [--photos 48] [--workdir /tmp/foodclip-bench]

Uses bench.py's random ViT-B/32 checkpoint and 12-megapixel tray photos (a third stored rotated
with EXIF orientation 6), and gives every photo five boxes: the compartments of
labels/trays/school-5.toml placed on the photo as displayed, written as a CSV region file.

- foodclip: `foodclip classify - --regions boxes.csv` (fast path, prompt cache warm), in f32 and
  with `--precision bf16` (which runs f32 on a CPU without bf16 arithmetic);
- peer: PIL open + EXIF transpose (`load_image`) + crop each box + `CLIPImageProcessor` + model,
  16 photos decoded at a time, their regions through the model 16 at a time.

Prints regions/s of both, the ratio, and each process's peak memory (`/usr/bin/time`). Nothing
is asserted; run it on an otherwise idle machine.

`--auto` times `classify - --regions auto` (dishes found from NACLIP class maps, no boxes)
against whole-photo `classify -` on the same photos instead: photos/s of each and the ratio.
transformers has no such mode to compare with.
"""

import argparse
import os
import subprocess
import sys
import time
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import PEER_TEXT, ROOT, rate, setup, timed_peak as timed  # noqa: E402

PEER_SCRIPT = r"""
import csv, sys
ckpt, labels_file, boxes_file, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = {}
for path, x1, y1, x2, y2 in csv.reader(open(boxes_file, encoding="utf-8")):
    rows.setdefault(path, []).append(tuple(int(v) for v in (x1, y1, x2, y2)))
""" + PEER_TEXT + r"""
n = 0
with torch.no_grad():
    start = time.perf_counter()
    paths = list(rows)
    for i in range(0, len(paths), batch):
        crops = []
        for p in paths[i:i + batch]:
            img = load_image(p)
            crops += [img.crop(b) for b in rows[p]]
        for j in range(0, len(crops), batch):
            px = processor(images=crops[j:j + batch], return_tensors="pt")["pixel_values"]
            emb = model.get_image_features(pixel_values=px)
            emb = getattr(emb, "pooler_output", emb)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            probs = (model.logit_scale.exp() * emb @ text.T).softmax(-1)
            for row in probs:
                print(names[int(row.argmax())], flush=True)
                n += 1
print(f"REGIONS_PER_SECOND {n / (time.perf_counter() - start):.3f}", file=sys.stderr)
"""


def displayed_size(path):
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/foodclip-bench")
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--auto", action="store_true", help="--regions auto against whole photos")
    args = ap.parse_args()

    ckpt, paths = setup(args.workdir, args.photos)
    if args.auto:
        return auto(args, ckpt, paths)
    with open(os.path.join(ROOT, "labels", "trays", "school-5.toml"), "rb") as f:
        layout = tomllib.load(f)["compartment"]
    boxes = os.path.join(args.workdir, "boxes.csv")
    with open(boxes, "w", encoding="utf-8") as f:
        for p in paths:
            w, h = displayed_size(p)
            for c in layout:
                x1, y1, x2, y2 = c["box"]
                f.write(f"{p},{round(x1 * w)},{round(y1 * h)},{round(x2 * w)},{round(y2 * h)}\n")
    regions = len(paths) * len(layout)
    labels = os.path.join(ROOT, "labels", "korean.txt")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "foodclip"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "foodclip")

    listing = "\n".join(paths) + "\n"
    env = dict(os.environ, FOODCLIP_CACHE_DIR=os.path.join(args.workdir, "cache"))
    peer_wall, peer_peak, peer = timed([sys.executable, "-c", PEER_SCRIPT, ckpt, labels, boxes, "16"])
    peer_rate = float([l for l in peer.stderr.splitlines() if "REGIONS_PER_SECOND" in l][-1].split()[-1])
    for precision in ("f32", "bf16"):
        cmd = [exe, "--model", ckpt, "--precision", precision, "classify", "-", "--regions", boxes,
               "--labels", labels, "--format", "jsonl", "-t", "a photo of {}, a type of food."]
        timed(cmd, stdin=listing, env=env)  # warm the page cache and the prompt cache
        our_wall, our_peak, ours = timed(cmd, stdin=listing, env=env)
        our_rate = rate(ours.stderr, "regions/s")
        print(f"regions, {len(paths)} photos of 12 MP x {len(layout)} boxes = {regions}, foodclip "
              f"{precision}: {our_rate:.2f} regions/s, transformers fp32 {peer_rate:.2f} regions/s, "
              f"ratio {our_rate / peer_rate:.2f}x")
        print(f"  whole process: foodclip {our_wall:.2f} s, transformers {peer_wall:.2f} s, "
              f"ratio {peer_wall / our_wall:.2f}x; peak memory: foodclip {our_peak / 1024:.0f} MiB, "
              f"transformers {peer_peak / 1024:.0f} MiB", flush=True)


def auto(args, ckpt, paths):
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "foodclip"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "foodclip")
    labels = os.path.join(ROOT, "labels", "korean.txt")
    listing = "\n".join(paths) + "\n"
    env = dict(os.environ, FOODCLIP_CACHE_DIR=os.path.join(args.workdir, "cache"))
    rates = {}
    for name, extra in (("whole photo", []), ("--regions auto", ["--regions", "auto"])):
        cmd = [exe, "--model", ckpt, "classify", "-", "--labels", labels, "--format", "jsonl"] + extra
        timed(cmd, stdin=listing, env=env)  # warm the page cache and the prompt cache
        wall, peak, out = timed(cmd, stdin=listing, env=env)
        rates[name] = len(paths) / wall
        regions = sum(1 for line in out.stdout.splitlines() if line.strip())
        print(f"{name}: {len(paths)} photos of 12 MP in {wall:.2f} s = {rates[name]:.2f} photos/s, "
              f"{regions} records, peak memory {peak / 1024:.0f} MiB", flush=True)
    print(f"--regions auto at {rates['--regions auto'] / rates['whole photo']:.2f}x the photos/s of "
          f"whole-photo classify")


if __name__ == "__main__":
    main()
