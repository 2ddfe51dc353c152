"""The run report's figures: matplotlib (Agg backend, no display), each returned as PNG bytes.

Every function takes the small summary `report.collect` made (plus run.json inside it) and
returns None when there is nothing to draw, so a report of a run without errors, scenes or a
timeline simply has fewer figures.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen before pyplot loads
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402

from latentforge.pipelines.report import ASPECT_EDGES, LENGTH_EDGES  # noqa: E402

WIDTH = 7.5
COLORS = {"all": "#9aa5b1", "kept": "#2f6fdf", "error": "#d64545"}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _barh(labels: list[str], values: list[float], title: str, xlabel: str, color: str = COLORS["kept"], fmt: str = "{:g}") -> bytes:
    fig, ax = plt.subplots(figsize=(WIDTH, 0.9 + 0.35 * max(1, len(labels))))
    y = np.arange(len(labels))
    ax.barh(y, values, color=color)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    for yi, v in zip(y, values):
        ax.text(v, yi, " " + fmt.format(v), va="center", fontsize=8)
    ax.margins(x=0.15)
    if fmt == "{:.0f}":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(fig)


def buckets(summary: dict[str, Any]) -> bytes | None:
    rows = summary["latents"]["buckets"]
    if not rows:
        return None
    return _barh(list(rows), [e["rows"] for e in rows.values()], "Samples per bucket", "latent rows", fmt="{:.0f}")


LENGTH_TICKS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
ASPECT_TICKS = (0.25, 0.33, 0.5, 0.56, 0.75, 1, 1.33, 1.78, 2, 3, 4)


def _two_histograms(edges: np.ndarray, all_counts: list[int], kept: list[int], title: str, xlabel: str, ticks: tuple[float, ...], marks: list[float] = ()) -> bytes | None:
    if not sum(all_counts):
        return None
    fig, ax = plt.subplots(figsize=(WIDTH, 3.0))
    widths = np.diff(edges)
    ax.bar(edges[:-1], all_counts, width=widths, align="edge", color=COLORS["all"], label="sources (latents + errors)")
    ax.bar(edges[:-1], kept, width=widths, align="edge", color=COLORS["kept"], alpha=0.85, label="kept (latents)")
    for m in marks:
        ax.axvline(m, color="#444", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    nonzero = [i for i, (a, b) in enumerate(zip(all_counts, kept)) if a or b]
    low, high = edges[max(0, nonzero[0] - 1)], edges[min(len(edges) - 1, nonzero[-1] + 2)]
    ax.set_xlim(low, high)
    ax.set_xticks([t for t in ticks if low <= t <= high])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def _sum(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b)]


def lengths(summary: dict[str, Any]) -> bytes | None:
    lat, err = summary["latents"], summary["errors"]
    return _two_histograms(LENGTH_EDGES, _sum(lat["lengths"], err["lengths"]), lat["lengths"], "Clip length (videos)", "seconds of the span (log)", LENGTH_TICKS)


def aspects(summary: dict[str, Any]) -> bytes | None:
    lat, err = summary["latents"], summary["errors"]
    marks = []
    for name in lat["buckets"]:
        try:
            w, h = (int(v) for v in name.split("x")[:2])
            marks.append(w / h)
        except ValueError:
            continue
    return _two_histograms(ASPECT_EDGES, _sum(lat["aspects"], err["aspects"]), lat["aspects"], "Aspect ratio (dashed: the buckets')", "width / height (log)", ASPECT_TICKS, marks)


def scenes(summary: dict[str, Any]) -> bytes | None:
    hist = summary.get("clips_per_source") or {}
    if not hist:
        return None
    fig, ax = plt.subplots(figsize=(WIDTH, 2.8))
    x = np.arange(len(hist))
    ax.bar(x, list(hist.values()), color=COLORS["kept"])
    ax.set_xticks(x, [str(k) for k in hist])
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("kept clips (scenes) per source file")
    ax.set_ylabel("source files")
    ax.set_title("Scenes per source video")
    return _png(fig)


def errors(summary: dict[str, Any]) -> bytes | None:
    kinds = summary["errors"]["errors"]
    if not kinds:
        return None
    return _barh(list(kinds), [e["count"] for e in kinds.values()], "Errors by stage and kind", "rows", COLORS["error"], "{:.0f}")


def stage_seconds(summary: dict[str, Any]) -> bytes | None:
    seconds = summary["run"].get("stage_seconds") or {}
    if not seconds:
        return None
    items = sorted(seconds.items(), key=lambda kv: -kv[1])
    return _barh([k for k, _ in items], [v for _, v in items], "Busy time per stage (summed over workers)", "seconds", fmt="{:.2f}")


def wall_time(summary: dict[str, Any]) -> bytes | None:
    """Where the wall time went: each pass (video, text, export), and the rest (Ray's start,
    checks before it, the summary). run.json's first_task_seconds is in the report's table."""
    run = summary["run"]
    wall = run.get("wall_seconds")
    if not wall:
        return None
    phases = run.get("phase_wall_seconds") or {}
    parts = [(f"pass: {k}", float(v)) for k, v in phases.items() if v]
    parts.insert(0, ("Ray start, checks, summary", max(0.0, float(wall) - sum(v for _, v in parts))))
    fig, ax = plt.subplots(figsize=(WIDTH, 2.2))
    left = 0.0
    cmap = plt.get_cmap("tab10")
    for i, (name, value) in enumerate(parts):
        ax.barh([0], [value], left=left, color=cmap(i % 10), label=f"{name}: {value:.1f}s")
        left += value
    ax.set_yticks([])
    ax.set_title(f"Where the wall time went ({float(wall):.1f}s; x: seconds)")
    ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    return _png(fig)


def throughput(summary: dict[str, Any]) -> bytes | None:
    timeline = summary["run"].get("timeline") or {}
    rows = timeline.get("rows") or {}
    step = float(timeline.get("bin_seconds") or 0)
    if not rows or not step:
        return None
    fig, ax = plt.subplots(figsize=(WIDTH, 2.8))
    for name, counts in rows.items():
        t = (np.arange(len(counts)) + 0.5) * step
        ax.step(t, np.asarray(counts, dtype=float) / step, where="mid", label=name)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("rows / s written")
    ax.set_title(f"Throughput over time ({step:g}s bins)")
    ax.legend(fontsize=8)
    return _png(fig)


def decoding(summary: dict[str, Any]) -> bytes | None:
    run = summary["run"]
    decoded = run.get("decoded_frames") or {}
    if not decoded:
        return None
    labels = [f"decoded by {k}" for k in decoded] + ["frames encoded (latents)"]
    values = [float(v) for v in decoded.values()] + [float(summary["latents"]["frames"])]
    if run.get("source_frames"):
        labels.append("source frames (split videos)")
        values.append(float(run["source_frames"]))
    return _barh(labels, values, "Decoded frames", "frames", fmt="{:.0f}")


FIGURES = {
    "buckets": buckets,
    "clip_length": lengths,
    "aspect_ratio": aspects,
    "scenes_per_source": scenes,
    "errors": errors,
    "stage_seconds": stage_seconds,
    "throughput": throughput,
    "wall_time": wall_time,
    "decoded_frames": decoding,
}


def render_all(summary: dict[str, Any]) -> dict[str, bytes]:
    """name -> PNG bytes of every figure that has something to show."""
    out = {}
    for name, fn in FIGURES.items():
        png = fn(summary)
        if png is not None:
            out[name] = png
    return out
