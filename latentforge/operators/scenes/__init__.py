"""split_scenes: one video row -> one row per clip span, found by PySceneDetect's detectors.

Entry points (what pipelines/split.py calls; no Ray here, the pipeline passes `run_segments`
to fan a long video's segments out over the cluster):

- `split_video(row, opts, ...)`: a probed row -> its clip rows (or an error row);
  `passthrough` for images and failed rows.
- `detect_segment` / `Detection`: one segment of a long video, run as a Ray task.
- `FrameRequest`: what `prepare` needs, so detection's decode can make it (one decode).
- `part_key`, `row_part_key`, `part_record`, `rows_from_part`: part files (resume).

Modules: `spans` (durations, clip-list math, segments), `detect` (detectors, decode thread,
segments), `shared_decode` (bucket frames for `prepare`), `writers` (clip files), `rows`
(split_video and the stage's columns), `parts` (manifest lines, part files). Frames are
numbered by `operators.frame_clock`, the rule `prepare` uses. docs/scenes.md is the contract.
"""

from __future__ import annotations

from latentforge.operators.base import Resources
from latentforge.operators.frames import FRAMES_FOR, NO_FRAMES
from latentforge.operators.scenes.detect import Detection, detect_segment, detect_video
from latentforge.operators.scenes.parts import part_key, part_record, row_part_key, rows_from_part
from latentforge.operators.scenes.rows import CLIP_FIELDS, passthrough, split_video
from latentforge.operators.scenes.shared_decode import FrameRequest
from latentforge.operators.scenes.spans import Segment, clip_spans, idle_parts, parse_duration, plan_clips, plan_segments, skip_region, to_frames

RESOURCES = Resources(num_cpus=1)

__all__ = [
    "CLIP_FIELDS", "Detection", "FRAMES_FOR", "FrameRequest", "NO_FRAMES", "RESOURCES", "Segment",
    "clip_spans", "detect_segment", "idle_parts", "detect_video", "parse_duration", "part_key", "part_record",
    "passthrough", "plan_clips", "plan_segments", "row_part_key", "rows_from_part", "skip_region",
    "split_video", "to_frames",
]
