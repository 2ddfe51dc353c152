"""The run report's numbers, computed on Ray (docs/report.md).

An output can hold millions of rows, so nothing here loads a table on the driver. A Ray task
lists each table's shards; scan tasks read groups of shards by column projection (ids, spans,
sizes; never the tensors) and each returns one small partial: counts per bucket, fixed-bin
histograms of clip length and aspect ratio, errors by kind with a few example files. The
driver adds the partials up (their size does not depend on the row count). Clips per source
video need all the uris of a table at once: each scan task leaves its uri counts in the object
store and one reduce task turns them into a histogram, as verify hands id sets between tasks.

The contact sheet re-decodes one sample per bucket in a Ray task with
`operators.frames.load_frames`, the very function `prepare` uses, on the latent row's uri, span
and bucket: the same resize and center crop the VAE was given.
"""

from __future__ import annotations

import io
import posixpath
from collections import Counter
from typing import Any

import numpy as np
import ray

from latentforge.formats.shards import EMBEDDINGS, ERRORS, LATENTS, read_run_summary, shard_bucket
from latentforge.rows import error_kind, redact_credentials
from latentforge.storage import get_fs, join

SHARDS_PER_TASK = 64
EXAMPLES = 3  # example files listed per error kind
# Fixed bins, so partial histograms from different tasks add up: clip length in seconds, aspect
# ratio as width / height (display orientation).
LENGTH_EDGES = np.geomspace(0.1, 3600.0, 47)
ASPECT_EDGES = np.geomspace(0.25, 4.0, 41)
SCAN_COLUMNS = (
    "sample_id", "uri", "media_type", "start_frame", "end_frame", "num_frames", "fps", "source_fps",
    "width", "height", "rotation", "error", "error_stage",
)
EXAMPLE_COLUMNS = ("sample_id", "uri", "media_type", "start_frame", "end_frame", "num_frames", "fps", "source_fps", "rotation", "bucket")


@ray.remote(num_cpus=0.25)
def list_shards(output: str, table: str, storage_options: dict | None) -> list[tuple[str, int]]:
    """(path, bytes) of the finished shards under one table (temporary files are not shards)."""
    fs, root = get_fs(join(output, table), storage_options)
    if not fs.exists(root):
        return []
    found = fs.find(root, detail=True)
    return sorted((p, int(info.get("size") or 0)) for p, info in found.items() if p.endswith(".parquet") and "/.tmp-" not in p)


def _histogram(values: list[float], edges: np.ndarray) -> list[int]:
    if not values:
        return [0] * (len(edges) - 1)
    clipped = np.clip(np.asarray(values, dtype=float), edges[0], edges[-1])
    return np.histogram(clipped, bins=edges)[0].astype(int).tolist()


def _length_and_aspect(row: dict[str, Any]) -> tuple[float | None, float | None]:
    """A row's span in seconds (None for an image) and its display aspect ratio."""
    aspect = None
    if row.get("width") and row.get("height"):
        w, h = float(row["width"]), float(row["height"])
        if int(row.get("rotation") or 0) % 180 == 90:
            w, h = h, w
        aspect = w / h
    length = None
    fps = row.get("source_fps") or row.get("fps")
    if row.get("media_type") != "image" and fps and row.get("end_frame") is not None and row.get("start_frame") is not None:
        length = (int(row["end_frame"]) - int(row["start_frame"])) / float(fps)
    return length, aspect


@ray.remote(num_cpus=0.25, num_returns=2)
def scan_shards(table: str, root: str, paths: list[tuple[str, int]], storage_options: dict | None) -> tuple[dict[str, Any], dict[str, int]]:
    """One group of a table's shards -> (partial summary, uri -> rows). Reads only the columns the
    report needs; embedding shards only their row count from the Parquet footer."""
    import pyarrow.parquet as pq

    fs, _ = get_fs(root, storage_options)
    buckets: dict[str, dict[str, Any]] = {}
    errors: dict[str, dict[str, Any]] = {}
    lengths: list[float] = []
    aspects: list[float] = []
    uris: Counter = Counter()
    part = {"rows": 0, "bytes": sum(size for _, size in paths), "shards": len(paths), "unreadable": 0, "images": 0, "frames": 0}
    for path, _ in paths:
        try:
            with fs.open(path, "rb") as f:
                if table.startswith(EMBEDDINGS):
                    part["rows"] += pq.ParquetFile(f).metadata.num_rows
                    continue
                names = set(pq.read_schema(f).names)
                rows = pq.read_table(f, columns=[c for c in SCAN_COLUMNS if c in names]).to_pylist()
        except Exception:  # noqa: BLE001 - `latentforge verify` names shards that do not open
            part["unreadable"] += 1
            continue
        bucket = shard_bucket(path)
        part["rows"] += len(rows)
        for row in rows:
            length, aspect = _length_and_aspect(row)
            if length is not None:
                lengths.append(length)
            if aspect is not None:
                aspects.append(aspect)
            part["images"] += row.get("media_type") == "image"
            if table == ERRORS:
                entry = errors.setdefault(error_kind(row), {"count": 0, "stage": row.get("error_stage") or "unknown", "examples": []})
                entry["count"] += 1
                if len(entry["examples"]) < EXAMPLES:
                    entry["examples"].append(redact_credentials(str(row.get("uri") or row.get("error") or "")))
                continue
            uris[str(row.get("uri"))] += 1
            part["frames"] += int(row.get("num_frames") or 0)
            entry = buckets.setdefault(bucket or "?", {"rows": 0, "example": None})
            entry["rows"] += 1
            example = {k: row.get(k) for k in EXAMPLE_COLUMNS if k != "bucket"} | {"bucket": bucket}
            if entry["example"] is None or str(row.get("sample_id")) < str(entry["example"]["sample_id"]):
                entry["example"] = example  # the smallest id: the same sample whatever the task split
    part.update(buckets=buckets, errors=errors, lengths=_histogram(lengths, LENGTH_EDGES), aspects=_histogram(aspects, ASPECT_EDGES))
    return part, dict(uris)


@ray.remote(num_cpus=0.25)
def clips_per_source(*uri_counts: dict[str, int]) -> dict[int, int]:
    """How many source files have n kept clips: {n: files}, over every scan task's uri counts."""
    total: Counter = Counter()
    for counts in uri_counts:
        total.update(counts)
    return dict(sorted(Counter(total.values()).items()))


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Partial summaries of one table added up (on the driver; each is small)."""
    out: dict[str, Any] = {"rows": 0, "bytes": 0, "shards": 0, "unreadable": 0, "images": 0, "frames": 0, "buckets": {}, "errors": {}}
    out["lengths"] = [0] * (len(LENGTH_EDGES) - 1)
    out["aspects"] = [0] * (len(ASPECT_EDGES) - 1)
    for p in parts:
        for key in ("rows", "bytes", "shards", "unreadable", "images", "frames"):
            out[key] += p[key]
        out["lengths"] = [a + b for a, b in zip(out["lengths"], p["lengths"])]
        out["aspects"] = [a + b for a, b in zip(out["aspects"], p["aspects"])]
        for name, entry in p["buckets"].items():
            mine = out["buckets"].setdefault(name, {"rows": 0, "example": None})
            mine["rows"] += entry["rows"]
            if mine["example"] is None or str(entry["example"]["sample_id"]) < str(mine["example"]["sample_id"]):
                mine["example"] = entry["example"]
        for kind, entry in p["errors"].items():
            mine = out["errors"].setdefault(kind, {"count": 0, "stage": entry["stage"], "examples": []})
            mine["count"] += entry["count"]
            mine["examples"] = (mine["examples"] + entry["examples"])[:EXAMPLES]
    out["buckets"] = dict(sorted(out["buckets"].items()))
    out["errors"] = dict(sorted(out["errors"].items(), key=lambda kv: (-kv[1]["count"], kv[0])))
    return out


def scan_table(output: str, table: str, storage_options: dict | None) -> tuple[dict[str, Any], list[Any]]:
    """One table on Ray: its merged summary and the object refs of the scan tasks' uri counts."""
    shards = ray.get(list_shards.remote(output, table, storage_options))
    root = join(output, table)
    refs = [scan_shards.remote(table, root, shards[i : i + SHARDS_PER_TASK], storage_options) for i in range(0, len(shards), SHARDS_PER_TASK)]
    return merge(ray.get([r[0] for r in refs])), [r[1] for r in refs]


@ray.remote(num_cpus=0.25)
def list_encoders(output: str, storage_options: dict | None) -> list[str]:
    fs, root = get_fs(join(output, EMBEDDINGS), storage_options)
    if not fs.exists(root):
        return []
    return sorted(posixpath.basename(p) for p in fs.ls(root, detail=False) if "encoder=" in posixpath.basename(p))


@ray.remote(num_cpus=0.25)
def output_bytes(output: str, storage_options: dict | None) -> int:
    fs, root = get_fs(output, storage_options)
    return int(fs.du(root)) if fs.exists(root) else 0


def collect(output: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Everything the report and `inspect` show that the shards hold, computed on Ray."""
    so = storage_options or {}
    size = output_bytes.remote(output, so)
    encoders = ray.get(list_encoders.remote(output, so))
    latents, uri_refs = scan_table(output, LATENTS, so)
    scenes = clips_per_source.remote(*uri_refs)
    errors, _ = scan_table(output, ERRORS, so)
    embeddings = {name.split("=", 1)[1]: scan_table(output, f"{EMBEDDINGS}/{name}", so)[0] for name in encoders}
    return {
        "output": output,
        "latents": latents,
        "errors": errors,
        "embeddings": {k: {"rows": v["rows"], "bytes": v["bytes"], "shards": v["shards"]} for k, v in embeddings.items()},
        "clips_per_source": {int(k): v for k, v in ray.get(scenes).items()},
        "bytes": ray.get(size),
        "run": read_run_summary(output, so) or {},
    }


# ---------------------------------------------------------------------------------------------
# Contact sheets


def strip_png(frames: np.ndarray, gap: int = 4, height: int = 160) -> bytes:
    """First, middle and last frame side by side (one frame for an image), as a PNG."""
    from PIL import Image

    picks = sorted({0, len(frames) // 2, len(frames) - 1})
    h, w = frames.shape[1], frames.shape[2]
    sheet = np.full((h, len(picks) * w + (len(picks) - 1) * gap, 3), 255, dtype=np.uint8)
    for i, index in enumerate(picks):
        sheet[:, i * (w + gap) : i * (w + gap) + w] = frames[index]
    image = Image.fromarray(sheet)
    if h < height:  # small buckets are scaled up (nearest: the pixels stay as the VAE saw them)
        scale = max(1, height // h)
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@ray.remote(num_cpus=1)
def contact_strip(example: dict[str, Any], target_fps: float | None, resize_filter: str, storage_options: dict | None) -> dict[str, Any]:
    """One bucket's tile: the sample's frames decoded and cropped by prepare's own `load_frames`."""
    from latentforge.operators.frames import load_frames

    row = dict(example)
    out = {"bucket": row["bucket"], "sample_id": row["sample_id"], "uri": redact_credentials(str(row["uri"])), "png": None, "error": None}
    try:
        made = load_frames(row, target_fps=target_fps, resize_filter=resize_filter, storage_options=storage_options)
        if made.get("error"):
            out["error"] = redact_credentials(str(made["error"]))
        else:
            out["png"] = strip_png(np.asarray(made["frames"]))
            out["frames"] = int(made["num_frames"])
    except Exception as e:  # noqa: BLE001 - a source gone since the run is noted, not fatal
        out["error"] = redact_credentials(f"{type(e).__name__}: {e}")[:300]
    return out


def contact_sheets(summary: dict[str, Any], storage_options: dict | None = None) -> list[dict[str, Any]]:
    """One tile per bucket (Ray tasks; only the small PNGs come back), in bucket order."""
    prepare = (summary.get("run", {}).get("config") or {}).get("prepare") or {}
    refs = [
        contact_strip.remote(entry["example"], prepare.get("target_fps"), prepare.get("resize_filter") or "area", storage_options or {})
        for entry in summary["latents"]["buckets"].values()
        if entry.get("example")
    ]
    return ray.get(refs)
