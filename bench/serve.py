#!/usr/bin/env python3
"""`foodclip serve` under one client and under eight, against `foodclip classify` and the
transformers peer on the same checkpoint and photos.

    .venv/bin/python bench/serve.py [--workdir /tmp/foodclip-bench] [--photos 48] [--precision f32]

Uses bench.py's random ViT-B/32 and 12-MP tray photos, labels/korean.txt (150 classes), prompt
cache warm. Times, in one run:

1. `foodclip classify` of the photos (photos/s from its summary, best of 2) and its peak RSS;
2. the server, one client, one photo per request in sequence: latency median and p95 (the
   photo's bytes are read before the clock starts; each request is a raw JPEG body);
3. the server, 8 clients on keep-alive connections, each photo twice: photos/s, model calls,
   and the server's peak RSS (VmHWM) after the run;
4. the peer, one photo at a time (load_image, CLIPImageProcessor, model, softmax): latency
   median and p95.

Nothing is asserted; run it on an otherwise idle machine.
"""

import argparse
import http.client
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import PEER_TEXT, ROOT, rate, setup, timed_peak  # noqa: E402

PEER_LATENCY = r"""
import sys, json
ckpt, labels_file = sys.argv[1], sys.argv[2]
paths = [p for p in sys.stdin.read().split("\n") if p]
""" + PEER_TEXT + r"""
times = []
with torch.no_grad():
    for p in paths:
        start = time.perf_counter()
        px = processor(images=[load_image(p)], return_tensors="pt")["pixel_values"]
        emb = model.get_image_features(pixel_values=px)
        emb = getattr(emb, "pooler_output", emb)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        probs = (model.logit_scale.exp() * emb @ text.T).softmax(-1)
        names[int(probs[0].argmax())]
        times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def start_server(exe, ckpt, labels, precision, env, extra):
    proc = subprocess.Popen(
        [exe, "--model", ckpt, "--precision", precision, "serve", "--labels", labels, "--port", "0", *extra],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    port = None
    for line in proc.stderr:
        if "listening on http://" in line:
            port = int(line.split("listening on http://")[1].split()[0].rsplit(":", 1)[1])
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.1)


def post(conn, body):
    conn.request("POST", "/v1/classify?top_k=5", body=body, headers={"Content-Type": "image/jpeg"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"server answered {r.status}: {data[:200]}")
    return json.loads(data)


def health(port):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/healthz")
    return json.loads(c.getresponse().read())


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/foodclip-bench")
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--precision", default="f32")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--batch-wait", help="the server's --batch-wait (ms; default: its own)")
    args = ap.parse_args()
    ckpt, paths = setup(args.workdir, args.photos)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "foodclip"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "foodclip")
    env = dict(os.environ, FOODCLIP_CACHE_DIR=os.path.join(args.workdir, "cache"))
    labels = os.path.join(ROOT, "labels", "korean.txt")
    bodies = [open(p, "rb").read() for p in paths]

    # 1. classify, best of 2 (the first also warms the prompt cache).
    best, peak = 0.0, 0
    for _ in range(2):
        _, kib, out = timed_peak([exe, "--model", ckpt, "--precision", args.precision, "classify",
                                  *paths, "--labels", labels, "-f", "jsonl"], env=env)
        best, peak = max(best, rate(out.stderr)), max(peak, kib)
    print(f"classify ({args.precision}): {best:.2f} photos/s, peak RSS {peak / 1024:.0f} MiB", flush=True)

    # 2. one client, in sequence.
    extra = ["--batch-wait", args.batch_wait] if args.batch_wait else []
    proc, port = start_server(exe, ckpt, labels, args.precision, env, extra)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        post(conn, bodies[0])  # warm
        latencies = []
        for body in bodies:
            start = time.perf_counter()
            post(conn, body)
            latencies.append(time.perf_counter() - start)
        median, p95 = statistics.median(latencies), percentile(latencies, 95)
        print(f"serve, 1 client: median {median * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms "
              f"({1 / statistics.mean(latencies):.2f} photos/s)", flush=True)

        # 3. eight clients on keep-alive connections, each photo twice.
        work = queue.Queue()
        for _ in range(2):
            for body in bodies:
                work.put(body)
        total = work.qsize()
        before = health(port)

        def client():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                post(c, body)

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        after = health(port)
        calls = after["model_calls"] - before["model_calls"]
        served = total / wall
        rss = peak_rss_mib(proc.pid)
        print(f"serve, {args.clients} clients: {served:.2f} photos/s ({total} photos, {calls} model calls), "
              f"{served / best:.2f}x classify; server peak RSS {rss:.0f} MiB", flush=True)
    finally:
        proc.terminate()
        proc.wait()

    # 4. the peer, one photo at a time.
    out = subprocess.run([sys.executable, "-c", PEER_LATENCY, ckpt, labels], input="\n".join(paths) + "\n",
                         capture_output=True, text=True, check=True)
    peer = json.loads(out.stdout.strip().splitlines()[-1])[1:]  # the first warms up
    pm, pp = statistics.median(peer), percentile(peer, 95)
    print(f"transformers, one photo at a time: median {pm * 1000:.0f} ms, p95 {pp * 1000:.0f} ms; "
          f"serve's median latency is {pm / median:.2f}x faster", flush=True)


if __name__ == "__main__":
    main()
