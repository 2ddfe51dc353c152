"""The precompute pipeline on an embedded local Ray against a plain sequential loop.

Both sides get the same generated dataset (clips of several aspect ratios and lengths, one
image, an LTX-2 style dataset.jsonl where some captions repeat), the same buckets and the same
tiny random-weight model (`tiny-wan2.1` unless --model), built once before anything is timed.

- pipeline   latentforge.pipelines.run(cfg), which starts the embedded Ray as `latentforge run`
             does, with cfg = load_config(None, [], input=, output=, model=, buckets=) (+ --set ...).
             "end to end" = the whole run; "after ray.init" = without run.json's `ray_start`.
             Also printed: run.json's fixed cost (to the first latent row) and the seconds per
             clip after it.
- baseline   what trainers' preprocessing scripts do, one sample at a time in one process:
             load the VAE and text pipeline once (latentforge.models), then per manifest row:
             open with PyAV, pick the bucket from the stream size (latentforge.buckets), decode
             full-size RGB, resize (torch interpolate, bilinear + antialias) and center crop,
             VAE encode, encode the caption alone (operators.text.encode_captions, no dedup),
             torch.save the latent and the embedding into per-sample files.

The pipeline embeds each distinct caption once (6 for any --clips) and strips VLM openers; the
baseline embeds every row's caption as written. Speed-up = baseline seconds / pipeline seconds.

Each side runs in a fresh Python process, so both pay their own imports and model loads and the
driver's peak RSS (resource.getrusage) is its own; Ray worker processes are not in it. "process"
is that child's whole wall time (interpreter start, imports, ray.shutdown); "CPU s" is the CPU
time of the child and all its descendants (Ray's included, sampled with psutil). The last lines
say how much CPU other processes on the machine used meanwhile and how much the hypervisor stole
from this VM: figures taken while either is large are noise (both sides suffer, not equally: Ray
runs its workers at nice 15). The pipeline side also prints Ray Data's execution plan of each
pass, which shows what was fused into which actor.

With tiny models on 2 CPUs, Ray's start-up is a large share of a small run, so the ratio can be
below 1: run with larger --clips to see whether and where the lines cross. Nothing here asserts
on time.

    python benchmarks/bench_pipeline.py                    # 16 clips + 1 image, ~3 min on 2 cores
    python benchmarks/bench_pipeline.py --clips 48
    python benchmarks/bench_pipeline.py --set encode_video.max_actors=2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _machine import machine_busy_seconds, steal_seconds

DEFAULT_BUCKETS = "256x144x17;144x256x17;192x192x17;320x112x17"
# (width, height, fps) of the generated clips, cycled; lengths cycle through FRAMES.
SHAPES = [(640, 360, 24), (360, 640, 30), (480, 480, 25), (960, 336, 24), (854, 480, 30), (400, 720, 24)]
FRAMES = [24, 36, 48, 60]
CAPTIONS = [
    "The video shows a red square gliding over a warm gradient.",
    "A square drifts down a tall frame, lit from the side.",
    "A bright block moves right across a wide banner of colour.",
    "In this video, a small square crosses a calm field of colour.",
    "A pale square slides slowly over a dark background.",
    "A coloured square bounces diagonally across the frame.",
]


def make_dataset(folder: Path, clips: int) -> Path:
    """`clips` videos + one image and dataset.jsonl; captions repeat (6 distinct ones)."""
    from latentforge.sample_media import make_image, make_video

    lines = []
    for i in range(clips):
        w, h, fps = SHAPES[i % len(SHAPES)]
        name = f"clip{i:03d}_{w}x{h}.mp4"
        make_video(folder / name, w, h, FRAMES[i % len(FRAMES)], fps, cuts=(FRAMES[i % len(FRAMES)] // 2,))
        lines.append({"media_path": name, "caption": CAPTIONS[i % len(CAPTIONS)]})
    make_image(folder / "still.png", 512, 288, seed=3)
    lines.append({"media_path": "still.png", "caption": CAPTIONS[0]})
    manifest = folder / "dataset.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


class TreeCPU(threading.Thread):
    """CPU seconds of this process and all its descendants (Ray's raylet, workers and actors),
    sampled twice a second so that actors which exit before the end still count."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: dict[int, float] = {}
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.sample()

    def sample(self) -> None:
        import psutil

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                self.seen[proc.pid] = t.user + t.system
            except psutil.Error:
                pass

    def total(self) -> float:
        self.done.set()
        self.sample()
        return sum(self.seen.values())


# ----------------------------------------------------------------------------- the two sides


def run_pipeline(args) -> dict:
    import ray

    from latentforge.config import load_config
    from latentforge.pipelines import run

    cfg = load_config(None, list(args.set), input=args.manifest, output=args.out, model=args.model, buckets=args.buckets)
    cpu = TreeCPU()
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    summary = run(cfg)  # starts the embedded Ray, with its settings, as `latentforge run` does
    t2 = time.perf_counter()
    t1 = t0 + (summary.get("fixed_cost_seconds", {}).get("ray_start") or 0.0)
    cpu_seconds = cpu.total()
    ray.shutdown()
    c = summary["counts"]
    return {
        "end_to_end": t2 - t0,
        "after_init": t2 - t1,
        "ray_init": t1 - t0,
        "ray_shutdown": time.perf_counter() - t2,
        "phases": summary.get("phase_wall_seconds"),
        "stage_seconds": summary.get("stage_seconds", {}),
        "samples": c["latents_written"],
        "embeddings": c.get("embeddings_written", 0),
        "errors": c["errors"],
        "cpu": cpu_seconds,
        "fixed_cost": summary.get("fixed_cost_seconds", {}),
        "per_clip": per_clip_seconds(summary.get("timeline", {}), c["latents_written"]),
    }


def per_clip_seconds(timeline: dict, latents: int) -> float | None:
    """Seconds per latent once they flow: from the first latent row to the end of the last
    time bin with one (run.json's timeline; bins of 1 s on a short run), over the latents after
    the first. The fixed cost before the first row is run.json's `fixed_cost_seconds`."""
    bins = (timeline.get("rows") or {}).get("latents") or []
    first = (timeline.get("first_row_seconds") or {}).get("latents")
    if first is None or latents < 2 or not any(bins):
        return None
    last = (max(i for i, n in enumerate(bins) if n) + 1) * timeline["bin_seconds"]
    return max(0.0, last - first) / (latents - 1)


def run_baseline(args) -> dict:
    import av
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from latentforge.buckets import choose_bucket, cover_resize, parse_buckets
    from latentforge.models import get_preset, load_text_pipeline, load_vae
    from latentforge.operators.text import encode_captions

    cpu = TreeCPU()
    t0 = time.perf_counter()
    preset = get_preset(args.model)
    buckets = parse_buckets(args.buckets)
    vae = load_vae(preset)
    pipe = load_text_pipeline(preset)
    out = Path(args.out)
    (out / "latents").mkdir(parents=True)
    (out / "embeddings").mkdir()
    base = Path(args.manifest).parent
    samples = errors = 0
    for i, line in enumerate(Path(args.manifest).read_text().splitlines()):
        item = json.loads(line)
        path = base / item["media_path"]
        if path.suffix == ".png":
            clip = np.array(Image.open(path).convert("RGB"))[None]
            bucket = choose_bucket(buckets, clip.shape[2], clip.shape[1], 1, is_image=True)
        else:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                bucket = choose_bucket(buckets, stream.width, stream.height, stream.frames)
                if bucket is None:
                    errors += 1
                    continue
                frames = []
                for frame in container.decode(stream):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if len(frames) == bucket.frames:
                        break
            clip = np.stack(frames)
        plan = cover_resize(clip.shape[2], clip.shape[1], bucket.width, bucket.height)
        x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()  # [F, 3, H, W]
        x = F.interpolate(x, size=(plan.resize_height, plan.resize_width), mode="bilinear", antialias=True)
        x = x[:, :, plan.top : plan.top + bucket.height, plan.left : plan.left + bucket.width]
        x = (x.clamp(0, 255) / 127.5 - 1.0).permute(1, 0, 2, 3)[None]  # [1, 3, F, H, W]
        with torch.no_grad():
            latent = vae.encode(x).latent_dist.mean[0]
        emb, length, _ = encode_captions(pipe, preset, [item["caption"]], "cpu", torch.float32)[0]
        torch.save(latent.clone(), out / "latents" / f"{i:05d}.pt")
        torch.save({"embedding": emb, "length": length}, out / "embeddings" / f"{i:05d}.pt")
        samples += 1
    t = time.perf_counter() - t0
    return {"end_to_end": t, "after_init": t, "samples": samples, "embeddings": samples, "errors": errors, "cpu": cpu.total()}


# ----------------------------------------------------------------------------- harness


def child(args) -> None:
    result = (run_pipeline if args.child == "pipeline" else run_baseline)(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print("RESULT " + json.dumps(result))


def spawn(which: str, args, manifest: Path, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--manifest", str(manifest), "--out", str(tmp / f"out_{which}"),
           "--model", args.model, "--buckets", args.buckets]
    for s in args.set:
        cmd += ["--set", s]
    log = tmp / f"{which}.log"
    env = {**os.environ, "RAY_TMPDIR": str(tmp / "ray")}  # Ray's session files go with the temp dir
    t0, busy0, steal0 = time.perf_counter(), machine_busy_seconds(), steal_seconds()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
    wall = time.perf_counter() - t0
    busy = machine_busy_seconds() - busy0
    steal = steal_seconds() - steal0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{which} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(log.read_text().splitlines()[-30:]))
    result = json.loads(lines[-1][len("RESULT "):])
    # Ray Data logs each dataset's physical plan: shows which maps were fused into which actor.
    marker = "Execution plan of Dataset "
    plans = [line.split(marker, 1)[1].split(": ", 1)[-1] for line in log.read_text().splitlines() if marker in line]
    return {**result, "process": wall, "others": max(0.0, busy - result["cpu"]), "steal": steal, "plans": plans}  # others: the rest of the machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=16, help="generated video clips (plus one image)")
    ap.add_argument("--model", default="tiny-wan2.1", help="model preset (a tiny-* one: no network)")
    ap.add_argument("--buckets", default=DEFAULT_BUCKETS)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for the pipeline")
    ap.add_argument("--only", choices=["pipeline", "baseline"], help="run one side only")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data, outputs, logs) and print its path")
    ap.add_argument("--child", choices=["pipeline", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    tmp = Path(tempfile.mkdtemp(prefix="lfb-"))  # short: Ray's socket paths live under it
    os.environ.setdefault("LATENTFORGE_HOME", str(tmp / "home"))
    try:
        from latentforge.models import get_preset, model_root

        t0 = time.perf_counter()
        manifest = make_dataset(tmp / "data", args.clips)
        model_root(get_preset(args.model))  # build the tiny model now, outside both timings
        print(f"{args.clips} clips + 1 image, buckets {args.buckets}, model {args.model}; "
              f"data and model ready in {time.perf_counter() - t0:.1f}s; os.cpu_count() = {os.cpu_count()}")
        sides = [args.only] if args.only else ["baseline", "pipeline"]
        results = {which: spawn(which, args, manifest, tmp) for which in sides}

        print(f"\n{'':10s} {'samples':>7s} {'embeds':>6s} {'errors':>6s} {'end to end s':>12s} {'after ray.init s':>16s} "
              f"{'samples/s':>9s} {'process s':>9s} {'CPU s':>6s} {'driver peak RSS MB':>18s}")
        for which, r in results.items():
            print(f"{which:10s} {r['samples']:7d} {r['embeddings']:6d} {r['errors']:6d} {r['end_to_end']:12.1f} "
                  f"{r['after_init']:16.1f} {r['samples'] / r['end_to_end']:9.2f} {r['process']:9.1f} {r['cpu']:6.0f} {r['peak_rss_mb']:18.0f}")
        if "pipeline" in results:
            p = results["pipeline"]
            print(f"\npipeline: ray.init {p['ray_init']:.1f}s, video pass {p['phases']['video']:.1f}s, "
                  f"text pass {p['phases']['text']:.1f}s, ray.shutdown {p['ray_shutdown']:.1f}s")
            fixed = ", ".join(f"{k} {v:.1f}s" for k, v in p["fixed_cost"].items() if v is not None)
            per_clip = f"{p['per_clip']:.2f}s per clip after the first latent" if p["per_clip"] is not None else "per clip: n/a"
            print(f"pipeline fixed cost (run.json, from the run's start): {fixed}; then {per_clip}")
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in p["stage_seconds"].items())
            print(f"pipeline stage seconds (summed over rows, from run.json): {stages}")
            for i, plan in enumerate(p["plans"]):
                print(f"Ray Data execution plan {i + 1}: {plan}")
        if len(results) == 2:
            b, p = results["baseline"], results["pipeline"]
            print(f"speedup (baseline / pipeline): end to end {b['end_to_end'] / p['end_to_end']:.2f}x, "
                  f"after ray.init {b['end_to_end'] / p['after_init']:.2f}x, whole process {b['process'] / p['process']:.2f}x")
        print("CPU seconds used meanwhile by other processes on this machine (noise; 0 on a quiet one): "
              + ", ".join(f"{w} {r['others']:.0f}" for w, r in results.items()))
        print("CPU seconds stolen by the hypervisor meanwhile (noise too; 0 on a dedicated machine): "
              + ", ".join(f"{w} {r['steal']:.0f}" for w, r in results.items()))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
