"""The model actors as the driver names them: `encode_video` and `encode_text` each get a thin
class here that builds the real one (operators/vae.py, operators/text.py) inside the actor.

Ray pickles an actor class by reference, so a driver that held the real classes would import
torch, diffusers and transformers (about 0.5 GB of RSS) only to name them; with these it never
does (tests/test_architecture.py checks). Same class names, so Ray Data's operator names
(`MapBatches(VideoEncodeStage)`) and `latentforge plan` read as before.
"""

from __future__ import annotations

from typing import Any

from latentforge.operators.base import MODEL_RESOURCES, settle_after_load


class _InActor:
    """Holds the real stage (built by the subclass's __init__) and hands it each batch."""

    resources = MODEL_RESOURCES
    stage: Any

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.stage(batch)


class VideoEncodeStage(_InActor):
    """operators.vae.VideoEncodeStage, built in the actor."""

    def __init__(self, **kwargs: Any) -> None:
        from latentforge.operators.vae import VideoEncodeStage as Stage

        self.stage = Stage(**kwargs)
        settle_after_load()


class TextEncodeStage(_InActor):
    """operators.text.TextEncodeStage, built in the actor."""

    def __init__(self, **kwargs: Any) -> None:
        from latentforge.operators.text import TextEncodeStage as Stage

        self.stage = Stage(**kwargs)
        settle_after_load()
