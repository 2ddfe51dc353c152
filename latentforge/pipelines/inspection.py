"""`latentforge inspect OUTPUT`: an output at a glance in a terminal (docs/report.md).

The summary is `report.collect` (Ray tasks over the shards, column projection). `--sample ID`
finds one row with a filtered Parquet read (a pyarrow dataset filter on `sample_id`, tensor
bytes never read), plus its caption's embedding shapes and its error row if it failed.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.dataset as pads

from latentforge.formats.shards import EMBEDDINGS, ERRORS, LATENTS, shard_paths
from latentforge.pipelines.report_html import human_bytes
from latentforge.storage import get_fs, join

CONFIG_KEYS = ("input", "output", "model", "model_path", "buckets", "pipeline")


def is_output(output: str, storage_options: dict | None = None) -> bool:
    """Whether `output` holds a latentforge output: a run.json or a latents/ table."""
    for name in ("run.json", LATENTS):
        fs, path = get_fs(join(output, name), storage_options)
        if fs.exists(path):
            return True
    return False


def summary_lines(s: dict[str, Any]) -> list[str]:
    """The terminal summary of `report.collect`'s result."""
    run = s.get("run") or {}
    lat, err = s["latents"], s["errors"]
    lines = [f"output:   {s['output']}  ({human_bytes(s['bytes'])} on storage)"]
    if run:
        lines.append(f"run:      {run.get('pipeline') or (run.get('config') or {}).get('pipeline', '?')}, finished {run.get('finished_at', '?')}, "
                     f"{run.get('wall_seconds', '?')}s wall, latentforge {run.get('latentforge', '?')}")
    else:
        lines.append("run:      no run.json")
    lines.append(f"latents:  {lat['rows']} rows in {lat['shards']} shards ({human_bytes(lat['bytes'])}), {lat['frames']} frames encoded"
                 + (f", {lat['unreadable']} shards do not open (latentforge verify)" if lat["unreadable"] else ""))
    lines.append("buckets:")
    width = max((len(b) for b in lat["buckets"]), default=0)
    for name, entry in lat["buckets"].items():
        lines.append(f"  {name:<{width}}  {entry['rows']}")
    lines.append("encoders:" + ("" if s["embeddings"] else " none"))
    for name, entry in s["embeddings"].items():
        lines.append(f"  {name}  {entry['rows']} embeddings ({human_bytes(entry['bytes'])})")
    lines.append(f"errors:   {err['rows']}" + (" by kind:" if err["errors"] else ""))
    for kind, entry in err["errors"].items():
        lines.append(f"  {kind}: {entry['count']}" + (f"  e.g. {entry['examples'][0]}" if entry["examples"] else ""))
    config = run.get("config") or {}
    if config:
        lines.append("config:   " + ", ".join(f"{k}={config.get(k)}" for k in CONFIG_KEYS if config.get(k) is not None))
        lines.append(f"          (full config, with credentials masked: {join(s['output'], 'run.json')})")
    return lines


def _find(output: str, table: str, column: str, value: str, storage_options: dict | None, partitioned: bool = False) -> list[dict[str, Any]]:
    """Rows of one table whose `column` equals `value`: a pyarrow dataset filter, every column
    but the tensor bytes (shapes and dtypes say what they hold)."""
    fs, root = get_fs(join(output, table), storage_options)
    paths = shard_paths(fs, root)
    if not paths:
        return []
    kwargs = {"partitioning": "hive", "partition_base_dir": root} if partitioned else {}
    data = pads.dataset(paths, filesystem=fs, format="parquet", **kwargs)
    if column not in data.schema.names:
        return []
    columns = [n for n in data.schema.names if not n.endswith("_bytes")]
    return data.to_table(columns=columns, filter=pads.field(column) == value).to_pylist()


def sample(output: str, sample_id: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """One sample's metadata and tensor shapes: its latent row, its caption's embeddings (per
    encoder) and its error row, whichever exist; None when the id is nowhere."""
    so = storage_options or {}
    latents = _find(output, LATENTS, "sample_id", sample_id, so, partitioned=True)
    errors = _find(output, ERRORS, "sample_id", sample_id, so)
    if not latents and not errors:
        return None
    out: dict[str, Any] = {"sample_id": sample_id, "latent": latents[0] if latents else None, "error": errors[0] if errors else None}
    caption_id = (latents[0] if latents else errors[0]).get("caption_id")
    if caption_id:
        fs, root = get_fs(join(output, EMBEDDINGS), so)
        encoders = [p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)] if fs.exists(root) else []
        out["embeddings"] = {}
        for name in sorted(e for e in encoders if e.startswith("encoder=")):
            found = _find(output, f"{EMBEDDINGS}/{name}", "caption_id", caption_id, so)
            out["embeddings"][name.split("=", 1)[1]] = found[0] if found else None
    return out


def sample_lines(found: dict[str, Any]) -> list[str]:
    lines = [f"sample {found['sample_id']}"]
    for label in ("latent", "error"):
        row = found.get(label)
        if row:
            lines.append(f"{label} row:")
            lines += [f"  {k}: {json.dumps(v, default=str)}" for k, v in row.items()]
    for name, row in (found.get("embeddings") or {}).items():
        if row is None:
            lines.append(f"embedding ({name}): none for this caption_id")
        else:
            tensors = ", ".join(f"{k[:-6]} {row[k]} {row.get(k[:-6] + '_dtype')}" for k in row if k.endswith("_shape"))
            lines.append(f"embedding ({name}): {tensors}, length {row.get('length')}")
    return lines
