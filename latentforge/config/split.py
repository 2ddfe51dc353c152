"""The `split` section: scene detection (PySceneDetect's detectors and their parameters) and
how scenes become clips."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator

from latentforge.config.base import _Section

Duration = Union[int, float, str]  # frames (15), seconds (2.5, "5s") or a timecode ("00:00:05.000")
Weights = tuple[float, float, float, float]  # delta_hue, delta_sat, delta_lum, delta_edges


class ContentParams(_Section):
    """PySceneDetect ContentDetector (`detect-content`): HSV change between adjacent frames."""

    threshold: float = Field(27.0, ge=0, description="frame score (0-255) at or above which a cut is found")
    weights: Weights = Field((1.0, 1.0, 1.0, 0.0), description="hue, saturation, luma, edges weights of the score")
    luma_only: bool = Field(False, description="score on brightness only (weights 0, 0, 1, 0)")
    kernel_size: Optional[int] = Field(None, ge=3, description="edge dilation kernel (odd); default from frame size")
    filter_mode: Literal["merge", "suppress"] = Field("merge", description="how cuts closer than min_scene_len are handled")


class AdaptiveParams(_Section):
    """PySceneDetect AdaptiveDetector (`detect-adaptive`): content score against its rolling average."""

    adaptive_threshold: float = Field(3.0, gt=0, description="score / average of the window around it")
    window_width: int = Field(2, ge=1, description="frames either side in the rolling average")
    min_content_val: float = Field(15.0, ge=0, description="least content score for a cut")
    weights: Weights = (1.0, 1.0, 1.0, 0.0)
    luma_only: bool = False
    kernel_size: Optional[int] = Field(None, ge=3)


class ThresholdParams(_Section):
    """PySceneDetect ThresholdDetector (`detect-threshold`): fades to and from black (or white)."""

    threshold: float = Field(12.0, ge=0, le=255, description="mean pixel level that counts as faded out")
    fade_bias: float = Field(0.0, ge=-1, le=1, description="-1: cut at the fade out, 0: middle, +1: at the fade in")
    add_final_scene: bool = Field(False, description="cut where a final fade out starts")
    method: Literal["floor", "ceiling"] = Field("floor", description="floor: below threshold is faded; ceiling: above")
    min_out_length: Duration = Field(0, description="least time faded out for a cut")


class HistogramParams(_Section):
    """PySceneDetect HistogramDetector (`detect-hist`): luma histogram correlation."""

    threshold: float = Field(0.2, ge=0, le=1, description="least change (1 - correlation) for a cut")
    bins: int = Field(128, ge=2, le=256)


class HashParams(_Section):
    """PySceneDetect HashDetector (`detect-hash`): perceptual hash distance."""

    threshold: float = Field(0.35, ge=0, le=1, description="least fraction of hash bits that differ for a cut")
    size: int = Field(8, ge=2, description="hash side (size x size bits)")
    lowpass: int = Field(2, ge=1, description="frame shrunk to size * lowpass before the DCT")


class SplitConfig(_Section):
    """Scene splitting (docs/scenes.md): one row per clip, optionally one file per clip."""

    enabled: bool = Field(False, description="split inside `latentforge run` (pipeline: precompute); always on for pipeline: split / all")
    detector: Literal["content", "adaptive", "threshold", "histogram", "hash"] = "content"
    min_scene_len: Duration = Field(15, description="detector: no cut closer than this to the previous one")
    content: ContentParams = Field(default_factory=ContentParams)
    adaptive: AdaptiveParams = Field(default_factory=AdaptiveParams)
    threshold: ThresholdParams = Field(default_factory=ThresholdParams)
    histogram: HistogramParams = Field(default_factory=HistogramParams)
    hash: HashParams = Field(default_factory=HashParams)
    skip_start: Optional[Duration] = Field(None, description="drop this much at the start of each video (intros)")
    skip_end: Optional[Duration] = Field(None, description="drop this much at the end of each video (credits)")
    max_scene_len: Optional[Duration] = Field(None, description="cut longer scenes into consecutive pieces of this length")
    filter_shorter_than: Optional[Duration] = Field(None, description="drop clips shorter than this (after max_scene_len)")
    max_scenes: Optional[int] = Field(None, ge=1, description="keep the first N clips of each video")
    mode: Literal["virtual", "reencode", "copy"] = Field("virtual", description="virtual: spans only; reencode / copy: clip files")
    crf: int = Field(22, ge=0, le=51, description="reencode: libx264 quality (lower is better)")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"] = "veryfast"
    audio: bool = Field(True, description="clip files keep the audio of their span (AAC when re-encoded)")
    clip_name: str = Field("{stem}-Scene-{scene:03d}", description="clip file name: {stem}, {scene} (1-based), {hash}, {start}")
    detect_size: int = Field(256, ge=16, description="longer side of the frames the detector sees (FFmpeg scales to it)")
    segment_seconds: Optional[float] = Field(600.0, gt=0, description="videos longer than this are detected in parallel segments")
    overlap_seconds: float = Field(5.0, ge=0, description="frames each segment also reads either side of its own range")
    min_segment_seconds: Optional[float] = Field(
        30.0, gt=0, description="a video at least twice this long is also cut into segments when CPUs are idle as it starts "
        "(one per idle CPU, none shorter than this), unless its frames feed the shared decode; null: only past segment_seconds",
    )
    shared_decode_mb: int = Field(
        1024, ge=0, description="in `latentforge run`: memory per video for bucket frames made during detection; 0: prepare decodes again"
    )

    @field_validator("min_scene_len", "skip_start", "skip_end", "max_scene_len", "filter_shorter_than")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        from latentforge.operators.scenes import parse_duration

        if value is not None:
            parse_duration(value)  # frames, seconds or a timecode; the message says which forms
        return value

    @field_validator("max_scene_len")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        from latentforge.operators.scenes import parse_duration

        if value is not None and parse_duration(value)[1] <= 0:
            raise ValueError("must be longer than 0")
        return value

    @field_validator("clip_name")
    @classmethod
    def _template(cls, value: str) -> str:
        if "{scene" not in value:
            raise ValueError("must contain {scene} (or {scene:03d}) so clips of one video get different names")
        try:
            value.format(stem="clip", scene=1, hash="0" * 8, start=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"placeholders are {{stem}}, {{scene}}, {{hash}}, {{start}} ({e})") from None
        if "/" in value:
            raise ValueError("must be a file name, not a path")
        return value
