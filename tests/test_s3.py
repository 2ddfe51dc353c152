"""Object storage end to end: manifest and media in a bucket, shards back to a bucket (moto's
S3 server on loopback, Ray workers reading through s3fs), credentials never written out."""

import json

import pytest

from latentforge.config import load_config
from latentforge.formats.shards import read_table
from latentforge.pipelines import run
from latentforge.sample_media import make_image, make_video

pytestmark = pytest.mark.ray


def test_precompute_from_and_to_s3(tmp_path, s3_endpoint, ray_local):
    import s3fs

    options = {
        "client_kwargs": {"endpoint_url": s3_endpoint},
        "key": "testing",
        "secret": "testing-secret-value",
    }
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.mkdir("lf-e2e")
    fs.put(str(make_video(tmp_path / "a.mp4", 160, 96, 20, 24)), "lf-e2e/raw/clips/a.mp4")
    fs.put(str(make_video(tmp_path / "b.mp4", 96, 160, 12, 24)), "lf-e2e/raw/clips/b.mp4")
    fs.put(str(make_image(tmp_path / "c.png", 90, 60)), "lf-e2e/raw/clips/c.png")
    lines = [
        {"media_path": "clips/a.mp4", "caption": "A square moves right."},
        {"media_path": "clips/b.mp4", "caption": "A square moves down."},
        {"media_path": "clips/c.png", "caption": "A square moves right."},
        {"media_path": "clips/gone.mp4", "caption": "Missing object."},
    ]
    fs.pipe("lf-e2e/raw/dataset.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())

    cfg = load_config(
        None,
        [],
        input="s3://lf-e2e/raw/dataset.jsonl",
        output="s3://lf-e2e/out",
        model="tiny-wan2.1",
        buckets="96x64x9;64x96x9",
        storage_options=options,
    )
    summary = run(cfg)
    assert summary["counts"]["latents_written"] == 3 and summary["counts"]["errors"] == 1
    latents = read_table(cfg.output, "latents", storage_options=options).to_pylist()
    assert sorted(r["uri"] for r in latents) == [f"s3://lf-e2e/raw/clips/{n}" for n in ("a.mp4", "b.mp4", "c.png")]
    assert {r["bucket"] for r in latents} == {"96x64x9", "64x96x9", "96x64x1"}
    errors = read_table(cfg.output, "errors", storage_options=options).to_pylist()
    assert "file not found" in errors[0]["error"]
    assert fs.glob("lf-e2e/out/latents/bucket=96x64x9/part-*.parquet")
    assert len(fs.glob("lf-e2e/out/embeddings/encoder=*/part-*.parquet")) >= 1

    run_json = fs.cat("lf-e2e/out/run.json").decode()
    assert "testing-secret-value" not in run_json  # credentials never land in outputs
    assert json.loads(run_json)["config"]["storage_options"]["secret"] == "***"

    again = run(cfg)  # resume against the bucket: nothing new
    assert again["counts"]["latents_written"] == 0 and again["counts"]["latents_skipped_existing"] == 3


class FaultyProxy:
    """An HTTP proxy in front of moto that fails every `every`-th request, alternately with S3's
    503 SlowDown and with a connection cut before any answer (what a busy bucket and a flaky
    network do to a long run); with `always`, every PUT whose path holds it answers 503 (an
    upload that finally fails). Requests are read whole first, so a cut PUT may or may not have
    landed: exactly the uncertainty a retry must survive."""

    SLOW_DOWN = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    def __init__(self, upstream: str, every: int, always: str | None = None):
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        up = urlsplit(upstream)
        proxy = self
        self.every, self.requests, self.faults = every, 0, {"503": 0, "cut": 0, "always": 0}
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers botocore's `Expect: 100-continue` on PUT

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                        if size == 0:
                            return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _serve(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.requests += 1
                    fault = proxy.requests % proxy.every == 0
                    kind = "503" if (proxy.requests // proxy.every) % 2 else "cut"
                    if always and self.command == "PUT" and always in self.path:  # an upload that never lands
                        fault, kind = True, "always"
                    if fault:
                        proxy.faults[kind] += 1
                if fault and kind == "cut":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(self.SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(self.SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection", "server", "date"):
                        self.send_header(k, v)
                # a HEAD answer's length is the object's size, not that of its (empty) body
                size = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", size or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve

        Handler.SLOW_DOWN = self.SLOW_DOWN
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _rows(cfg, options, table):
    rows = read_table(cfg.output, table, storage_options=options).to_pylist()
    key = "sample_id" if table == "latents" else "caption_id"
    return {r[key]: {k: (v.tobytes() if hasattr(v, "tobytes") else v) for k, v in r.items() if k != "uri"} for r in rows}


def test_object_store_faults_are_retried(tmp_path, s3_endpoint, ray_local):
    """Every 7th request to the bucket fails (503 SlowDown or a cut connection): the run retries
    them with backoff and lands the same latents and embeddings as a run on a healthy bucket."""
    import s3fs

    clean = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **clean)
    fs.mkdir("lf-faults")
    lines = []
    for i, (w, h) in enumerate([(160, 96), (96, 160), (128, 128), (160, 96)]):
        fs.put(str(make_video(tmp_path / f"v{i}.mp4", w, h, 12, 24)), f"lf-faults/raw/v{i}.mp4")
        lines.append({"media_path": f"v{i}.mp4", "caption": f"Clip {i} moves."})
    fs.pipe("lf-faults/raw/dataset.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())

    def config(output, options):
        return load_config(
            None, [], input="s3://lf-faults/raw/dataset.jsonl", output=output, model="tiny-wan2.1",
            buckets="96x64x9;64x96x9;64x64x9", storage_options=options,
        )

    healthy = config("s3://lf-faults/healthy", clean)
    run(healthy)
    proxy = FaultyProxy(s3_endpoint, every=7)
    try:
        flaky_options = {**clean, "client_kwargs": {"endpoint_url": proxy.url}}
        flaky = config("s3://lf-faults/flaky", flaky_options)
        summary = run(flaky)
    finally:
        proxy.close()
    assert proxy.faults["503"] > 3 and proxy.faults["cut"] > 3, proxy.faults  # the faults did happen
    assert summary["counts"]["latents_written"] == 4 and summary["counts"]["errors"] == 0
    for table in ("latents", "embeddings"):
        assert _rows(flaky, clean, table) == _rows(healthy, clean, table)
    assert not [p for p in fs.find("lf-faults/flaky") if "/.tmp-" in p]


def test_a_shard_whose_upload_finally_fails_is_not_counted(tmp_path, s3_endpoint, ray_local):
    """Every PUT of a latent shard fails: the run stops with the storage's error, no latent
    shard is taken as written, and a rerun on a healthy bucket lands every sample once."""
    import s3fs

    clean = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **clean)
    fs.mkdir("lf-upload")
    for i in range(2):
        fs.put(str(make_video(tmp_path / f"v{i}.mp4", 96, 64, 12, 24)), f"lf-upload/raw/v{i}.mp4")
    lines = [{"media_path": f"v{i}.mp4", "caption": f"Clip {i}."} for i in range(2)]
    fs.pipe("lf-upload/raw/dataset.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())
    proxy = FaultyProxy(s3_endpoint, every=10**9, always="/out/latents/")
    # few retries here so the test is short; the default policy would keep trying for minutes
    failing = {**clean, "client_kwargs": {"endpoint_url": proxy.url}, "config_kwargs": {"retries": {"max_attempts": 1}}}
    settings = dict(input="s3://lf-upload/raw/dataset.jsonl", output="s3://lf-upload/out", model="tiny-wan2.1", buckets="96x64x9")
    try:
        with pytest.raises(Exception, match="(?i)slow ?down|reduce your request rate|503"):
            run(load_config(None, ["encode_text.enabled=false"], storage_options=failing, **settings))
    finally:
        proxy.close()
    assert proxy.faults["always"] >= 5  # s3fs's own retries, each answered 503
    assert not fs.glob("lf-upload/out/latents/**/*.parquet")
    summary = run(load_config(None, ["encode_text.enabled=false"], storage_options=clean, **settings))
    assert summary["counts"]["latents_written"] == 2 and summary["counts"]["latents_skipped_existing"] == 0
    assert len(read_table("s3://lf-upload/out", "latents", storage_options=clean)) == 2
