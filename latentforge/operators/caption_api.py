"""caption through an OpenAI-compatible chat endpoint (a vLLM server, Gemini's OpenAI API, ...).

Each row is one `POST {base_url}/chat/completions` whose user message holds the sampled frames
as base64 JPEG `image_url` parts (or, with `send_video`, one base64 mp4 `video_url` part, which
vLLM accepts for video models) followed by the prompt. An actor keeps `concurrency` requests in
flight on a thread pool. 429 and 5xx answers, timeouts and dropped connections are retried with
exponential backoff (`backoff_s`, doubled per attempt, a little jitter, capped at 60 s); a
`Retry-After` header is honoured. Other 4xx answers fail at once. A row that still fails becomes
an error row (error_stage "caption") and the run goes on.

The API key is read from the environment variable named by `api_key_env`, on the driver (and
passed to the actors wrapped so that it never prints) or, when the driver lacks it, on the
worker. It is sent only in the Authorization header; it never appears in the config, run.json,
error messages or logs (messages are scrubbed of it as a last line of defence).
"""

from __future__ import annotations

import base64
import email.utils
import io
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from latentforge.operators.base import Resources
from latentforge.operators.captioner import CaptionActorBase, CaptionError
from latentforge.operators.captioning import CaptionOptions, caption_prompt

RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
MAX_BACKOFF_S = 60.0


class Secret:
    """A string that never shows itself in repr/str (logs, tracebacks, Ray's argument dumps)."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value or None

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret(None)"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def jpeg_data_url(frame: np.ndarray, quality: int = 90) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def mp4_data_url(frames: np.ndarray, fps: float) -> str:
    """The sampled frames as a small H.264 mp4 (even sizes, yuv420p) in a data URL."""
    from fractions import Fraction

    import av

    frames = np.asarray(frames, dtype=np.uint8)
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(max(fps, 1.0)).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return "data:video/mp4;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def message_content(item: dict[str, Any], prompt: str, send_video: bool) -> list[dict[str, Any]]:
    frames = item["frames"]
    if item["kind"] == "video" and send_video:
        visual = [{"type": "video_url", "video_url": {"url": mp4_data_url(frames, item.get("fps") or 1.0)}}]
    else:
        visual = [{"type": "image_url", "image_url": {"url": jpeg_data_url(f)}} for f in frames]
    return [*visual, {"type": "text", "text": prompt}]


def response_text(data: Any) -> str:
    """choices[0].message.content, as a string or a list of text parts."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise CaptionError("the answer has no choices[0].message.content") from None
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


class ChatClient:
    """POST /chat/completions with retries; thread-safe (one requests session per thread)."""

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        sleep=time.sleep,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.sleep = sleep
        self._local = threading.local()

    def _session(self):
        import requests

        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _scrub(self, text: str) -> str:
        key = self.api_key.get()
        return text.replace(key, "***") if key else text

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_BACKOFF_S)
        base = self.backoff_s * (2**attempt)
        return min(base * (1 + 0.25 * random.random()), MAX_BACKOFF_S)

    def complete(self, payload: dict[str, Any]) -> str:
        import requests

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key.get()}"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                resp = self._session().post(self.url, json=payload, headers=headers, timeout=self.timeout_s)
            except requests.Timeout:
                last = f"timed out after {self.timeout_s:g} s"
            except requests.ConnectionError as e:
                last = f"connection failed ({type(e).__name__})"
            else:
                if resp.status_code == 200:
                    try:
                        return response_text(resp.json())
                    except ValueError:
                        raise CaptionError("the answer is not JSON") from None
                body = self._scrub(resp.text[:300].strip().replace("\n", " "))
                last = f"HTTP {resp.status_code}" + (f": {body}" if body else "")
                if resp.status_code not in RETRY_STATUS:
                    raise CaptionError(last)
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
            if attempt < self.max_retries:
                self.sleep(self._delay(attempt, retry_after))
        raise CaptionError(f"gave up after {self.max_retries + 1} attempts, last: {last}")


class OpenAICaptioner(CaptionActorBase):
    """Ray Data map_batches actor for an OpenAI-compatible endpoint: no model, no GPU; a thread
    pool of `concurrency` requests per actor, waiting on the network, so it reserves no CPU."""

    resources = Resources(num_cpus=0, num_gpus=0)

    def __init__(
        self,
        options: CaptionOptions,
        base_url: str,
        api_key: Secret | None = None,
        api_key_env: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        send_video: bool = False,
    ):
        self.options = options
        if not (api_key and api_key.get()) and api_key_env:
            api_key = Secret(os.environ.get(api_key_env))
            if not api_key:
                raise RuntimeError(f"caption.api_key_env: the environment variable {api_key_env} is not set on this worker")
        self.client = ChatClient(base_url, api_key or Secret(None), timeout_s, max_retries, backoff_s)
        self.send_video = send_video
        self.pool = ThreadPoolExecutor(max_workers=max(1, int(concurrency)), thread_name_prefix="caption-api")

    def _one(self, item: dict[str, Any]) -> str:
        prompt = caption_prompt(item["kind"], self.options.prompt, self.options.custom_prompt, self.options.task, self.options.cot)
        payload: dict[str, Any] = {
            "model": self.options.model,
            "messages": [{"role": "user", "content": message_content(item, prompt, self.send_video)}],
            "max_tokens": self.options.max_new_tokens,
            "temperature": self.options.temperature,
        }
        return self.client.complete(payload)

    def caption_rows(self, items: list[dict[str, Any]]) -> list[str | BaseException]:
        futures = [self.pool.submit(self._one, it) for it in items]
        results: list[str | BaseException] = []
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as e:  # noqa: BLE001 - one bad row never kills the job
                results.append(CaptionError(self.client._scrub(str(e))) if str(e) else e)
        return results
