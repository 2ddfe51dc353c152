"""`latentforge verify OUTPUT [--input MANIFEST]`: is every sample there once, and every shard whole?

Each table is scanned by a Ray task on a worker, reading ids and shapes by column projection
(never the tensors, never on the driver); the tasks hand each other id sets through the object
store (`outputs.IdSet`). What is checked, each a line of the report when it fails:

- every shard under latents/, embeddings/ and errors/ opens (a truncated or half-copied file
  does not) and no temporary file of an interrupted write is left (`.tmp-*`);
- no `sample_id` twice among the latents, no `caption_id` twice in an encoder's embeddings;
- each latent's stored shape is the one its bucket implies for the model in its shard metadata;
- every `caption_id` of a latent row has an embedding in every encoder table of the output
  (and there is one when the run had text encoding on);
- no sample is both a latent and an error row;
- with --input: every row of that manifest (a media file and its span) is a latent or an
  error row (after scene splitting, some clip of it is).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import ray

from latentforge.formats.shards import EMBEDDINGS, ERRORS, LATENTS, read_run_summary, shard_bucket
from latentforge.pipelines.outputs import IdSet
from latentforge.rows import redact_credentials
from latentforge.storage import get_fs, join

EXAMPLES = 5  # problems of one kind listed by name; the rest are counted


def _table_root(output: str, table: str, storage_options: dict | None) -> tuple[Any, str]:
    return get_fs(join(output, table), storage_options)


def _finished_and_temporary(fs: Any, root: str) -> tuple[list[str], list[str]]:
    if not fs.exists(root):
        return [], []
    files = sorted(fs.find(root))
    temporary = [f for f in files if posixpath.basename(f).startswith(".tmp-")]
    return [f for f in files if f.endswith(".parquet") and f not in temporary], temporary


def _expected_shape(bucket: str, model: str | None) -> tuple[int, int, int] | None:
    from latentforge.buckets import parse_bucket
    from latentforge.models import get_preset

    if not model:
        return None
    try:
        preset = get_preset(model)
        b = parse_bucket(bucket)
    except Exception:  # noqa: BLE001 - an unknown model or bucket: shapes cannot be checked
        return None
    return tuple(preset.latent_shape(b.frames, b.height, b.width))


def _sorted_bytes(values: set[str]) -> Any:
    import numpy as np

    return np.unique(np.array([v.encode("utf-8") for v in values], dtype=bytes)) if values else np.array([], dtype="S1")


@ray.remote(num_cpus=0.25, num_returns=3)
def scan_table(output: str, table: str, key: str, storage_options: dict | None, need: IdSet | None = None, conflict: IdSet | None = None) -> dict[str, Any]:
    """One table: shards that do not open, temporary files, ids twice, shapes off the bucket,
    ids whose `caption_id` is not in `need`, ids also in `conflict`. Returns the summary, then
    the ids and the uris seen as sorted arrays (they stay in the object store: `IdSet`s)."""
    import pyarrow.parquet as pq

    fs, root = _table_root(output, table, storage_options)
    shards, temporary = _finished_and_temporary(fs, root)
    problems: dict[str, list[str]] = {}

    def problem(kind: str, example: str) -> None:
        problems.setdefault(kind, []).append(example)

    for path in temporary:
        problem("leftover temporary file", path)
    seen: dict[str, str] = {}
    uris: set[str] = set()
    rows = 0
    for path in shards:
        try:
            with fs.open(path, "rb") as f:
                schema = pq.read_schema(f)
                names = set(schema.names)
                wanted = [c for c in (key, "caption_id", "latent_shape", "uri", "start_frame", "end_frame") if c in names]
                data = pq.read_table(f, columns=wanted).to_pylist()
        except Exception as e:  # noqa: BLE001 - a shard that does not open is what verify reports
            problem("shard does not open", f"{path} ({type(e).__name__}: {str(e)[:120]})")
            continue
        meta = json.loads((schema.metadata or {}).get(b"latentforge", b"{}"))
        bucket = shard_bucket(path)
        shape = _expected_shape(bucket, meta.get("model")) if bucket else None
        rows += len(data)
        for row in data:
            sid = row.get(key)
            if row.get("uri"):
                uris.add(str(row["uri"]))
            if sid is None:
                continue
            if sid in seen:
                problem(f"{key} twice", f"{sid} in {seen[sid]} and {path}")
            seen[sid] = path
            if shape is not None and row.get("latent_shape") is not None and tuple(row["latent_shape"][1:]) != shape:
                problem("latent shape off its bucket", f"{sid}: {row['latent_shape']} in bucket={bucket} (expected [C, {', '.join(map(str, shape))}])")
            if need is not None and row.get("caption_id") and row["caption_id"] not in need:
                problem("caption without embedding", f"{sid}: caption_id {row['caption_id']}")
            if conflict is not None and sid in conflict:
                problem("both a latent and an error row", sid)
    summary = {"table": table, "rows": rows, "shards": len(shards), "problems": problems, "ids": len(seen), "uris": len(uris)}
    return summary, _sorted_bytes(set(seen)), _sorted_bytes(uris)


def _scan(output: str, table: str, key: str, so: dict, need: IdSet | None = None, conflict: IdSet | None = None) -> tuple[dict[str, Any], IdSet, IdSet]:
    summary, ids, uris = scan_table.remote(output, table, key, so, need, conflict)
    summary = ray.get(summary)
    return summary, IdSet(ids, summary["ids"]), IdSet(uris, summary["uris"])


@ray.remote(num_cpus=0.25)
def account_for_input(input_url: str, input_format: str, storage_options: dict | None, uris: list[IdSet]) -> tuple[int, list[str]]:
    """Input rows (media files) that are neither a latent nor an error row: (count, examples).
    `uris` = [those of the latents, those of the error rows]."""
    from latentforge.formats.manifests import plan_reads, read_part

    count, examples = 0, []
    for part in plan_reads(input_url, input_format, storage_options):
        for row in read_part(part, storage_options):
            uri = str(row.get("uri") or "")  # an error row's uri has its credentials masked
            if uri and not row.get("error") and uri not in uris[0] and redact_credentials(uri) not in uris[1]:
                count += 1
                examples = examples if len(examples) >= EXAMPLES else [*examples, redact_credentials(uri)]
    return count, examples


def verify(output: str, input_url: str | None = None, input_format: str = "auto", storage_options: dict | None = None) -> dict[str, Any]:
    """The report: {"ok", "problems": {kind: {"count", "examples"}}, "latents", "embeddings", "errors"}."""
    so = storage_options or {}
    fs, eroot = get_fs(join(output, EMBEDDINGS), so)
    encoders = sorted(p for p in (fs.ls(eroot, detail=False) if fs.exists(eroot) else []) if "encoder=" in p)
    embedding_scans = [_scan(output, f"{EMBEDDINGS}/{posixpath.basename(p)}", "caption_id", so) for p in encoders]
    errors, error_ids, error_uris = _scan(output, ERRORS, "sample_id", so)
    scans = [e[0] for e in embedding_scans] + [errors]
    latents, latent_uris = None, None
    for emb in embedding_scans or [None]:  # the latents against each encoder's ids in turn
        latents, _, latent_uris = _scan(output, LATENTS, "sample_id", so, emb[1] if emb else None, error_ids)
        scans.append(latents)
    problems: dict[str, dict[str, Any]] = {}
    for scan in scans:
        for kind, examples in scan["problems"].items():
            entry = problems.setdefault(kind, {"count": 0, "examples": []})
            entry["count"] += len(examples)
            entry["examples"] = (entry["examples"] + examples)[:EXAMPLES]
    if not encoders and _text_was_on(output, so) and latents and latents["rows"]:
        problems["no embeddings"] = {"count": 1, "examples": [f"{join(output, EMBEDDINGS)}/ is missing but the run encoded text"]}
    if input_url:
        count, examples = ray.get(account_for_input.remote(input_url, input_format, so, [latent_uris, error_uris]))
        if count:
            problems["input row not accounted for"] = {"count": count, "examples": examples}
    return {
        "ok": not problems,
        "problems": problems,
        "latents": {"rows": latents["rows"] if latents else 0, "shards": latents["shards"] if latents else 0},
        "embeddings": {posixpath.basename(p): {"rows": s[0]["rows"], "shards": s[0]["shards"]} for p, s in zip(encoders, embedding_scans)},
        "errors": {"rows": errors["rows"]},
    }


def _text_was_on(output: str, storage_options: dict) -> bool:
    config = (read_run_summary(output, storage_options) or {}).get("config") or {}
    return bool((config.get("encode_text") or {}).get("enabled", False))
