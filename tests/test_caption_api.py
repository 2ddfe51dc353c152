"""The OpenAI-compatible backend against a small HTTP server on 127.0.0.1 that checks each request
(model, prompt, base64 images, the Authorization header from the environment) and misbehaves on
purpose: 429 and 500 answers, a request that hangs past the timeout, a clip it always refuses."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentforge.config import load_config
from latentforge.formats.manifests import read_manifest
from latentforge.formats.shards import read_table
from latentforge.operators.caption_api import ChatClient, OpenAICaptioner, Secret, retry_after_seconds
from latentforge.operators.captioner import CaptionError
from latentforge.operators.captioning import CaptionOptions, caption_prompt
from latentforge.sample_media import make_image, make_video

KEY = "sk-test-9f8e7d6c5b4a-SECRET"
MODEL = "Qwen/Qwen2.5-VL-72B-Instruct"


class FakeOpenAI:
    """A /v1/chat/completions endpoint with a script of failures, recording what it saw."""

    def __init__(self, script=(), hang_s=1.5):
        self.script = list(script)  # statuses (or "hang") for the first requests, in order
        self.hang_s = hang_s
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.problems: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                    action = fake.script.pop(0) if fake.script else None
                status, payload, headers = fake.answer(self.path, dict(self.headers), body, action)
                if action == "hang":
                    time.sleep(fake.hang_s)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1"

    def answer(self, path, headers, body, action):
        if path != "/v1/chat/completions":
            return 404, {"error": "not found"}, {}
        if headers.get("Authorization") != f"Bearer {KEY}":
            self.problems.append("bad auth")
            return 401, {"error": "bad key"}, {}
        if body.get("model") != MODEL:
            self.problems.append(f"model {body.get('model')}")
            return 400, {"error": "unknown model"}, {}
        content = body["messages"][0]["content"]
        images = [p for p in content if p["type"] == "image_url"]
        text = [p["text"] for p in content if p["type"] == "text"]
        for p in images:
            url = p["image_url"]["url"]
            if not url.startswith("data:image/jpeg;base64,"):
                self.problems.append("image not a base64 JPEG")
            Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).verify()
        media = "image" if len(images) == 1 and "this image" in text[0] else "video"
        if text != [caption_prompt(media)]:
            self.problems.append(f"prompt {text}")
        if action == 429:
            return 429, {"error": "slow down"}, {"Retry-After": "0"}
        if action in (500, 502, 503):
            return action, {"error": "overloaded"}, {}
        if media == "image":  # the model answers nothing for images: an empty caption
            return 200, {"choices": [{"message": {"role": "assistant", "content": ""}}]}, {}
        if len(images) == 1:  # a one-frame clip: the server always fails on it
            return 503, {"error": f"cannot serve; your key {KEY} is fine"}, {}
        return 200, {"choices": [{"message": {"role": "assistant", "content": f"The video shows {len(images)} frames of a square."}}]}, {}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_retry_after_parsing():
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_seconds(future) <= 31


def test_client_retries_backs_off_times_out_and_never_shows_the_key():
    waits: list[float] = []
    frames = np.full((2, 16, 16, 3), 128, np.uint8)
    item = {"kind": "video", "frames": frames, "fps": 2.0, "uri": "x"}
    options = CaptionOptions(model=MODEL, max_new_tokens=16)
    with FakeOpenAI(script=[429, 500, "hang", 502], hang_s=1.0) as server:
        actor = OpenAICaptioner(options, server.base_url, Secret(KEY), timeout_s=0.3, max_retries=5, backoff_s=0.01)
        actor.client.sleep = waits.append
        assert actor.caption_rows([item]) == ["The video shows 2 frames of a square."]
        assert len(server.requests) == 5 and not server.problems
        # Retry-After: 0 honoured, then exponential backoff from 0.01 s (plus at most 25 % jitter)
        assert waits[0] == 0.0 and 0.02 <= waits[1] <= 0.025 and 0.04 <= waits[2] <= 0.05 and 0.08 <= waits[3] <= 0.1
        body = server.requests[-1]["body"]
        assert body["max_tokens"] == 16 and body["temperature"] == 0.0

        one_frame = {**item, "frames": frames[:1]}
        [error] = actor.caption_rows([one_frame])
        assert isinstance(error, CaptionError) and "gave up after 6 attempts, last: HTTP 503" in str(error)
        assert KEY not in str(error) and "***" in str(error)  # the server echoed the key: scrubbed
        assert KEY not in repr(actor.client.api_key) and KEY not in repr(Secret(KEY))

        # other 4xx: no retry
        client = ChatClient(server.base_url, Secret("wrong"), timeout_s=1, max_retries=3, backoff_s=0)
        with pytest.raises(CaptionError, match="HTTP 401"):
            client.complete({"model": MODEL, "messages": []})


def test_send_video_posts_one_mp4(tmp_path):
    seen = []

    class Recorder(FakeOpenAI):
        def answer(self, path, headers, body, action):
            seen.append(body["messages"][0]["content"])
            return 200, {"choices": [{"message": {"content": [{"type": "text", "text": "A square moves."}]}}]}, {}

    with Recorder() as server:
        actor = OpenAICaptioner(CaptionOptions(model=MODEL), server.base_url, Secret(None), send_video=True)
        frames = np.random.default_rng(0).integers(0, 255, (4, 32, 48, 3), dtype=np.uint8)
        assert actor.caption_rows([{"kind": "video", "frames": frames, "fps": 2.0, "uri": "x"}]) == ["A square moves."]
    [content] = seen
    assert [p["type"] for p in content] == ["video_url", "text"]
    mp4 = base64.b64decode(content[0]["video_url"]["url"].split(",", 1)[1])
    import av

    with av.open(io.BytesIO(mp4)) as c:
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 4
    assert "Authorization" not in server.requests[0]["headers"]  # no key configured: no header


@pytest.mark.ray
def test_caption_pipeline_through_the_api(tmp_path, ray_local, monkeypatch):
    from latentforge.pipelines import run

    media = tmp_path / "media"
    make_video(media / "long.mp4", 96, 64, 36, 24)  # 1.5 s -> 3 frames at 2 fps
    make_video(media / "two.mp4", 96, 64, 24, 24)  # 1 s -> 2 frames
    make_video(media / "one.mp4", 96, 64, 12, 24)  # 0.5 s -> 1 frame: the server refuses it
    make_image(media / "still.png", 80, 60)  # the server answers nothing
    make_video(media / "has.mp4", 96, 64, 24, 24)
    rows = [
        {"media_path": "long.mp4", "caption": None},
        {"media_path": "two.mp4", "caption": None},
        {"media_path": "one.mp4", "caption": None},
        {"media_path": "still.png", "caption": None},
        {"media_path": "has.mp4", "caption": "Written by a person."},
    ]
    (media / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("LF_TEST_CAPTION_KEY", KEY)
    with FakeOpenAI(script=[429, 500, "hang", 429, 503]) as server:
        cfg = load_config(
            None,
            [
                "caption.backend=openai",
                f"caption.base_url={server.base_url}",
                f"caption.model={MODEL}",
                "caption.api_key_env=LF_TEST_CAPTION_KEY",
                "caption.concurrency=3",
                "caption.timeout_s=0.5",
                "caption.max_retries=6",
                "caption.backoff_s=0.01",
                "caption.max_pixels=4096",
                f"caption.manifest={media / 'captions.csv'}",
            ],
            input=str(media / "dataset.jsonl"),
            output=str(tmp_path / "out"),
            model="tiny",
            buckets="64x64x9",
            pipeline="caption",
        )
        summary = run(cfg)
    assert not server.problems
    counts = summary["counts"]
    assert counts["captioned"] == 2 and counts["captions_kept"] == 1 and counts["manifest_rows"] == 3
    assert counts["errors_by_reason"] == {"caption/captioning failed": 1, "caption/empty caption from the model": 1}
    assert len(server.requests) >= 4 + 5  # every scripted failure was retried
    back = read_manifest(str(media / "captions.csv"))
    assert {Path(r["uri"]).name: r["caption"] for r in back} == {
        "long.mp4": "3 frames of a square.",
        "two.mp4": "2 frames of a square.",
        "has.mp4": "Written by a person.",
    }
    errors = {Path(r["uri"]).name: r for r in read_table(cfg.output, "errors").to_pylist()}
    assert set(errors) == {"one.mp4", "still.png"} and "HTTP 503" in errors["one.mp4"]["error"]
    assert summary["captioner"]["api_key_env"] == "LF_TEST_CAPTION_KEY"
    # the key is nowhere in what the run wrote
    for path in [*Path(cfg.output).rglob("*"), media / "captions.csv"]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
