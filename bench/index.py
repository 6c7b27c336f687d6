#!/usr/bin/env python3
"""`foodclip index` and `search`: indexing speed against `classify`, re-indexing an unchanged
archive, and searching / re-scoring large indexes.

    .venv/bin/python bench/index.py [--workdir /tmp/foodclip-bench] [--rows 100000]

1. Indexing 48 12-MP photos (random ViT-B/32, bench.py's) against `classify` of the same photos.
2. Re-indexing an unchanged archive of 10,000 files (small JPEGs, the tiny fixture model: only
   the file checks are timed).
3. `--rows` synthetic 512-d embeddings (random unit vectors, fake paths) written into a copy of
   the photo index with Python's sqlite3, then `search 잡채` (prompt cached) and `classify --db`
   with the 150 Korean labels, whole process, with peak memory.

Nothing is asserted.
"""

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, rate, setup, timed_peak  # noqa: E402


def timed(cmd, env):
    return timed_peak(cmd, env=env)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/foodclip-bench")
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    ckpt, paths = setup(args.workdir, 48)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "foodclip"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "foodclip")
    env = dict(os.environ, FOODCLIP_CACHE_DIR=os.path.join(args.workdir, "cache"))
    labels = os.path.join(ROOT, "labels", "korean.txt")
    photos = os.path.dirname(paths[0])

    # 1. Indexing against classify, same photos, alternating, best of 2.
    db = os.path.join(args.workdir, "photos.sqlite")
    best = {"index": 0.0, "classify": 0.0}
    for _ in range(2):
        for f in (db, db + "-wal", db + "-shm"):
            if os.path.exists(f):
                os.remove(f)
        _, _, out = timed([exe, "--model", ckpt, "index", photos, "--db", db], env)
        best["index"] = max(best["index"], rate(out.stderr))
        _, _, out = timed([exe, "--model", ckpt, "classify", photos, "--labels", labels, "-f", "jsonl"], env)
        best["classify"] = max(best["classify"], rate(out.stderr))
    print(f"index 48 photos: {best['index']:.2f} photos/s, classify {best['classify']:.2f} photos/s, "
          f"ratio {best['index'] / best['classify']:.2f}", flush=True)

    # 2. Re-index of 10,000 unchanged files.
    many = os.path.join(args.workdir, "many")
    tiny = os.path.join(ROOT, "tests", "fixtures", "tiny-openai")
    if not os.path.isdir(many):
        os.makedirs(many)
        src = os.path.join(ROOT, "tests", "fixtures", "images", "baseline.jpg")
        for i in range(10_000):
            sub = os.path.join(many, f"{i // 1000:02d}")
            os.makedirs(sub, exist_ok=True)
            shutil.copy(src, os.path.join(sub, f"{i:05d}.jpg"))
    many_db = os.path.join(args.workdir, "many.sqlite")
    timed([exe, "--model", tiny, "index", many, "--db", many_db], env)
    wall, peak, _ = timed([exe, "--model", tiny, "index", many, "--db", many_db], env)
    print(f"re-index of 10,000 unchanged files: {wall:.2f} s whole process, {peak / 1024:.0f} MiB", flush=True)

    # 3. A large synthetic index of the bench checkpoint's kind.
    big = os.path.join(args.workdir, f"big-{args.rows}.sqlite")
    if not os.path.exists(big):
        shutil.copy(db, big)
        con = sqlite3.connect(big)
        checkpoint, mode, source = con.execute(
            "SELECT checkpoint, mode, source FROM embeddings LIMIT 1").fetchone()
        rng = np.random.default_rng(0)
        for start in range(0, args.rows, 10_000):
            n = min(10_000, args.rows - start)
            vecs = rng.normal(size=(n, 512)).astype("<f4")
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            files, embs = [], []
            for i in range(n):
                k = start + i
                h = k.to_bytes(32, "little")
                files.append((f"/archive/day-{k // 2000:04d}/tray-{k:07d}.jpg".encode(), 100_000, k, h))
                embs.append((h, checkpoint, mode, source, 0, "", vecs[i].tobytes()))
            con.executemany("INSERT INTO files VALUES (?, ?, ?, ?)", files)
            con.executemany("INSERT INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?)", embs)
            con.commit()
        con.close()
    def search(database):
        cmd = [exe, "--model", ckpt, "search", "잡채", "--db", database, "--top", "10", "-f", "jsonl"]
        timed(cmd, env)  # the prompt cache, the page cache
        return min(timed(cmd, env)[:2] for _ in range(3))

    small, _ = search(db)
    wall, peak = search(big)
    print(f"search over {args.rows + 48:,} embeddings: {wall:.2f} s whole process, {peak / 1024:.0f} MiB; "
          f"over 48: {small:.2f} s, so the search itself takes about {wall - small:.2f} s", flush=True)
    score = [exe, "--model", ckpt, "classify", "--db", big, "--labels", labels, "-f", "jsonl", "-k", "1"]
    timed(score, env)
    wall, peak, _ = timed(score, env)
    print(f"classify --db of {args.rows + 48:,} embeddings, 150 labels: {wall:.2f} s whole process, "
          f"{peak / 1024:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
