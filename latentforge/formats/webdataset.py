"""WebDataset tar shards -> rows: each key's media member, captioned by its .txt or .json.

A shard is an uncompressed `.tar` whose members are grouped into samples by key, as webdataset
and Hugging Face `datasets` group them: the key is the member path up to the first "." of its
file name, the rest is the field (`clips/000.mp4` -> key `clips/000`, field `mp4`;
`000.caption.txt` -> field `caption.txt`). Per key:

- media: the first member whose last extension is a video (`.mp4 .webm .mov ...`); else the
  first image (`.jpg .png ...`; a video's thumbnail never wins over the video).
- caption: the first text member (field `txt`, `text`, `caption`, `prompt`, or any field ending
  in `.txt`), else the first `.json` member's caption field (`JSON_CAPTION_FIELDS`, the first
  present and non-null; a list gives its first non-blank string). No caption member, or a json
  without any of those fields, means caption None ("not captioned yet").
- the row's `uri` is `tar://<member>::<shard url>` (fsspec's chained URL; `storage.open_input`
  and `operators.probe.open_media` open it as a byte range of the shard on any worker, local
  path or object store), and `key` / `shard` pass through.

Bad entries become error rows (error_stage "source") naming the file and the reason: a key
without media, a caption file that is not UTF-8 or not valid JSON, a member cut off by the end
of the file, and a shard that is not a readable tar (one error row for the shard; the other
shards are still read). Hidden members (`._000.mp4`, macOS metadata) are skipped.

`read_shard` reads one shard and knows nothing of the others, so a later Ray Data reader can
call it once per shard on the workers; today `read_webdataset` calls it on the driver for each
shard in sorted order. Reading a shard reads its headers (one seek per member) and its caption
members, never the media bytes.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from typing import Any

import fsspec

from latentforge.formats.manifest_files import ManifestError, media_type_of, with_extension
from latentforge.formats.manifest_readers import STAGE, Plan, make_row, read_each
from latentforge.rows import error_row
from latentforge.storage import normalize_member, tar_index, tar_member_url, to_url

SHARD_EXTENSION = ".tar"
TEXT_FIELDS = ("txt", "text", "caption", "prompt")
JSON_CAPTION_FIELDS = ("caption", "text", "prompt", "txt", "captions", "prompts", "description", "long_caption", "short_caption")


def shard_files(fs: fsspec.AbstractFileSystem, files: list[str]) -> list[str]:
    """The tar shards among listed files (sorted, as `list_files` gives them)."""
    return with_extension(files, SHARD_EXTENSION)


def read_webdataset(fs: fsspec.AbstractFileSystem, plan: Plan) -> list[dict[str, Any]]:
    """Every shard of the plan (a folder of .tar files, or one .tar), in sorted order."""
    if plan.is_dir:
        return read_each(fs, plan, SHARD_EXTENSION, read_shard, "shards for webdataset")
    return read_shard(fs, plan.path, to_url(fs, plan.path))


def read_shard(fs: fsspec.AbstractFileSystem, path: str, url: str) -> list[dict[str, Any]]:
    """The rows of one shard, in key order of first appearance; a bad shard is one error row."""
    try:
        with fs.open(path, "rb") as f:
            index = tar_index(f)
            size = f.size if isinstance(getattr(f, "size", None), int) else fs.size(path)
            samples = _group(index)
            wanted = {m for sample in samples.values() for m in _caption_members(sample)}
            texts = {m: _read_member(f, *index[m]) for m in sorted(wanted, key=lambda m: index[m][0])}
    except (tarfile.TarError, OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise ManifestError(f"{url}: shard not found") from None
        reason = str(e).strip() or type(e).__name__
        return [_shard_error(url, f"unreadable tar ({url}: {reason})")]
    if not samples:
        return [_shard_error(url, f"empty shard, no members ({url})")]
    return [_sample_row(url, key, sample, index, texts, size) for key, sample in samples.items()]


def _group(index: dict[str, tuple[int, int]]) -> dict[str, dict[str, str]]:
    """key -> {field: member}, keys in order of first appearance; hidden members skipped."""
    samples: dict[str, dict[str, str]] = {}
    for member in index:
        folder, name = posixpath.split(normalize_member(member))
        if not name or name.startswith("."):
            continue
        stem, dot, field = name.partition(".")
        key = posixpath.join(folder, stem) if folder else stem
        samples.setdefault(key, {}).setdefault(field.lower() if dot else "", member)
    return samples


def _media_member(sample: dict[str, str]) -> tuple[str, str] | None:
    for kind in ("video", "image"):
        for field, member in sample.items():
            if media_type_of("x." + field) == kind:
                return member, kind
    return None


def _caption_members(sample: dict[str, str]) -> list[str]:
    """The one member a key's caption comes from (text first, then json), as a list."""
    for field, member in sample.items():
        if field in TEXT_FIELDS or field.endswith(".txt"):
            return [member]
    for field, member in sample.items():
        if field == "json" or field.endswith(".json"):
            return [member]
    return []


def _read_member(f: Any, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _sample_row(
    shard_url: str,
    key: str,
    sample: dict[str, str],
    index: dict[str, tuple[int, int]],
    texts: dict[str, bytes],
    shard_size: int,
) -> dict[str, Any]:
    extras = {"key": key, "shard": shard_url}
    media = _media_member(sample)
    if media is None:
        row = make_row(shard_url, None, None, extras, caption_required=False)
        found = ", ".join(sorted(sample.values()))
        return error_row(row, STAGE, f"no media file for key {key} ({shard_url}: {found})")
    member, _ = media
    uri = tar_member_url(shard_url, member)
    row = _member_row(uri, member, None, extras)
    if "::" in member:
        return error_row(row, STAGE, f"member name contains '::', which URLs cannot carry ({member} in {shard_url})")
    for name in (member, *_caption_members(sample)):
        offset, size = index[name]
        if offset + size > shard_size:
            return error_row(row, STAGE, f"member cut off by the end of the shard ({tar_member_url(shard_url, name)})")
    caption_members = _caption_members(sample)
    if not caption_members:
        return row
    caption_url = tar_member_url(shard_url, caption_members[0])
    try:
        caption = _caption(caption_members[0], texts[caption_members[0]])
    except ValueError as e:
        return error_row(row, STAGE, f"{e} ({caption_url})")
    return _member_row(uri, member, caption, extras)


def _member_row(uri: str, member: str, caption: Any, extras: dict[str, Any]) -> dict[str, Any]:
    """make_row's checks (caption, media type from the member's name), with the member's URL."""
    row = make_row("/", member, caption, extras, caption_required=False)
    row["uri"] = uri
    return row


def _caption(member: str, data: bytes) -> Any:
    """The caption in a text or json member; ValueError says what is wrong with the file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("caption file is not UTF-8") from None
    if not member.lower().endswith(".json"):
        return text
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"caption file is not valid JSON, {e.msg} at line {e.lineno}") from None
    if not isinstance(record, dict):
        raise ValueError("caption file is not a JSON object")
    for field in JSON_CAPTION_FIELDS:
        value = record.get(field)
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if value is not None:
            return value
    return None


def _shard_error(shard_url: str, reason: str) -> dict[str, Any]:
    row = make_row(shard_url, shard_url, None, {"key": None, "shard": shard_url}, caption_required=False)
    return error_row({**row, "media_type": None}, STAGE, reason)
