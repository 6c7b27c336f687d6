#!/usr/bin/env python3
"""foodclip against its peer (transformers + PyTorch) on the same checkpoint and the same photos.

    python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install -r tests/fixtures/requirements.txt
    /tmp/bench-venv/bin/python bench/bench.py [--photos 48] [--workdir /tmp/foodclip-bench]

Builds (once, under --workdir) a random-weight CLIP in the real ViT-B/32 architecture with
transformers and a set of 12-megapixel JPEG tray photos (a third with EXIF rotation), then times:

1. model only: image embeddings from preprocessed tensors, batch 32, all cores; PyTorch fp32 and
   bf16 autocast vs `cargo bench --bench model` in f32 and bf16;
2. end to end: paths in, labels out (labels/korean.txt, 150 classes): the transformers pipeline
   (PIL decode + CLIPImageProcessor + model, fp32) vs `foodclip classify` in f32, bf16, int8 and
   auto (the engine its probe measured fastest) with its prompt cache warm, as photos/s and as the
   wall time of the whole process;
3. the prompt cache: `foodclip classify` of one photo with the 150 Korean labels, first with an
   empty cache and then again.

It prints every figure and the ratios (foodclip speed / peer speed). Run it on an otherwise idle
machine; nothing here is asserted.

`--avx2` measures the AVX2 path on a machine with AVX-512: foodclip built with
`--no-default-features` (under target/avx2-build, shared with bench/paths.py) and PyTorch with
`ONEDNN_MAX_CPU_ISA=AVX2`; bf16 is skipped, as an AVX2 CPU has no bf16 arithmetic (int8 then
runs its AVX2 engine, and auto its probe's choice among what that build has).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_checkpoint(path):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    if os.path.exists(os.path.join(path, "model.safetensors")):
        return
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_act="quick_gelu"),
        vision_config=dict(hidden_act="quick_gelu", patch_size=32, image_size=224),
        projection_dim=512,
    )
    CLIPModel(config).eval().save_pretrained(path)
    CLIPImageProcessor().save_pretrained(path)
    tok = os.path.join(ROOT, "tests", "fixtures", "tiny-openai")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok, f), os.path.join(path, f))


def make_photos(directory, count):
    from PIL import Image, ImageDraw, ImageFilter

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        p = os.path.join(directory, f"tray-{i:03d}.jpg")
        if os.path.exists(p):
            continue
        w, h = 4000, 3000
        small = rng.integers(0, 255, size=(30, 40, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            cx, cy, r = rng.uniform(500, 3500), rng.uniform(500, 2500), rng.uniform(200, 700)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        noise = rng.normal(0, 10, size=(h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)
        exif = Image.Exif()
        if i % 3 == 0:
            exif[0x0112] = 6
        img.save(p, quality=90, exif=exif.tobytes())


def setup(workdir, count):
    """The random ViT-B/32 checkpoint and `count` tray photos under `workdir` (made once):
    `(checkpoint folder, photo paths)`."""
    ckpt = os.path.join(workdir, "vit-b32")
    photos = os.path.join(workdir, "photos")
    make_checkpoint(ckpt)
    make_photos(photos, count)
    return ckpt, sorted(os.path.join(photos, p) for p in os.listdir(photos))[:count]


def torch_model_only(ckpt, batch, iterations, bf16):
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(ckpt).eval()  # CLIPModel or SiglipModel, by its config
    pixels = torch.randn(batch, 3, 224, 224)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.no_grad()
    with torch.no_grad(), ctx:
        model.get_image_features(pixel_values=pixels)
        start = time.perf_counter()
        for _ in range(iterations):
            model.get_image_features(pixel_values=pixels)
    return (time.perf_counter() - start) / iterations


# The peers' preamble: the model, the processor and the zero-shot class embeddings of a label
# file (group headers and comments skipped), as a transformers user writes it.
PEER_TEXT = r"""
import sys, time, torch
from transformers import CLIPModel, CLIPImageProcessor, CLIPTokenizer
from transformers.image_utils import load_image
model = CLIPModel.from_pretrained(ckpt).eval()
processor = CLIPImageProcessor.from_pretrained(ckpt)
tokenizer = CLIPTokenizer.from_pretrained(ckpt)
names = [l.split("|")[0].strip() for l in open(labels_file, encoding="utf-8")
         if l.strip() and not l.startswith("#") and not l.startswith("[")]
with torch.no_grad():
    t = tokenizer([f"a photo of {n}, a type of food." for n in names], padding=True, truncation=True, return_tensors="pt")
    text = model.get_text_features(**t)
    text = getattr(text, "pooler_output", text)
    text = text / text.norm(dim=-1, keepdim=True)
"""

PEER_SCRIPT = r"""
import sys
ckpt, labels_file, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
paths = [p for p in sys.stdin.read().split("\n") if p]
""" + PEER_TEXT + r"""
with torch.no_grad():
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        images = [load_image(p) for p in paths[i:i + batch]]
        px = processor(images=images, return_tensors="pt")["pixel_values"]
        emb = model.get_image_features(pixel_values=px)
        emb = getattr(emb, "pooler_output", emb)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        probs = (model.logit_scale.exp() * emb @ text.T).softmax(-1)
        for p, row in zip(paths[i:i + batch], probs):
            print(p, names[int(row.argmax())], flush=True)
print(f"PHOTOS_PER_SECOND {len(paths) / (time.perf_counter() - start):.3f}", file=sys.stderr)
"""


def rate(stderr, unit="photos/s"):
    """The rate in foodclip's closing summary."""
    line = [l for l in stderr.splitlines() if unit in l][-1]
    return float(line.split(unit)[0].split()[-1].lstrip("("))


def timed_peak(cmd, stdin=None, env=None):
    """Runs `cmd` under /usr/bin/time: (wall seconds, peak KiB, completed process)."""
    start = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "PEAK_KIB %M"] + cmd, input=stdin,
                         capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd[:5])} failed: {out.stderr}")
    peak = int([l for l in out.stderr.splitlines() if l.startswith("PEAK_KIB")][-1].split()[1])
    return wall, peak, out


def run_timed(cmd, stdin=None, env=None):
    start = time.perf_counter()
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {out.stderr}")
    return wall, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/foodclip-bench")
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--skip-model", action="store_true", help="only the end-to-end comparison")
    ap.add_argument("--avx2", action="store_true", help="both sides restricted to AVX2")
    args = ap.parse_args()
    build = ["cargo", "build", "--release", "--quiet", "--bench", "model", "--bin", "foodclip"]
    target = os.path.join(ROOT, "target")
    if args.avx2:
        # Before PyTorch is first imported (in this process and in the peers it starts).
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        os.environ["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"  # MKL's sgemm (fp32 Linear) ignores oneDNN's
        target = os.path.join(ROOT, "target", "avx2-build")  # the one bench/paths.py builds
        os.environ["CARGO_TARGET_DIR"] = target
        build.append("--no-default-features")
        args.skip_bf16 = True

    ckpt, paths = setup(args.workdir, args.photos)
    labels = os.path.join(ROOT, "labels", "korean.txt")
    subprocess.run(build, cwd=ROOT, check=True)
    exe = os.path.join(target, "release", "foodclip")
    results = {}

    def bench_model(precision):
        out = subprocess.run(
            ["cargo", "bench", "--quiet", "--bench", "model"]
            + (["--no-default-features"] if args.avx2 else [])
            + ["--", ckpt, "32", str(args.iterations), precision],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_batch"]

    precisions = [] if args.skip_model else [("fp32", "f32", False)] + ([] if args.skip_bf16 else [("bf16", "bf16", True)])
    for label, ours, bf16 in precisions:
        peer = torch_model_only(ckpt, 32, args.iterations, bf16)
        mine = bench_model(ours)
        results[f"model_{label}"] = (mine, peer)
        print(f"model only, batch 32, {label}: foodclip {32 / mine:.1f} img/s, PyTorch {32 / peer:.1f} img/s, ratio {peer / mine:.2f}x")

    listing = "\n".join(paths) + "\n"
    peer_wall, peer = run_timed([sys.executable, "-c", PEER_SCRIPT, ckpt, labels, "16"], stdin=listing)
    peer_rate = float(peer.stderr.strip().split()[-1])
    env = dict(os.environ, FOODCLIP_CACHE_DIR=os.path.join(args.workdir, "cache"))
    for precision in ["f32"] + ([] if args.skip_bf16 else ["bf16"]) + ["int8", "auto"]:
        cmd = [exe, "--model", ckpt, "--precision", precision, "classify", "-", "--labels", labels,
               "--format", "jsonl", "-t", "a photo of {}, a type of food."]
        run_timed(cmd, stdin=listing, env=env)  # warm caches (page cache, text embeddings)
        our_wall, ours = run_timed(cmd, stdin=listing, env=env)
        our_rate = rate(ours.stderr)
        print(f"end to end, {args.photos} photos of 12 MP, 150 labels, foodclip {precision}: "
              f"{our_rate:.2f} photos/s, transformers fp32 {peer_rate:.2f} photos/s, ratio {our_rate / peer_rate:.2f}x")
        print(f"  whole process: foodclip {our_wall:.2f} s, transformers {peer_wall:.2f} s, "
              f"ratio {peer_wall / our_wall:.2f}x", flush=True)

    # The prompt cache: one photo, the 150 Korean labels with the default templates (every name
    # and synonym), first with an empty cache, then again.
    cold = os.path.join(args.workdir, "cache-cold")
    shutil.rmtree(cold, ignore_errors=True)
    env = dict(os.environ, FOODCLIP_CACHE_DIR=cold)
    one = [exe, "--model", ckpt, "classify", paths[0], "--labels", labels, "--format", "jsonl"]
    first, _ = run_timed(one, env=env)
    second, _ = run_timed(one, env=env)
    print(f"one photo, 150 labels: first run {first:.2f} s, second run (prompts cached) {second:.2f} s, "
          f"ratio {second / first:.3f}")


if __name__ == "__main__":
    main()
