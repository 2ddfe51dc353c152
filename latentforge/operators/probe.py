"""probe: container metadata per row, so bucket choice needs no decode.

Unreadable media (missing, corrupt, no video stream) becomes an error row naming the file and
the reason; the run goes on.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Iterator

import av
from PIL import Image, ImageOps

from latentforge.operators.base import Resources
from latentforge.operators.frame_clock import stream_rate
from latentforge.operators.time_limit import SampleTimeout, within
from latentforge.rows import error_row, is_error
from latentforge.storage import get_fs, is_local, open_input, split_tar_url

RESOURCES = Resources(num_cpus=1)

STAGE = "probe"
# Every row leaves probe with these keys (None where unknown): rows become one Arrow table.
PROBE_COLUMNS = (
    "fps", "source_frames", "width", "height", "rotation", "has_audio",
    "start_frame", "end_frame", "num_frames", "error", "error_stage",
)


@contextmanager
def open_media(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[Any]:
    """A local path as itself, a remote URL or a tar member as a seekable file object (PyAV
    and PIL take both)."""
    if split_tar_url(uri) is None:
        fs, path = get_fs(uri, storage_options)
        if is_local(fs):
            yield path
            return
    f = open_input(uri, storage_options)
    try:
        yield f
    finally:
        f.close()


def probe_video(source: Any) -> dict[str, Any]:
    with av.open(source) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream_rate(stream))  # the frame clock's rate: a row's fps numbers its frames
        frames = int(stream.frames or 0)
        if frames <= 0:  # some containers (webm, mkv) do not store a count: estimate from duration
            if stream.duration is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                raise ValueError("neither frame count nor duration in the container")
            frames = int(math.floor(seconds * fps + 0.5))
        # Decoding the first frame proves the stream decodes and gives the display rotation,
        # which FFmpeg only exposes as frame side data.
        first = next(container.decode(stream), None)
        if first is None:
            raise ValueError("no decodable video frames")
        rotation = int(getattr(first, "rotation", 0) or 0) % 360
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        has_audio = bool(container.streams.audio)
    return {
        "fps": fps,
        "source_frames": frames,
        "width": width,
        "height": height,
        "rotation": rotation,
        "has_audio": has_audio,
    }


def probe_image(source: Any) -> dict[str, Any]:
    with Image.open(source) as im:
        im = ImageOps.exif_transpose(im)  # phones store portrait photos as rotated landscape + EXIF
        width, height = im.size
    return {"fps": 0.0, "source_frames": 1, "width": width, "height": height, "rotation": 0, "has_audio": False}


# What a file of each kind starts with: tells a truncated or damaged container from a file that
# is not media at all (a renamed text file, an HTML error page saved as .mp4).
_MAGIC = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip"),  # mp4 / mov
    (0, b"\x1a\x45\xdf\xa3"),  # matroska / webm
    (0, b"RIFF"),  # avi, webp
    (0, b"\x89PNG"), (0, b"\xff\xd8\xff"),  # png, jpeg
)


def media_fault(uri: str, media_type: str | None, error: BaseException, storage_options: dict[str, Any] | None = None) -> str:
    """A reason a person can act on, with its kind first (errors_by_reason groups by it): an
    empty file, a file that is not media, a damaged or truncated container, no video stream,
    no decodable frame; FFmpeg's own words in parentheses, without its errno and the path."""
    detail = _detail(error, uri)
    if isinstance(error, ValueError) and str(error) in ("no video stream", "no decodable video frames"):
        return str(error)
    try:
        with open_input(uri, storage_options) as f:
            head = f.read(16)
    except Exception:  # noqa: BLE001 - the first error is the one to report
        return f"unreadable media ({detail})"
    if not head:
        return "empty file (0 bytes)"
    if not any(head[at : at + len(magic)] == magic for at, magic in _MAGIC):
        return f"not {_a(media_type or 'media')} file (its content is not a known container: {detail})"
    return f"damaged or truncated container ({detail})"


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _detail(error: BaseException, uri: str) -> str:
    text = getattr(error, "strerror", None) or str(error).strip() or type(error).__name__
    return str(text).replace(f": '{uri}'", "").replace(uri, "").strip(" :")


def _metadata(uri: str, media_type: str | None, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    with open_media(uri, storage_options) as source:
        return probe_image(source) if media_type == "image" else probe_video(source)


def probe(row: dict[str, Any], storage_options: dict[str, Any] | None = None, time_limit_s: float | None = None) -> dict[str, Any]:
    """Row -> row with fps, width, height (as displayed), rotation, has_audio and its span.

    `start_frame`/`end_frame` (exclusive) default to the whole file; `num_frames` is the span
    length in source frames until `prepare` replaces it with the frames actually encoded. A
    container that does not open within `time_limit_s` (a hung read or demuxer) is an error row.
    """
    out = {**dict.fromkeys(PROBE_COLUMNS), **row}
    out.setdefault("_seconds_probe", 0.0)
    if is_error(row):
        return out
    t0 = time.perf_counter()
    uri = row["uri"]
    try:
        meta = within(time_limit_s, _metadata, uri, row.get("media_type"), storage_options)
    except FileNotFoundError:
        return error_row(out, STAGE, f"{uri}: file not found")
    except SampleTimeout as e:
        return error_row(out, STAGE, f"{uri}: timed out reading the container ({e}; prepare.time_limit_s)")
    except Exception as e:  # noqa: BLE001 - any decoder failure is this row's problem only
        return error_row(out, STAGE, f"{uri}: {media_fault(uri, row.get('media_type'), e, storage_options)}")
    out.update(meta)
    start = row.get("start_frame")
    end = row.get("end_frame")
    start = 0 if start is None or (isinstance(start, float) and math.isnan(start)) else int(start)
    end = meta["source_frames"] if end is None or (isinstance(end, float) and math.isnan(end)) else int(end)
    end = min(end, meta["source_frames"])
    out["start_frame"], out["end_frame"] = start, end
    out["num_frames"] = max(0, end - start)
    out["_seconds_probe"] = time.perf_counter() - t0
    if out["num_frames"] <= 0:
        return error_row(out, STAGE, f"{uri}: empty span (frames [{start}, {end}) of {meta['source_frames']})")
    return out
