"""Image-edit pairs -> ChronoEdit training data: 2-frame videos and a `metadata.csv`.

ChronoEdit (and DiffSynth-Studio's video datasets it trains with) reads a folder holding
`metadata.csv` with columns `key`, `video`, `prompt`, where each video has two frames: the
image before the edit, then the image after it. This module makes that folder from a list of
pairs:

    python -m latentforge.formats.chronoedit pairs.csv data/edits/      # or .json / .jsonl

`pairs.csv` has `before` and `after` image paths (aliases: source/target, input/output,
src/tgt; relative to the pairs file), optionally `key` and `prompt` (aliases instruction,
caption); other columns pass through. It writes

    data/edits/videos/<key>.mp4     the two frames, H.264 at qp 0 in yuv444p (lossless up to
                                    the RGB <-> YUV rounding; `--pix-fmt yuv420p` for players
                                    that need it, which halves the chroma resolution)
    data/edits/dataset.jsonl        an LTX-2 manifest of the videos (caption = the prompt, or
                                    null where a pair has none) for `pipeline: caption` with
                                    `caption.task: edit`
    data/edits/metadata.csv         ChronoEdit's manifest, when every pair has a prompt

Pairs without prompts are captioned with `caption.task: edit` (`cot: true` for ChronoEdit's
80-100 word reasoning prompts) and `caption.manifest: data/edits/metadata.csv`: the caption
pipeline writes ChronoEdit's columns when its manifest is named metadata.csv. The `after`
image is resized to the `before` image's size when they differ.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from latentforge.formats.pixels import rgb8

_BEFORE = ("before", "source", "input", "src", "image_before")
_AFTER = ("after", "target", "output", "tgt", "edited", "image_after")
_PROMPT = ("prompt", "instruction", "caption", "edit")


def read_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV / JSON list / JSONL pairs file with `before`, `after` (absolute paths),
    `key` (may be None) and `prompt` (None when absent or blank), other columns kept."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        records = list(csv.DictReader(io.StringIO(text, newline="")))
    elif path.suffix.lower() == ".json":
        records = json.loads(text)
    elif path.suffix.lower() == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        raise ValueError(f"{path}: expected a .csv, .json or .jsonl pairs file")
    base = path.parent
    pairs = []
    for i, rec in enumerate(records):
        b_col = next((k for k in _BEFORE if rec.get(k)), None)
        a_col = next((k for k in _AFTER if rec.get(k)), None)
        if b_col is None or a_col is None:
            raise ValueError(f"{path}: entry {i} needs a before and an after image (columns {_BEFORE[0]}/{_AFTER[0]})")
        before, after = str(rec[b_col]), str(rec[a_col])
        p_col = next((k for k in _PROMPT if k in rec), None)
        prompt = rec[p_col] if p_col and isinstance(rec[p_col], str) and rec[p_col].strip() else None
        pair = {k: v for k, v in rec.items() if k not in (b_col, a_col, p_col, "key")}
        pair.update(
            before=str((base / before).resolve()) if not os.path.isabs(before) else before,
            after=str((base / after).resolve()) if not os.path.isabs(after) else after,
            prompt=prompt.strip() if prompt else None,
            key=str(rec["key"]).strip() if rec.get("key") not in (None, "") else None,
        )
        pairs.append(pair)
    return pairs


def _rgb(path: str) -> Image.Image:
    with Image.open(path) as im:
        return rgb8(im)


def pair_video(before: str, after: str, dest: str | os.PathLike, fps: float = 16, pix_fmt: str = "yuv444p") -> Path:
    """Write a 2-frame H.264 mp4 (before, after) at quantiser 0; returns its path."""
    import av

    first = _rgb(before)
    second = _rgb(after)
    if second.size != first.size:
        second = second.resize(first.size, Image.Resampling.LANCZOS)
    w, h = first.size
    if pix_fmt == "yuv420p":  # 4:2:0 needs even sizes
        w, h = w // 2 * 2, h // 2 * 2
    frames = [np.ascontiguousarray(np.asarray(im)[:h, :w]) for im in (first, second)]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = {"qp": "0", "preset": "medium"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, dest)
    return dest


def _keys(pairs: list[dict[str, Any]]) -> list[str]:
    out, seen = [], set()
    for p in pairs:
        key = p.get("key") or Path(p["before"]).stem
        key = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") or "pair"
        candidate, n = key, 1
        while candidate in seen:
            candidate, n = f"{key}_{n}", n + 1
        seen.add(candidate)
        out.append(candidate)
    return out


def make_chronoedit_dataset(
    pairs: Iterable[dict[str, Any]], out_dir: str | os.PathLike, fps: float = 16, pix_fmt: str = "yuv444p"
) -> dict[str, Any]:
    """Pairs (see `read_pairs`) -> out_dir/videos/<key>.mp4, out_dir/dataset.jsonl and, when
    every pair has a prompt, out_dir/metadata.csv. Returns the paths and counts."""
    pairs = list(pairs)
    out = Path(out_dir)
    keys = _keys(pairs)
    lines, meta = [], []
    extra_cols: dict[str, None] = {}
    for key, p in zip(keys, pairs):
        rel = f"videos/{key}.mp4"
        pair_video(p["before"], p["after"], out / rel, fps=fps, pix_fmt=pix_fmt)
        extras = {k: v for k, v in p.items() if k not in ("before", "after", "prompt", "key")}
        extra_cols.update(dict.fromkeys(extras))
        lines.append({"caption": p["prompt"], "media_path": rel, "key": key, **extras})
        meta.append({"key": key, "video": rel, "prompt": p["prompt"], **extras})
    (out / "dataset.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    result: dict[str, Any] = {"videos": len(pairs), "dataset": str(out / "dataset.jsonl"), "missing_prompts": sum(1 for p in pairs if not p["prompt"])}
    if pairs and not result["missing_prompts"]:
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=["key", "video", "prompt", *extra_cols], lineterminator="\n")
        writer.writeheader()
        for row in meta:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        (out / "metadata.csv").write_text(buf.getvalue(), encoding="utf-8")
        result["metadata"] = str(out / "metadata.csv")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m latentforge.formats.chronoedit",
        description="Image-edit pairs -> 2-frame videos + metadata.csv (key, video, prompt) for ChronoEdit.",
    )
    parser.add_argument("pairs", help="CSV / JSON / JSONL with before, after[, key, prompt]")
    parser.add_argument("out_dir", help="folder for videos/, dataset.jsonl and metadata.csv")
    parser.add_argument("--fps", type=float, default=16, help="frame rate stored in the videos (default 16)")
    parser.add_argument("--pix-fmt", default="yuv444p", choices=["yuv444p", "yuv420p"])
    args = parser.parse_args(argv)
    result = make_chronoedit_dataset(read_pairs(args.pairs), args.out_dir, fps=args.fps, pix_fmt=args.pix_fmt)
    print(json.dumps(result, indent=2))
    if result["missing_prompts"]:
        print(
            f"{result['missing_prompts']} pair(s) have no prompt: caption them with pipeline: caption, caption.task: edit, "
            f"input: {result['dataset']}, caption.manifest: {Path(args.out_dir) / 'metadata.csv'}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
