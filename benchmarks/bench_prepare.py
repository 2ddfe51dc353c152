"""Prepare-stage throughput: latentforge's decode + resize + crop against plain PyAV.

What is compared, on the same files and the same first F frames of each:

- baseline        plain PyAV (default decoder threading): decode, ONE `frame.to_ndarray(width,
                  height, format="rgb24", interpolation="AREA")` (--filter) to the cover size,
                  numpy center crop: the least work that gives the bucket's frames.
- baseline AUTO   the same with `stream.thread_type = "AUTO"` (frame threads), as latentforge
                  sets: latentforge vs this row is its own overhead (should be ~1.0), this row
                  vs the first is what the threading choice buys.
- latentforge     `load_frames(assign_bucket(probe(row), buckets))`, timed with and without probe.
- naive torch     what trainers' scripts often do: decode full-size RGB, then
                  `torch.nn.functional.interpolate(bilinear, antialias)` on the clip, then crop.
- naive PIL       full-size RGB, then `PIL.Image.resize(BOX)` per frame, then crop.

The warm-up pass checks that both baselines give byte-identical frames to latentforge's (same
work); the naive methods resize differently and only match in shape.

Frames/s counts output frames (F per clip), from the best of the repeats (the least disturbed
by other work on the machine); the median is shown beside it. "CPU ms/frame" is this process's
CPU time (all its threads, best repeat): it moves far less than wall time when other work shares
the machine, but it cannot show what threading wins in wall time. The script also prints how
much CPU other processes used meanwhile: a figure from a busy machine is noise.

Inputs: H.264 clips made by latentforge.sample_media.make_video (synthetic content: flat colour
and a moving square, which decodes far faster than camera footage, so resizing weighs more),
plus, when found, real clips from ../shared/media (bee.mp4 1280x720 and tears_of_steel_10s.mp4
640x360, i.e. down- and upscaling), reported separately.

    python benchmarks/bench_prepare.py                  # ~1.5 min on 2 quiet cores
    python benchmarks/bench_prepare.py --seconds 6 --videos 1920x1080@30,3840x2160@25 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from latentforge.buckets import BucketError, cover_resize, parse_bucket, validate_buckets
from latentforge.models import get_preset
from latentforge.operators.frames import assign_bucket, load_frames
from latentforge.operators.probe import probe
from latentforge.sample_media import make_video

from _machine import SHARED_MEDIA, machine_busy_seconds, own_cpu_seconds

REAL_CLIPS = ("bee.mp4", "tears_of_steel_10s.mp4")


# ----------------------------------------------------------------------------- methods
# Each takes (path, bucket) and returns uint8 [F, H, W, 3]: the first F frames, covered + cropped.


def _decode(path, thread_type=None):
    container = av.open(str(path))
    stream = container.streams.video[0]
    if thread_type:
        stream.thread_type = thread_type
    return container, container.decode(stream)


FILTER = "area"  # --filter: the scaler of the baselines and of latentforge (its prepare.resize_filter)


def baseline(path, bucket, thread_type=None):
    container, frames = _decode(path, thread_type)
    out, plan = [], None
    with container:
        for frame in frames:
            plan = plan or cover_resize(frame.width, frame.height, bucket.width, bucket.height)
            rgb = frame.to_ndarray(
                width=plan.resize_width, height=plan.resize_height, format="rgb24", interpolation=FILTER.upper()
            )
            out.append(rgb[plan.top : plan.top + bucket.height, plan.left : plan.left + bucket.width])
            if len(out) == bucket.frames:
                break
    return np.stack(out)


def baseline_auto(path, bucket):
    return baseline(path, bucket, "AUTO")


def _full_rgb(path, n):
    container, frames = _decode(path)
    out = []
    with container:
        for frame in frames:
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == n:
                break
    return np.stack(out)


def naive_torch(path, bucket):
    clip = _full_rgb(path, bucket.frames)
    plan = cover_resize(clip.shape[2], clip.shape[1], bucket.width, bucket.height)
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(plan.resize_height, plan.resize_width), mode="bilinear", antialias=True)
    x = x[:, :, plan.top : plan.top + bucket.height, plan.left : plan.left + bucket.width]
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def naive_pil(path, bucket):
    clip = _full_rgb(path, bucket.frames)
    plan = cover_resize(clip.shape[2], clip.shape[1], bucket.width, bucket.height)
    box = (plan.left, plan.top, plan.left + bucket.width, plan.top + bucket.height)
    size = (plan.resize_width, plan.resize_height)
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BOX).crop(box)) for f in clip])


def _row(path):
    return {"uri": str(path), "media_type": "video", "caption": None}


def latentforge_load(path, bucket, _rows={}):
    key = (str(path), str(bucket))
    if key not in _rows:  # probe + bucket choice once, outside the timing
        _rows[key] = assign_bucket(probe(_row(path)), [bucket])
    return load_frames(_rows[key], resize_filter=FILTER)["frames"]


def latentforge_probe_load(path, bucket):
    return load_frames(assign_bucket(probe(_row(path)), [bucket]), resize_filter=FILTER)["frames"]


METHODS = [
    ("baseline: PyAV + 1 reformat + crop", baseline),
    ("baseline, thread_type=AUTO", baseline_auto),
    ("latentforge load_frames", latentforge_load),
    ("latentforge probe+bucket+load", latentforge_probe_load),
    ("naive: full RGB + torch interpolate", naive_torch),
    ("naive: full RGB + PIL resize", naive_pil),
]


# ----------------------------------------------------------------------------- harness


def report(title, paths, bucket, repeats):
    print(f"\n{title}: {len(paths)} clip(s), first {bucket.frames} frames each -> {bucket.width}x{bucket.height}")
    for p in paths:
        with av.open(str(p)) as c:
            s = c.streams.video[0]
            print(f"  {p.name}: {s.codec_context.name} {s.width}x{s.height} {float(s.average_rate):.2f} fps, {s.frames} frames")
    # Warm-up pass, which also checks the output (see the module docstring).
    frames = dict.fromkeys((name for name, _ in METHODS), 0)
    same = True
    for p in paths:
        ref = latentforge_load(p, bucket)
        for name, fn in METHODS:
            got = fn(p, bucket)
            assert got.shape == ref.shape, f"{name} on {p.name}: shape {got.shape} vs {ref.shape}"
            if name.startswith("baseline") and not np.array_equal(got, ref):
                print(f"  note: {name} differs from latentforge on {p.name}")
                same = False
            frames[name] += len(got)
    if same:
        print("  (checked: the baselines' frames are byte-identical to latentforge's)")
    # Repeats are interleaved (method A, B, ..., A, B, ...) so a burst of load elsewhere on the
    # machine spreads over all methods instead of hitting one.
    times = {name: [] for name, _ in METHODS}
    cpu = {name: [] for name, _ in METHODS}
    start, busy0, cpu0 = time.perf_counter(), machine_busy_seconds(), own_cpu_seconds()
    for _ in range(repeats):
        for name, fn in METHODS:
            t0, c0 = time.perf_counter(), time.process_time()
            for p in paths:
                fn(p, bucket)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    print(f"{'method':38s} {'frames':>6s} {'best s':>7s} {'median s':>8s} {'frames/s':>9s} {'vs baseline':>11s} "
          f"{'CPU ms/frame':>12s}")
    base = None
    for name, _ in METHODS:
        best, med = min(times[name]), statistics.median(times[name])
        fps = frames[name] / best
        base = base or fps
        cpu_ms = 1000 * min(cpu[name]) / frames[name]
        print(f"{name:38s} {frames[name]:6d} {best:7.3f} {med:8.3f} {fps:9.1f} {fps / base:10.2f}x {cpu_ms:12.1f}")
    others = max(0.0, machine_busy_seconds() - busy0 - (own_cpu_seconds() - cpu0))
    print(f"(meanwhile other processes used {others:.1f} CPU-s of {os.cpu_count() * (time.perf_counter() - start):.0f} available)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bucket", default="832x480x49", help="WxHxF; checked against Wan 2.1 rules (x16, F=4k+1)")
    ap.add_argument("--videos", default="1280x720@24,1920x1080@30", help="generated clips, WxH@fps, comma separated")
    ap.add_argument("--seconds", type=float, default=2.1, help="length of each generated clip")
    ap.add_argument("--filter", default="area", choices=["area", "bilinear", "bicubic", "lanczos"],
                    help="FFmpeg scaler of the baselines and latentforge (latentforge's default: area)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per method (interleaved)")
    ap.add_argument("--real", default=SHARED_MEDIA,
                    help="folder with the real clips (%s); skipped when absent; '' to skip" % ", ".join(REAL_CLIPS))
    ap.add_argument("--workdir", help="where to write the generated clips (kept); default: a temp dir, removed")
    args = ap.parse_args()

    global FILTER
    FILTER = args.filter
    bucket = parse_bucket(args.bucket)
    wan = get_preset("wan2.1")
    try:
        validate_buckets([bucket], wan.spatial_multiple, wan.frame_modulus, wan.frame_remainder, wan.name)
    except BucketError as e:
        ap.error(str(e))
    tmp = Path(tempfile.mkdtemp(prefix="lf-bench-prepare-"))
    os.environ.setdefault("LATENTFORGE_HOME", str(tmp / "home"))  # no models are loaded here
    workdir = Path(args.workdir) if args.workdir else tmp
    try:
        generated = []
        t0 = time.perf_counter()
        for spec in args.videos.split(","):
            size, fps = spec.strip().split("@")
            w, h = (int(v) for v in size.split("x"))
            n = max(bucket.frames, int(round(float(fps) * args.seconds)))
            path = workdir / f"gen_{w}x{h}_{fps}fps.mp4"
            if not path.exists():
                make_video(path, w, h, n, float(fps))
            generated.append(path)
        print(f"generated {len(generated)} clip(s) in {time.perf_counter() - t0:.1f}s under {workdir}")
        print(f"torch threads {torch.get_num_threads()}, os.cpu_count() {os.cpu_count()}, PyAV {av.__version__}, scaler {FILTER}")
        report("generated H.264 (synthetic content)", generated, bucket, args.repeats)
        real = [Path(args.real) / n for n in REAL_CLIPS] if args.real else []
        real = [p for p in real if p.exists()]
        if real:
            report("real footage", real, bucket, args.repeats)
        else:
            print("\n(real clips not found; pass --real DIR to include them)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
