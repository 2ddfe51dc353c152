"""Clip files of `mode: reencode` (libx264 + AAC holding exactly the span) and `mode: copy`
(stream copy from the keyframe at or before the span to the keyframe at or after its end), and
placing a finished file whole or not at all. Frames and packets are numbered by the frame clock."""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from typing import Any, Callable

import av

from latentforge.operators.frame_clock import FrameClock, seek_to_frame, stream_rate
from latentforge.operators.probe import open_media
from latentforge.rows import stable_hash
from latentforge.storage import get_fs, is_local, write_bytes_atomic


def write_clip_reencode(
    uri: str,
    dest: str,
    start: int,
    end: int,
    fps: float,
    rotation: int = 0,
    crf: int = 22,
    preset: str = "veryfast",
    audio: bool = True,
    comment: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[int, int, bool]:
    """Frames [start, end) of `uri` as an H.264 (libx264, yuv420p) mp4 at `dest`, with the audio
    of the same time range as AAC. Returns (frames written, frames decoded, has audio)."""
    written = 0
    decoded = 0
    with open_media(uri, storage_options) as source, av.open(source) as src, av.open(dest, "w", format="mp4") as out:
        vin = src.streams.video[0]
        vin.thread_type = "AUTO"
        ain = src.streams.audio[0] if (audio and src.streams.audio) else None
        rate = stream_rate(vin)
        vout = out.add_stream("libx264", rate=rate)
        vout.pix_fmt = "yuv420p"
        vout.width, vout.height = vin.codec_context.width, vin.codec_context.height  # as stored
        vout.options = {"crf": str(crf), "preset": preset}
        if rotation:
            vout.set_display_rotation(rotation)
        if comment:
            out.metadata["comment"] = comment
        aout = None
        resampler = None
        if ain is not None:
            layout = ain.layout.name if ain.layout else "stereo"
            aout = out.add_stream("aac", rate=ain.rate or 48000, layout=layout)
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=ain.rate or 48000)
        t0 = start / fps
        t1 = end / fps
        video_done = False
        audio_done = ain is None
        clock = FrameClock(vin)
        origin_seconds = clock.origin * float(vin.time_base)
        numbers = clock.numbering(start, seek_to_frame(src, vin, start, clock))
        next_sample = 0  # audio samples written so far
        streams = [vin] + ([ain] if ain is not None else [])
        for packet in src.demux(*streams):
            if video_done and audio_done:
                break
            if packet.stream is vin:
                if video_done:
                    continue
                for frame in packet.decode():
                    decoded += 1
                    picture = None
                    for index in numbers.indices(frame):
                        if index >= end:
                            video_done = True
                            break
                        if picture is None:
                            picture = frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p")
                        picture.pts = written  # the clip's own clock: frame i at i / rate
                        picture.time_base = 1 / rate
                        picture.pict_type = av.video.frame.PictureType.NONE  # no keyframe forced where the source had one
                        for p in vout.encode(picture):
                            out.mux(p)
                        written += 1
                    if video_done:
                        break
            elif ain is not None and not audio_done:
                for frame in packet.decode():
                    if frame.pts is None:
                        continue
                    t = float(frame.pts * frame.time_base) - origin_seconds
                    for rframe in resampler.resample(frame):
                        n = rframe.samples
                        sr = rframe.sample_rate
                        a = int(round((t - t0) * sr))  # first sample of this frame, relative to t0
                        total = int(round((t1 - t0) * sr))
                        t += n / sr
                        lo = max(0, next_sample - a)
                        hi = min(n, total - a)
                        if a >= total:
                            audio_done = True
                            break
                        if hi <= lo:
                            continue
                        data = rframe.to_ndarray()[:, lo:hi]
                        chunk = av.AudioFrame.from_ndarray(data.copy(), format="fltp", layout=rframe.layout.name)
                        chunk.sample_rate = sr
                        chunk.pts = None
                        for p in aout.encode(chunk):
                            out.mux(p)
                        next_sample = a + hi
        for p in vout.encode():
            out.mux(p)
        if aout is not None:
            for p in aout.encode():
                out.mux(p)
    return written, decoded, aout is not None and next_sample > 0


def keyframe_range(uri: str, start: int, end: int, fps: float, storage_options: dict[str, Any] | None = None) -> tuple[int, int]:
    """[first, stop) in source frames that a stream copy of [start, end) holds: from the
    keyframe at or before `start` to the keyframe at or after `end` (or the end of the file).
    Reads packets only, decodes nothing."""
    return _copy_packets(uri, start, end, fps, None, storage_options, audio=False)


def _copy_packets(
    uri: str,
    start: int,
    end: int,
    fps: float,
    sink: Callable[[Any, str, float], None] | None,
    storage_options: dict[str, Any] | None,
    audio: bool = True,
) -> tuple[int, int]:
    """Walk the packets a stream copy of [start, end) takes, handing each to `sink(packet, kind,
    base_seconds)`; returns the source frames [first, stop) the copy holds."""
    with open_media(uri, storage_options) as source, av.open(source) as src:
        vin = src.streams.video[0]
        ain = src.streams.audio[0] if (audio and src.streams.audio) else None
        v_origin = vin.start_time or 0
        v_tb = float(vin.time_base)
        clock = FrameClock(vin)
        seek_to_frame(src, vin, start, clock)
        first = None
        stop = None
        base = 0.0  # presentation time (s) of the first copied frame
        last_index = -1
        held_audio: list[tuple[float, Any]] = []  # audio past `end` until the stop keyframe is known
        streams = [vin] + ([ain] if ain is not None else [])
        for packet in src.demux(*streams):
            if packet.pts is None and packet.dts is None:
                continue  # a stream's flush packet
            if packet.stream is vin:
                pts = packet.pts if packet.pts is not None else packet.dts
                index = clock.index_at(pts)
                if packet.is_keyframe:
                    if first is None:
                        if index > start:
                            raise ValueError(f"no keyframe at or before frame {start}")
                        first = index
                        base = float(pts * v_tb)
                    elif index >= end:
                        stop = index
                        break
                if first is None or index < first:
                    continue  # leading frames of an open GOP refer to the GOP before
                last_index = max(last_index, index)
                if sink is not None:
                    sink(packet, "video", base)
            elif first is not None and packet.pts is not None:
                t = float(packet.pts * packet.time_base)
                if t < base:
                    continue
                if t - v_origin * v_tb < end / fps:
                    if sink is not None:
                        sink(packet, "audio", base)
                else:
                    held_audio.append((t, packet))
        if first is None:
            raise ValueError(f"no video packets at frame {start}")
        stop = stop if stop is not None else last_index + 1
        if sink is not None:
            for t, packet in held_audio:
                if t - v_origin * v_tb < stop / fps:
                    sink(packet, "audio", base)
    return first, stop


def write_clip_copy(
    uri: str,
    dest: str,
    start: int,
    end: int,
    fps: float,
    rotation: int = 0,
    audio: bool = True,
    comment: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[int, int, bool]:
    """Stream copy (no re-encode) of the packets from the keyframe at or before `start` to the
    keyframe at or after `end`. Returns (first, stop, has audio): the file holds source frames
    [first, stop)."""
    with open_media(uri, storage_options) as source, av.open(source) as src:
        vin = src.streams.video[0]
        ain = src.streams.audio[0] if (audio and src.streams.audio) else None
        with av.open(dest, "w", format=_container_format(dest)) as out:
            vout = out.add_stream_from_template(vin, opaque=True)  # no encoder lookup (AV1 decodes with libdav1d)
            if rotation:
                vout.set_display_rotation(rotation)
            aout = out.add_stream_from_template(ain) if ain is not None else None
            if comment:
                out.metadata["comment"] = comment
            wrote_audio = False

            def sink(packet: Any, kind: str, base: float) -> None:
                nonlocal wrote_audio
                target = vout if kind == "video" else aout
                if target is None:
                    return
                shift = int(round(base / float(packet.time_base)))
                if packet.pts is not None:
                    packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
                packet.stream = target
                out.mux(packet)
                wrote_audio = wrote_audio or kind == "audio"

            first, stop = _copy_packets(uri, start, end, fps, sink, storage_options, audio=ain is not None)
    return first, stop, wrote_audio


def _container_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}.get(ext, "mp4")


def clip_name(template: str, parent_uri: str, scene_index: int, start: int, ext: str) -> str:
    """The clip file's name: `template` with {stem}, {scene} (1-based), {hash}, {start}, + ext."""
    stem = os.path.splitext(posixpath.basename(parent_uri.rstrip("/")))[0]
    name = template.format(stem=stem, scene=scene_index + 1, hash=stable_hash(parent_uri, length=8), start=start)
    return name + ext


def place_clip(local_tmp: str, url: str, storage_options: dict[str, Any] | None) -> None:
    """Move a finished local file to `url` whole or not at all."""
    fs, path = get_fs(url, storage_options)
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(local_tmp, path)
        return
    with open(local_tmp, "rb") as f:
        write_bytes_atomic(fs, path, f.read())
    os.remove(local_tmp)


def tmp_path_for(url: str, storage_options: dict[str, Any] | None) -> str:
    """A temp path for a clip: in the destination folder locally (rename is atomic there)."""
    fs, path = get_fs(url, storage_options)
    name = os.path.basename(path)
    if is_local(fs):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
    else:
        folder = tempfile.gettempdir()
    return os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")
