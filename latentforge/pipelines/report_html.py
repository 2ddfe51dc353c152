"""The run report: `report.html` beside the output (one self-contained file, its figures inlined
as base64 PNG) and the same figures as PNG files under `report/` (docs/report.md).

`build_report` runs at the end of every `latentforge run` that writes latents and from
`latentforge inspect OUTPUT --report`; the numbers come from `report.collect` (Ray tasks over
the shards and run.json), the figures from `report_figures`, the contact sheets from
`report.contact_sheets` (prepare's own decode and crop, in Ray tasks).
"""

from __future__ import annotations

import base64
import html
import json
import logging
from typing import Any

from latentforge.pipelines.report import collect, contact_sheets
from latentforge.storage import get_fs, join, write_bytes_atomic

log = logging.getLogger("latentforge")

REPORT_HTML = "report.html"
REPORT_DIR = "report"

STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#1f2933;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;border-bottom:1px solid #d9e2ec;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #d9e2ec;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#7b8794;font-size:12px}
img.fig{max-width:100%;display:block;margin:8px 0}.tiles{display:flex;flex-wrap:wrap;gap:14px}
.tile{border:1px solid #d9e2ec;padding:6px;background:#fafbfc}.tile img{display:block;max-width:520px;image-rendering:pixelated}
pre{background:#f5f7fa;padding:8px;font-size:11px;max-height:420px;overflow:auto}.err{color:#d64545}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str, cls: str = "fig", data: str = "") -> str:
    return f'<img class="{cls}" alt="{_esc(alt)}"{data} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _table(head: list[str], rows: list[list[Any]], attrs: list[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="n">{v}</td>' if isinstance(v, (int, float)) else f"<td>{_esc(v)}</td>" for v in row)
        out.append(f"<tr{attrs[i] if attrs else ''}>{cells}</tr>")
    return "".join(out) + "</table>"


def _section(title: str, *parts: str) -> str:
    return f"<h2>{_esc(title)}</h2>" + "".join(p for p in parts if p)


def render(summary: dict[str, Any], figures: dict[str, bytes], tiles: list[dict[str, Any]]) -> str:
    """The report page as one string (no external asset: figures are data: URLs)."""
    run = summary["run"]
    lat, err = summary["latents"], summary["errors"]
    fig = lambda name, alt: _img(figures[name], alt) if name in figures else ""  # noqa: E731
    counts = run.get("counts") or {}
    head = [
        f"<h1>latentforge run report</h1><div class='muted'>{_esc(summary['output'])} &middot; pipeline "
        f"{_esc(run.get('pipeline') or (run.get('config') or {}).get('pipeline', '?'))} &middot; "
        f"{_esc(run.get('started_at', '?'))} &rarr; {_esc(run.get('finished_at', '?'))} &middot; wall "
        f"{_esc(run.get('wall_seconds', '?'))}s &middot; model {_esc((run.get('model') or {}).get('preset') or (run.get('config') or {}).get('model', '?'))}</div>"
    ]
    overview = _table(
        ["what", "value"],
        [["latent rows (all runs)", lat["rows"]], ["buckets", len(lat["buckets"])], ["error rows (latest run)", err["rows"]],
         ["images among latents", lat["images"]], ["frames encoded", lat["frames"]], ["size on storage", human_bytes(summary["bytes"])]]
        + [[f"embeddings: {k}", v["rows"]] for k, v in summary["embeddings"].items()]
        + [[f"run.json {k}", v] for k, v in counts.items() if isinstance(v, (int, float))],
    )
    buckets = lat["buckets"]
    bucket_table = _table(
        ["bucket", "samples", "share"],
        [[name, e["rows"], f"{100 * e['rows'] / max(1, lat['rows']):.1f}%"] for name, e in buckets.items()],
        [f' data-bucket="{_esc(name)}" data-rows="{e["rows"]}"' for name, e in buckets.items()],
    )
    tile_html = []
    for t in tiles:
        caption = f"<div><b>{_esc(t['bucket'])}</b> <span class='muted'>{_esc(t['sample_id'])} &middot; {_esc(t['uri'])}</span></div>"
        if t.get("png"):
            body = _img(t["png"], f"bucket {t['bucket']}", "contact", f' data-bucket="{_esc(t["bucket"])}"')
            caption += "<div class='muted'>first / middle / last of its frames, cropped by prepare's load_frames</div>"
        else:
            body = f"<div class='err'>could not re-decode: {_esc(t.get('error'))}</div>"
        tile_html.append(f"<div class='tile'>{caption}{body}</div>")
    error_rows = [[kind, e["stage"], e["count"], "; ".join(e["examples"])] for kind, e in err["errors"].items()]
    error_attrs = [f' data-kind="{_esc(kind)}" data-count="{e["count"]}"' for kind, e in err["errors"].items()]
    timing = _table(
        ["figure", "value"],
        [["wall seconds", run.get("wall_seconds", "-")], ["seconds to the first task (Ray start, planning)", run.get("first_task_seconds") or "-"]]
        + [[f"pass {k} (wall s)", v] for k, v in (run.get("phase_wall_seconds") or {}).items()],
    )
    dpsf = run.get("decoded_per_source_frame")
    decode_note = (
        f"<p>decoded per source frame: <b>{dpsf}</b> (1.0: each frame of the split videos decoded once)</p>" if dpsf is not None
        else f"<p class='muted'>No scene split in this run: decoded frames against frames encoded "
        f"({sum((run.get('decoded_frames') or {}).values())} / {lat['frames']}).</p>"
    )
    body = [
        *head,
        _section("Overview", overview),
        _section("Samples per bucket", bucket_table, fig("buckets", "samples per bucket")),
        _section("Contact sheets (cropped as prepare made them, before the VAE)", f"<div class='tiles'>{''.join(tile_html)}</div>" if tile_html else "<p class='muted'>no latent rows</p>"),
        _section("Clip length and aspect ratio", fig("clip_length", "clip length"), fig("aspect_ratio", "aspect ratio")),
        _section("Scenes per source video", fig("scenes_per_source", "scenes per source")),
        _section("Errors by stage and kind", _table(["kind", "stage", "rows", "example files"], error_rows, error_attrs) if error_rows else "<p>No error rows.</p>", fig("errors", "errors")),
        _section("Where the time went", timing, fig("stage_seconds", "busy time per stage"), fig("throughput", "throughput"), fig("wall_time", "wall time")),
        _section("Decoded frames", decode_note, fig("decoded_frames", "decoded frames")),
        _section("Config and versions", _table(["package", "version"], [[k, v] for k, v in (run.get("versions") or {}).items()]),
                 f"<pre>{_esc(json.dumps(run.get('config') or {}, indent=1))}</pre>"),
    ]
    return f"<!doctype html><html><head><meta charset='utf-8'><title>latentforge report: {_esc(summary['output'])}</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>"


def _write(url: str, data: bytes, content_type: str, storage_options: dict) -> None:
    """Whole or not at all; on S3 with its Content-Type, so a browser shows the page from a
    presigned or static-website URL instead of downloading it."""
    fs, path = get_fs(url, storage_options)
    if "s3" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)):
        fs.pipe_file(path, data, ContentType=content_type)
    else:
        write_bytes_atomic(fs, path, data)


def tile_name(bucket: str) -> str:
    return f"contact-bucket={bucket}.png"


def build_report(output: str, storage_options: dict | None = None, contact: bool = True) -> dict[str, Any]:
    """Scan the output on Ray, draw, write report.html and report/*.png; returns what it wrote."""
    so = storage_options or {}
    summary = collect(output, so)
    from latentforge.pipelines.report_figures import render_all  # matplotlib loads only here

    figures = render_all(summary)
    tiles = contact_sheets(summary, so) if contact else []
    page = render(summary, figures, tiles)
    fs, folder = get_fs(join(output, REPORT_DIR), so)
    if fs.exists(folder):
        fs.rm(folder, recursive=True)  # figures of an earlier report (a bucket since gone) go
    files = {f"{name}.png": png for name, png in figures.items()}
    files.update({tile_name(t["bucket"]): t["png"] for t in tiles if t.get("png")})
    for name, png in files.items():
        _write(join(output, REPORT_DIR, name), png, "image/png", so)
    _write(join(output, REPORT_HTML), page.encode("utf-8"), "text/html; charset=utf-8", so)
    return {
        "html": join(output, REPORT_HTML),
        "figures": sorted(files),
        "buckets": {k: v["rows"] for k, v in summary["latents"]["buckets"].items()},
        "errors": {k: v["count"] for k, v in summary["errors"]["errors"].items()},
        "contact_tiles": sum(1 for t in tiles if t.get("png")),
    }


def report_after_run(cfg: Any) -> dict[str, Any]:
    """The report at the end of a run: never fails it. What happened goes into run.json's
    `report` field ({"html", "figures"} or {"error"})."""
    try:
        made = build_report(cfg.output, cfg.storage_options)
        log.info("report: %s (%d PNG files under %s/, %d contact tiles)", made["html"], len(made["figures"]), REPORT_DIR, made["contact_tiles"])
        return {"html": REPORT_HTML, "png_files": len(made["figures"]), "contact_tiles": made["contact_tiles"]}
    except Exception as e:  # noqa: BLE001 - a report is a convenience; the run's shards are what count
        from latentforge.rows import redact_credentials

        message = redact_credentials(f"{type(e).__name__}: {e}")[:500]
        log.warning("latentforge: the run report could not be built (%s); the output itself is complete", message)
        return {"error": message}
