"""split: manifest -> probe -> split_scenes -> <output>/clips.jsonl (+ clip files), errors/, run.json.

Also the `split_scenes` stage of other pipelines (`STAGES`): between probe and bucketing in
`latentforge run` (`split.enabled: true` or `pipeline: all`), so one streaming job goes split ->
prepare -> encode.

Each source's clip list is written to `<output>/clips/_parts/<key>.jsonl` once the source is
done (key: a hash of the source, its span and every option that changes clips). A rerun skips
sources whose part exists (`pipeline: split` before probing; inside `run`, the stage rebuilds
the rows from the part without decoding), and clips.jsonl is assembled from the parts at the
end, in manifest order, so no line is ever duplicated.

Videos longer than `split.segment_seconds`, and videos that start while CPUs are idle (at least
twice `split.min_segment_seconds` long), are detected in segments: the stage's task hands them
to Ray as 1-CPU tasks and waits for them (a task blocked in `ray.get` gives its CPU back), so a
long video spreads over the cluster while the stream of clip rows stays in order.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from collections import Counter
from typing import Any, Iterable, Iterator

import ray

from latentforge.config import ConfigError, PipelineConfig
from latentforge.formats.shards import ERRORS
from latentforge.operators import scenes
from latentforge.pipelines.input import PROBE, first_task_seconds, input_counts, read_input, source
from latentforge.pipelines.outputs import id_set
from latentforge.pipelines.run_summary import decode_figures, seconds_of
from latentforge.pipelines.sinks import RowSink
from latentforge.pipelines.stages import LIGHT, Job, Stage, output_args
from latentforge.rows import is_error, plain
from latentforge.storage import get_fs, join, write_bytes_atomic

log = logging.getLogger("latentforge")

PARTS = "clips/_parts"
ORDER = "clips/_order"  # per read part of the input: its sources' part keys, in manifest order
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


def _idle_cpus() -> int:
    """CPUs of the cluster that no task or actor holds right now (Ray's resource view, updated
    about every 100 ms): a video starting while some wait is cut into that many more segments."""
    return int(ray.available_resources().get("CPU", 0))


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
    segments, idle = (_ray_segments, _idle_cpus) if ray.is_initialized() else (None, None)
    produced: list[dict[str, Any]] = []
    for clip in scenes.split_video(row, opts, output, storage_options, segments, frame_request, idle):
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
    "One decode per video"); None when nothing would use it (`pipeline: split` has no prepare)
    or it cannot: clip files, or `shared_decode_mb: 0`."""
    if cfg.pipeline == "split" or cfg.split.mode != "virtual" or not cfg.split.shared_decode_mb:
        return None
    return scenes.FrameRequest(
        tuple(cfg.bucket_list()), cfg.prepare.target_fps, cfg.prepare.resize_filter, cfg.split.shared_decode_mb
    )


def enabled(cfg: PipelineConfig) -> bool:
    """split_scenes runs in `pipeline: split` and `all`, and in others when `split.enabled`."""
    return cfg.pipeline in ("split", "all") or cfg.split.enabled


def _check_names(job: Job) -> None:
    """Clip file names of different sources must differ: checked by a Ray task that streams the
    input's names (never the driver), before any clip is written, when names could collide."""
    opts = options(job.cfg)
    source = job.state.get("source")
    if source is None or not names_can_collide(opts):
        return
    ray.get(_check_names_task.remote(source.map(_name_fields, num_cpus=LIGHT.num_cpus), opts))


def _name_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: plain(row.get(k)) for k in ("uri", "start_frame", "end_frame", "media_type", "error")}


@ray.remote(num_cpus=LIGHT.num_cpus)
def _check_names_task(names: Any, opts: dict[str, Any]) -> None:
    check_clip_names(names.iter_rows(), opts)


def _describe_stage(job: Job) -> str:
    segment = f"; videos over {job.cfg.split.segment_seconds:g} s in parallel segments" if job.cfg.split.segment_seconds else ""
    return _describe(job.cfg) + segment


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


STAGES = [
    Stage(
        "split_scenes",
        "flat_map",
        split_rows,
        _describe_stage,
        resources=scenes.RESOURCES,
        enabled=enabled,
        setup=_check_names,
        args=lambda job: {
            "opts": options(job.cfg),
            "output": job.cfg.output,
            "storage_options": job.cfg.storage_options,
            "frame_request": frame_request(job.cfg),
        },
    )
]


# ---------------------------------------------------------------------------------------------
# The `split` pipeline


class ClipSink(RowSink):
    """Counts clip rows (the clips themselves are in the parts) and writes error rows."""

    name = "clips"

    def take(self, row: dict[str, Any], counts: Counter) -> None:
        counts["images_written" if row.get("media_type") == "image" else "clips_written"] += 1


def names_can_collide(opts: dict[str, Any]) -> bool:
    """Whether two sources could write the same clip file names (the default uses the file stem)."""
    return not (opts["mode"] == "virtual" or "{hash" in opts["clip_name"] or "{start" in opts["clip_name"])


def check_clip_names(rows: Iterable[dict[str, Any]], opts: dict[str, Any]) -> None:
    """Clip files of different sources must not share names (the default uses the file stem)."""
    if not names_can_collide(opts):
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


def _order_url(output: str, index: int) -> str:
    return join(output, ORDER, f"{index:08d}.json")


def _assemble(cfg: PipelineConfig, read_parts: int) -> tuple[int, int]:
    """clips.jsonl from the parts, in manifest order: each read part of the input left the keys
    of its sources in order (`_keys_of_part`); they are streamed part by part into the file, so
    the driver holds one source's clips at a time. Returns (lines, sources listed)."""
    so = cfg.storage_options
    mfs, mpath = get_fs(join(cfg.output, MANIFEST), so)
    lines = sources = 0
    tmp = posixpath.join(posixpath.dirname(mpath), f".tmp-{uuid.uuid4().hex}-{MANIFEST}")
    mfs.makedirs(posixpath.dirname(mpath), exist_ok=True)
    with mfs.open(tmp, "wb") as out:
        for index in range(read_parts):
            ofs, opath = get_fs(_order_url(cfg.output, index), so)
            keys = json.loads(ofs.cat_file(opath)) if ofs.exists(opath) else []
            for key in keys:
                fs, path = get_fs(_part_url(cfg.output, key), so)
                try:
                    data = fs.cat_file(path)
                except FileNotFoundError:
                    continue  # the source failed: its error row is in errors/
                sources += 1
                for text in data.decode().splitlines():
                    if text.strip():
                        line = json.loads(text)["manifest"]
                        line["media_path"] = _relative(line["media_path"], cfg.output)
                        out.write((_dumps(line) + "\n").encode())
                        lines += 1
    mfs.mv(tmp, mpath)
    ofs, oroot = get_fs(join(cfg.output, ORDER), so)
    if ofs.exists(oroot):  # only this run's assembly reads them; the next run writes its own
        ofs.rm(oroot, recursive=True)
    return lines, sources


def _keys_of_part(rows: list[dict[str, Any]], part: dict[str, Any], opts: dict[str, Any], output: str, storage_options: dict, existing: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """In a read task: each source's part key; the part's keys in order go to an order file for
    clips.jsonl; sources whose part exists are dropped here (a rerun splits only what is missing)."""
    keys: list[str] = []
    todo: list[dict[str, Any]] = []
    for row in rows:
        if is_error(row):
            todo.append(dict(row, _split_key=None))
            continue
        key = scenes.part_key(row["uri"], row.get("start_frame"), row.get("end_frame"), opts)
        if key not in keys:
            keys.append(key)
        if key not in existing:
            todo.append(dict(row, _split_key=key))
    fs, path = get_fs(_order_url(output, int(part["index"])), storage_options)
    write_bytes_atomic(fs, path, json.dumps(keys).encode())
    return todo, {"sources_skipped_existing": len(rows) - len(todo)}


def _existing_parts(output: str, storage_options: dict | None) -> list[str]:
    fs, root = get_fs(join(output, PARTS), storage_options)
    if not fs.exists(root):
        return []
    return [os.path.basename(p)[: -len(".jsonl")] for p in fs.ls(root, detail=False) if p.endswith(".jsonl") and "/.tmp-" not in p]


def read_sources(job: Job) -> Any:
    """`pipeline: split`'s source: the manifest's rows, less the sources whose part exists."""
    cfg = job.cfg
    existing = id_set(_existing_parts, cfg.output, cfg.storage_options, unless_missing=join(cfg.output, PARTS), storage_options=cfg.storage_options)
    log.info("latentforge split: %d sources already split in %s", existing.size, cfg.output)
    keep = {"fn": _keys_of_part, "kwargs": {"opts": options(cfg), "output": cfg.output, "storage_options": cfg.storage_options, "existing": existing}}
    return read_input(job, keep=keep)


WRITE_CLIPS = Stage(
    "write_clips",
    "write",
    ClipSink,
    lambda job: f"{join(job.cfg.output, MANIFEST)}, {join(job.cfg.output, PARTS)}/ and {join(job.cfg.output, ERRORS)}/",
    args=output_args,
)

PIPELINE = [source(read_sources, phase="split"), PROBE, *STAGES, WRITE_CLIPS]


def summarize(job: Job) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Assemble clips.jsonl from the parts, then run.json's fields."""
    cfg = job.cfg
    lines, listed = _assemble(cfg, job.state.get("read_parts", 0))
    read = input_counts(job)
    result = job.results.get("write_clips", {})
    written = result.get("counts", {})
    decoded = dict(result.get("decoded_frames", {}))
    errors = result.get("errors", {})
    counts = {
        "input_rows": read.get("input_rows", 0),
        "videos": read.get("videos", 0),
        "images": read.get("images", 0),
        "sources_skipped_existing": read.get("sources_skipped_existing", 0),
        "clips_written": int(written.get("clips_written", 0)),
        "images_written": int(written.get("images_written", 0)),
        "clips": lines,
        "sources_in_manifest": listed,
        "errors": sum(errors.values()),
        "errors_by_reason": errors,
    }
    fields = {
        "pipeline": "split",
        "first_task_seconds": first_task_seconds(job),
        "stage_seconds": seconds_of(result),
        "decoded_frames": decoded,
        **decode_figures(decoded, int(written.get("source_frames", 0))),
        "counts": counts,
        "outputs": {
            "manifest": join(cfg.output, MANIFEST),
            "clips": join(cfg.output, "clips") if cfg.split.mode != "virtual" else None,
            "errors": join(cfg.output, ERRORS),
        },
    }
    return fields, ("av", "scenedetect")
