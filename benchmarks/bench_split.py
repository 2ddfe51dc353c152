"""Scene-split speed and agreement: latentforge's split_scenes against PySceneDetect itself.

On the same files, in one run (timed repeats interleaved, best of N reported, median beside it):

- cli            `scenedetect -i FILE -o TMP detect-content list-scenes`, the command LTX-2's
                 trainer users run (a new Python process per file, as they run it). Its own
                 "Processed N frames in X seconds" figure (detection only, no start-up) is shown
                 as `cli (detection only)`.
- api            PySceneDetect's Python API in this process: open_video (OpenCV backend) +
                 SceneManager (its automatic downscale to 256 px) + ContentDetector.
- latentforge    `split_scenes` as a Ray task runs it, in this process: probe + detection (FFmpeg
                 makes 256 px frames directly, decoding in a background thread) + the clip
                 list. Defaults of `split:`.

Wall seconds (best of N) and CPU seconds (all threads; the CLI's from its child process) are
both shown: on a shared machine the CPU figure is the steadier measure of the work done.

Cuts agree when they are within +-1 frame of the CLI's. Then the whole `pipeline: split` on local
Ray (one Dataset job over all files; Ray started beforehand, as on a cluster) against the CLI run
once per file in a loop.

Inputs: the real clips of ../shared/media when present, and generated H.264 videos with known
cuts (latentforge.sample_media.scene_frame shots plus soft film grain, encoded at a camera-like
bitrate with B-frames, so decoding costs what footage costs), 1080p30 and 720p24 by default,
kept under --workdir between runs.

    python benchmarks/bench_split.py                    # ~5 min on 2 busy cores
    python benchmarks/bench_split.py --quick            # 1 repeat, one shorter generated video
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from latentforge.config import SplitConfig
from latentforge.operators import scenes
from latentforge.operators.probe import probe
from latentforge.sample_media import scene_frame

from _machine import SHARED_MEDIA, OtherLoad

REAL = ("tears_of_steel_10s.mp4", "flower.mp4", "friday.mp4", "bee.mp4")
REAL_CUTS = {"tears_of_steel_10s.mp4": [21, 65, 185], "flower.mp4": [], "friday.mp4": [], "bee.mp4": []}


# ----------------------------------------------------------------------------- inputs


def encode_grainy(path: Path, width: int, height: int, frames: int, fps: float, cuts: list[int]) -> None:
    """scene_frame shots plus soft film grain, encoded like camera footage: libx264 veryfast,
    crf 23, B-frames, a keyframe every 2 s (about 12 Mbit/s at 1080p30, 5 at 720p24)."""
    import cv2

    rng = np.random.default_rng(0)
    grain = []
    for _ in range(8):  # cycled: grain that moves, at a bitrate a camera would give
        field = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 0.7)
        grain.append((field / (field.std() + 1e-6) * 4)[..., None])
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast", "g": str(int(round(2 * fps)))}
        shot = 0
        for i in range(frames):
            if i in cuts:
                shot += 1
            image = np.clip(scene_frame(i, width, height, shot).astype(np.float32) + grain[i % 8], 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generated(workdir: Path, spec: str, seconds: float) -> tuple[Path, list[int]]:
    """WxH@fps -> an H.264 video with cuts every 2-7 s (seeded), made once and kept."""
    size, fps = spec.split("@")
    width, height = (int(v) for v in size.split("x"))
    fps_value = float(fps)
    frames = int(round(seconds * fps_value))
    rng = np.random.default_rng(width + frames)
    cuts, at = [], 0
    while True:
        at += int(rng.uniform(2, 7) * fps_value)
        if at >= frames - fps_value:
            break
        cuts.append(at)
    path = workdir / f"grain_{width}x{height}_{fps}fps_{seconds:g}s.mp4"
    if not path.exists():
        t0 = time.perf_counter()
        tmp = path.with_suffix(".tmp.mp4")
        encode_grainy(tmp, width, height, frames, fps_value, cuts)
        tmp.rename(path)
        mbits = path.stat().st_size * 8 / seconds / 1e6
        print(f"  generated {path.name} ({frames} frames, {len(cuts)} cuts, {mbits:.1f} Mbit/s) in {time.perf_counter() - t0:.0f}s")
    return path, cuts


# ----------------------------------------------------------------------------- methods
# Each returns (cut frames, seconds of its own detection figure or None).


def run_cli(path: Path) -> tuple[list[int], float | None]:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            ["scenedetect", "-i", str(path), "-o", out, "detect-content", "list-scenes"],
            capture_output=True, text=True, check=True,
        )
        found = re.search(r"Processed \d+ frames in ([\d.]+) seconds", proc.stdout + proc.stderr)
        csv_path = next(Path(out).glob("*-Scenes.csv"))
        with open(csv_path, newline="") as f:
            rows = list(csv.reader(f))
    header = rows[1]
    starts = [int(r[header.index("Start Frame")]) - 1 for r in rows[2:] if r]
    return starts[1:], float(found.group(1)) if found else None


def run_api(path: Path) -> tuple[list[int], None]:
    from scenedetect import ContentDetector, SceneManager, open_video

    video = open_video(str(path))
    manager = SceneManager()
    manager.add_detector(ContentDetector())
    manager.detect_scenes(video)
    return [s[0].frame_num for s in manager.get_scene_list()][1:], None


def run_latentforge(path: Path, **overrides) -> tuple[list[int], None]:
    opts = SplitConfig(**overrides).model_dump(mode="json")
    rows = list(scenes.split_video(probe({"uri": str(path), "media_type": "video"}), opts))
    if rows[0].get("error"):
        raise RuntimeError(rows[0]["error"])
    return [r["start_frame"] for r in rows][1:], None


METHODS = {
    "cli": run_cli,
    "api": run_api,
    "latentforge": run_latentforge,
}


def agree(found: list[int], reference: list[int]) -> int:
    left = list(reference)
    hits = 0
    for f in found:
        match = next((r for r in left if abs(r - f) <= 1), None)
        if match is not None:
            left.remove(match)
            hits += 1
    return hits


def describe(path: Path) -> str:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return f"{s.codec_context.name} {s.width}x{s.height} {float(s.average_rate):.2f} fps, {s.frames} frames"


def _cpu(children: bool) -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def per_file(paths: list[Path], truth: dict[str, list[int]], repeats: int) -> dict:
    times: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    cli_own: dict[str, list[float]] = {}
    cuts: dict[tuple[str, str], list[int]] = {}
    for name in METHODS:  # warm-up: imports, page cache
        METHODS[name](paths[0])
    for _ in range(repeats):
        for p in paths:
            for name, fn in METHODS.items():
                children = name == "cli"
                c0, t0 = _cpu(children), time.perf_counter()
                found, own = fn(p)
                times.setdefault((p.name, name), []).append(time.perf_counter() - t0)
                cpus.setdefault((p.name, name), []).append(_cpu(children) - c0)
                cuts[(p.name, name)] = found
                if own is not None:
                    cli_own.setdefault(p.name, []).append(own)
    print(
        f"\n{'file':30s} {'method':21s} {'best s':>7s} {'median s':>8s} {'frames/s':>9s} {'vs cli':>7s} "
        f"{'cpu s':>6s} {'cpu vs cli':>10s}  cuts (agree with cli / truth, +-1 frame)"
    )
    summary = {}
    totals: dict[str, float] = {}
    cpu_totals: dict[str, float] = {}
    frames_total = 0
    for p in paths:
        with av.open(str(p)) as c:
            frames = c.streams.video[0].frames
        frames_total += frames
        base = min(times[(p.name, "cli")])
        cpu_base = min(cpus[(p.name, "cli")])
        rows = [(name, times[(p.name, name)], cpus[(p.name, name)]) for name in METHODS]
        if p.name in cli_own:
            rows.insert(1, ("cli (detection only)", cli_own[p.name], None))
        for name, walls, cpu in rows:
            best, med = min(walls), statistics.median(walls)
            key = (p.name, "cli" if name == "cli (detection only)" else name)
            found = cuts[key]
            with_cli = agree(found, cuts[(p.name, "cli")])
            with_truth = agree(found, truth.get(p.name, [])) if p.name in truth else None
            truth_text = f", truth {with_truth}/{len(truth[p.name])}" if with_truth is not None else ""
            cpu_text = f"{min(cpu):6.2f} {cpu_base / min(cpu):9.2f}x" if cpu else f"{'':6s} {'':10s}"
            print(
                f"{p.name:30s} {name:21s} {best:7.3f} {med:8.3f} {frames / best:9.1f} {base / best:6.2f}x "
                f"{cpu_text}  {len(found)} ({with_cli}/{len(cuts[(p.name, 'cli')])} cli{truth_text})"
            )
            totals[name] = totals.get(name, 0.0) + best
            if cpu:
                cpu_totals[name] = cpu_totals.get(name, 0.0) + min(cpu)
            summary.setdefault(p.name, {})[name] = {"best_s": round(best, 4), "cuts": found}
    print(f"all files ({frames_total} frames), wall: " + ", ".join(f"{k} {v:.2f}s ({totals['cli'] / v:.2f}x)" for k, v in totals.items()))
    print("all files, cpu: " + ", ".join(f"{k} {v:.2f}s ({cpu_totals['cli'] / v:.2f}x)" for k, v in cpu_totals.items()))
    return summary


def whole_pipeline(paths: list[Path], workdir: Path, repeats: int) -> None:
    """`pipeline: split` over all files on local Ray vs the CLI once per file."""
    import ray

    from latentforge.config import load_config
    from latentforge import pipelines

    manifest = workdir / "bench_split.jsonl"
    manifest.write_text("".join(json.dumps({"media_path": str(p), "caption": None}) + "\n" for p in paths))
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    lf, cli = [], []
    for i in range(repeats):
        out = workdir / f"bench_split_out_{i}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = load_config(None, [], input=str(manifest), output=str(out), pipeline="split")
        t0 = time.perf_counter()
        summary = pipelines.run(cfg)
        lf.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for p in paths:
            run_cli(p)
        cli.append(time.perf_counter() - t0)
        shutil.rmtree(out, ignore_errors=True)
    print(
        f"\npipeline: split on local Ray ({os.cpu_count()} CPUs), {len(paths)} files, {summary['counts']['clips']} clips: "
        f"best {min(lf):.2f}s; the CLI once per file: best {min(cli):.2f}s -> {min(cli) / min(lf):.2f}x "
        f"(decoded {summary['decoded_per_source_frame']} frames per source frame)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default="1920x1080@30,1280x720@24", help="generated videos, WxH@fps, comma separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each generated video")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repeat, one 1080p video of 12 s, no pipeline run")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the whole-pipeline comparison")
    ap.add_argument("--real", default=SHARED_MEDIA)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "latentforge-bench-split"),
                    help="generated videos are kept here between runs")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.videos, args.seconds, args.no_pipeline = 1, "1920x1080@30", 12.0, True
    if shutil.which("scenedetect") is None:
        sys.exit("the scenedetect command is not on PATH (pip install scenedetect)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load = OtherLoad()

    paths, truth = [], {}
    real = Path(args.real)
    for name in REAL:
        if (real / name).exists():
            paths.append(real / name)
            truth[name] = REAL_CUTS[name]
    if not paths:
        print(f"(real clips not found at {real}; pass --real DIR to include them)")
    for spec in [v for v in args.videos.split(",") if v]:
        path, cuts = generated(workdir, spec, args.seconds)
        paths.append(path)
        truth[path.name] = cuts
    import scenedetect

    print(f"PySceneDetect {scenedetect.__version__}, PyAV {av.__version__}, {os.cpu_count()} CPUs, repeats {args.repeats}")
    for p in paths:
        print(f"  {p.name}: {describe(p)}")
    per_file(paths, truth, args.repeats)
    if not args.no_pipeline:
        whole_pipeline(paths, workdir, max(1, min(args.repeats, 2)))
    print(f"(meanwhile other processes used {load.others():.0f} CPU-s of {load.available():.0f} available)")


if __name__ == "__main__":
    main()
