"""split: manifest -> probe -> split_scenes -> <output>/clips.jsonl (+ clip files), errors/, run.json.

Also the `split` stage of other pipelines: `add_stage(ds, cfg)` puts split_scenes between probe
and prepare in `latentforge run` (`split.enabled: true` or `pipeline: all`), so one streaming job
goes split -> prepare -> encode.

Each source's clip list is written to `<output>/clips/_parts/<key>.jsonl` once the source is
done (key: a hash of the source, its span and every option that changes clips). A rerun skips
sources whose part exists (`pipeline: split` before probing; inside `run`, the stage rebuilds
the rows from the part without decoding), and clips.jsonl is assembled from the parts at the
end, in manifest order, so no line is ever duplicated.

Videos longer than `split.segment_seconds` are detected in segments: the stage's task hands
them to Ray as 1-CPU tasks and waits for them (a task blocked in `ray.get` gives its CPU back),
so a long video spreads over the cluster while the stream of clip rows stays in order.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

import ray
from ray.data import Datasink
from ray.data.datasource.datasink import WriteResult

from latentforge import __version__
from latentforge.cluster import connect
from latentforge.config import ConfigError, PipelineConfig
from latentforge.formats.manifests import read_manifest
from latentforge.formats.shards import ERRORS, _rows, sum_write_returns, write_error_shard, write_run_summary
from latentforge.operators import probe as probe_op
from latentforge.operators import scenes
from latentforge.operators.base import error_kind, is_error
from latentforge.rows import plain
from latentforge.storage import get_fs, join, write_bytes_atomic

log = logging.getLogger("latentforge")

PARTS = "clips/_parts"
MANIFEST = "clips.jsonl"


def options(cfg: PipelineConfig) -> dict[str, Any]:
    """The split section as plain data for the operator (and for part keys)."""
    return cfg.split.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# The stage


@ray.remote(num_cpus=scenes.RESOURCES.num_cpus, max_retries=3)
def _segment_task(call: dict[str, Any]) -> scenes.Detection:
    return scenes.detect_segment(**call)


def _ray_segments(calls: list[dict[str, Any]]) -> list[scenes.Detection]:
    """Segments of one video as parallel Ray tasks (the caller's CPU is lent out meanwhile)."""
    return ray.get([_segment_task.remote(call) for call in calls])


def _part_url(output: str, key: str) -> str:
    return join(output, PARTS, f"{key}.jsonl")


def _dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, default=plain)


def split_rows(
    row: dict[str, Any],
    opts: dict[str, Any],
    output: str,
    storage_options: dict[str, Any] | None = None,
    use_parts: bool = True,
    frame_request: scenes.FrameRequest | None = None,
) -> Iterator[dict[str, Any]]:
    """flat_map UDF: a probed row -> its clip rows, reusing or writing the source's part file.
    With a `frame_request` every row has `frames` / `_frames_for` (empty where prepare decodes)."""
    row = dict(row)
    given_key = row.pop("_split_key", None)
    if is_error(row):
        yield _with_frames(scenes.passthrough(row), frame_request)
        return
    key = given_key or scenes.row_part_key(row, opts)
    fs, part_path = get_fs(_part_url(output, key), storage_options)
    if use_parts and fs.exists(part_path):
        with fs.open(part_path, "rb") as f:
            records = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
        for clip in scenes.rows_from_part(row, records):
            yield _with_frames(clip, frame_request)
        return
    segments = _ray_segments if ray.is_initialized() else None
    produced: list[dict[str, Any]] = []
    for clip in scenes.split_video(row, opts, output, storage_options, segments, frame_request):
        produced.append({k: v for k, v in clip.items() if k != "frames"})
        yield _with_frames(clip, frame_request)
    if use_parts and produced and not any(is_error(r) for r in produced):
        text = "".join(_dumps(scenes.part_record(r)) + "\n" for r in produced)
        write_bytes_atomic(fs, part_path, text.encode())


def _with_frames(row: dict[str, Any], frame_request: scenes.FrameRequest | None) -> dict[str, Any]:
    if frame_request is not None:
        row.setdefault("frames", scenes.NO_FRAMES)
        row.setdefault(scenes.FRAMES_FOR, None)
    return row


def frame_request(cfg: PipelineConfig) -> scenes.FrameRequest | None:
    """What prepare will decode, so split_scenes can make it from its own decode (docs/scenes.md,
    "One decode per video"); None when it cannot: clip files, or `shared_decode_mb: 0`."""
    if cfg.split.mode != "virtual" or not cfg.split.shared_decode_mb:
        return None
    return scenes.FrameRequest(
        tuple(cfg.bucket_list()), cfg.prepare.target_fps, cfg.prepare.resize_filter, cfg.split.shared_decode_mb
    )


def add_stage(ds: Any, cfg: PipelineConfig) -> Any:
    """split_scenes inside another pipeline: one row per clip from here on."""
    return ds.flat_map(
        split_rows,
        fn_kwargs={
            "opts": options(cfg),
            "output": cfg.output,
            "storage_options": cfg.storage_options,
            "frame_request": frame_request(cfg),
        },
        num_cpus=scenes.RESOURCES.num_cpus,
    )


def _describe(cfg: PipelineConfig) -> str:
    s = cfg.split
    params = {
        "content": f"threshold {s.content.threshold:g}",
        "adaptive": f"adaptive_threshold {s.adaptive.adaptive_threshold:g}, min_content_val {s.adaptive.min_content_val:g}",
        "threshold": f"threshold {s.threshold.threshold:g}",
        "histogram": f"threshold {s.histogram.threshold:g}",
        "hash": f"threshold {s.hash.threshold:g}",
    }[s.detector]
    parts = [f"detect-{s.detector} ({params}, min_scene_len {s.min_scene_len}) on {s.detect_size}px frames"]
    filters = [
        f"{name} {getattr(s, name)}"
        for name in ("skip_start", "skip_end", "max_scene_len", "filter_shorter_than", "max_scenes")
        if getattr(s, name) is not None
    ]
    if filters:
        parts.append(", ".join(filters))
    if s.mode == "virtual":
        parts.append("mode virtual (spans only)")
    else:
        extra = f", crf {s.crf}, preset {s.preset}" if s.mode == "reencode" else " (cuts on keyframes)"
        parts.append(f"mode {s.mode}{extra} -> {join(cfg.output, 'clips')}/")
    return "; ".join(parts)


def plan_stages(cfg: PipelineConfig) -> list[Any]:
    from latentforge.pipelines.precompute import StagePlan

    segment = f"; videos over {cfg.split.segment_seconds:g} s in parallel segments" if cfg.split.segment_seconds else ""
    return [StagePlan("split_scenes", "flat_map", f"{scenes.RESOURCES.num_cpus:g} CPU/task{segment}", _describe(cfg))]


def plan(cfg: PipelineConfig, use_gpus: bool | None = None) -> list[Any]:
    """`pipeline: split`: the stages, without running them."""
    from latentforge.pipelines.precompute import StagePlan

    return [
        StagePlan("source", "driver", "-", f"read {cfg.input} (format: {cfg.input_format})"),
        StagePlan("probe", "map", f"{probe_op.RESOURCES.num_cpus:g} CPU/task", "container metadata via PyAV; unreadable media -> error rows"),
        *plan_stages(cfg),
        StagePlan("sink", "write", "-", f"{join(cfg.output, MANIFEST)}, {join(cfg.output, PARTS)}/ and {join(cfg.output, ERRORS)}/"),
    ]


# ---------------------------------------------------------------------------------------------
# The `split` pipeline


class SplitSink(Datasink):
    """Counts clip rows and stage costs; writes error rows to errors/ (clips are in the parts)."""

    def __init__(self, output: str, storage_options: dict[str, Any] | None = None):
        self.output = output
        self.storage_options = storage_options or {}
        self.result: dict[str, Any] = {}

    def get_name(self) -> str:
        return "latentforge[clips]"

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        counts: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        seconds: Counter[str] = Counter()
        decoded: Counter[str] = Counter()
        errors: list[dict[str, Any]] = []
        for row in _rows(blocks):
            for k, v in row.items():
                if k.startswith("_seconds_") and v:
                    seconds[k[len("_seconds_") :]] += float(v)
                elif k.startswith("_decoded_frames_") and v:
                    decoded[k[len("_decoded_frames_") :]] += int(v)
                elif k == "_source_frames_split" and v:
                    counts["source_frames"] += int(v)
            if is_error(row):
                errors.append(row)
                kinds[error_kind(row)] += 1
            elif row.get("media_type") == "image":
                counts["images_written"] += 1
            else:
                counts["clips_written"] += 1
        write_error_shard(self.output, errors, self.storage_options)
        seconds["write_clips"] += time.perf_counter() - t0
        return {"counts": dict(counts), "errors": dict(kinds), "seconds": dict(seconds), "decoded_frames": dict(decoded)}

    def on_write_complete(self, write_result: WriteResult) -> None:
        self.result = sum_write_returns(write_result.write_returns, ("counts", "errors", "seconds", "decoded_frames"))


def check_input(rows: list[dict[str, Any]], cfg: PipelineConfig) -> None:
    """Before the split stage runs inside another pipeline: the input's clip names are unique."""
    check_clip_names(rows, options(cfg))


def check_clip_names(rows: list[dict[str, Any]], opts: dict[str, Any]) -> None:
    """Clip files of different sources must not share names (the default uses the file stem)."""
    if opts["mode"] == "virtual" or "{hash" in opts["clip_name"] or "{start" in opts["clip_name"]:
        return
    seen: dict[str, tuple] = {}
    for row in rows:
        if is_error(row) or row.get("media_type") != "video":
            continue
        stem = os.path.splitext(os.path.basename(str(row["uri"]).rstrip("/")))[0]
        source = (row["uri"], row.get("start_frame"), row.get("end_frame"))
        if seen.setdefault(stem, source) != source:
            raise ConfigError(
                f"split.clip_name {opts['clip_name']!r}: two sources would write the same clip files "
                f"({seen[stem][0]} and {row['uri']} both have the stem {stem!r}); "
                "add {hash} to the name, e.g. clip_name: \"{stem}-{hash}-Scene-{scene:03d}\" under split: "
                "(quoted: YAML reads unquoted braces as a mapping)"
            )


def _relative(media_path: str, output: str) -> str:
    """Clip files under the output are listed relative to clips.jsonl (the folder can move)."""
    base = output.rstrip("/")
    if "://" not in base:
        base = os.path.abspath(base)
    if media_path.startswith(base + "/"):
        return media_path[len(base) + 1 :]
    return media_path


def _assemble(cfg: PipelineConfig, keys: list[str]) -> tuple[int, int]:
    """clips.jsonl from the parts of `keys`, in order; returns (lines, sources listed)."""
    so = cfg.storage_options
    fs, _ = get_fs(cfg.output, so)
    paths = [get_fs(_part_url(cfg.output, key), so)[1] for key in keys]
    contents = fs.cat(paths, on_error="omit") if paths else {}
    if not isinstance(contents, dict):
        contents = {paths[0]: contents}
    lines: list[str] = []
    sources = 0
    for path in paths:
        data = contents.get(path)
        if data is None:
            continue
        sources += 1
        for text in data.decode().splitlines():
            if text.strip():
                line = json.loads(text)["manifest"]
                line["media_path"] = _relative(line["media_path"], cfg.output)
                lines.append(_dumps(line))
    mfs, mpath = get_fs(join(cfg.output, MANIFEST), so)
    write_bytes_atomic(mfs, mpath, "".join(line + "\n" for line in lines).encode())
    return len(lines), sources


def _existing_parts(cfg: PipelineConfig) -> set[str]:
    fs, root = get_fs(join(cfg.output, PARTS), cfg.storage_options)
    if not fs.exists(root):
        return set()
    return {os.path.basename(p)[: -len(".jsonl")] for p in fs.ls(root, detail=False) if p.endswith(".jsonl") and "/.tmp-" not in p}


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """`pipeline: split`; returns the run summary also written to run.json."""
    from latentforge.pipelines.precompute import configure_data_context, provenance

    started = time.time()
    started_at = datetime.now(timezone.utc).isoformat()
    so = cfg.storage_options
    opts = options(cfg)
    rows = read_manifest(cfg.input, cfg.input_format, so)
    check_clip_names(rows, opts)
    connect(cfg.ray.address, cfg.ray.num_cpus)
    configure_data_context(cfg)

    keys: list[str] = []
    todo: list[dict[str, Any]] = []
    existing = _existing_parts(cfg)
    for row in rows:
        if is_error(row):
            todo.append(dict(row, _split_key=None))
            continue
        key = scenes.part_key(row["uri"], row.get("start_frame"), row.get("end_frame"), opts)
        if key not in keys:
            keys.append(key)
        if key not in existing:
            todo.append(dict(row, _split_key=key))
    skipped = len(rows) - len(todo)
    fs, errors_path = get_fs(join(cfg.output, ERRORS), so)
    if fs.exists(errors_path):
        fs.rm(errors_path, recursive=True)
    log.info("latentforge split: %d input rows, %d already split in %s", len(rows), skipped, cfg.output)

    sink = SplitSink(cfg.output, so)
    t_split = time.perf_counter()
    if todo:
        ds = ray.data.from_items(todo)
        ds = ds.map(probe_op.probe, fn_kwargs={"storage_options": so}, num_cpus=probe_op.RESOURCES.num_cpus)
        ds = add_stage(ds, cfg)
        ds.write_datasink(sink)
    split_wall = time.perf_counter() - t_split
    lines, listed = _assemble(cfg, keys)

    result = sink.result or {}
    written = result.get("counts", {})
    decoded = dict(result.get("decoded_frames", {}))
    source_frames = int(written.get("source_frames", 0))
    counts = {
        "input_rows": len(rows),
        "videos": sum(1 for r in rows if not is_error(r) and r.get("media_type") == "video"),
        "images": sum(1 for r in rows if not is_error(r) and r.get("media_type") == "image"),
        "sources_skipped_existing": skipped,
        "clips_written": int(written.get("clips_written", 0)),
        "images_written": int(written.get("images_written", 0)),
        "clips": lines,
        "sources_in_manifest": listed,
        "errors": sum(result.get("errors", {}).values()),
        "errors_by_reason": result.get("errors", {}),
    }
    summary = {
        "latentforge": __version__,
        "pipeline": "split",
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": round(time.time() - started, 3),
        "phase_wall_seconds": {"split": round(split_wall, 3)},
        "stage_seconds": {k: round(v, 3) for k, v in sorted(result.get("seconds", {}).items())},
        "decoded_frames": decoded,
        "source_frames": source_frames,
        "decoded_per_source_frame": round(sum(decoded.values()) / source_frames, 4) if source_frames else None,
        "counts": counts,
        "outputs": {
            "manifest": join(cfg.output, MANIFEST),
            "clips": join(cfg.output, "clips") if cfg.split.mode != "virtual" else None,
            "errors": join(cfg.output, ERRORS),
        },
        **provenance(cfg, _versions()),
    }
    write_run_summary(cfg.output, summary, so)
    return summary


def _versions() -> dict[str, str]:
    import platform

    import av
    import scenedetect

    return {
        "latentforge": __version__,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "av": av.__version__,
        "scenedetect": scenedetect.__version__,
    }

