"""The trainer layouts by name, for `latentforge export` and the `export:` config key.

Each exporter is imported when its name is first looked up: the layouts write torch files, and
a run without `export:` (or the driver checking a name) never needs torch for them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from latentforge.formats.export.base import Exporter

NAMES = ("ltx2", "fastvideo", "cogvideox", "musubi")


def _make(name: str) -> Exporter:
    if name == "ltx2":
        from latentforge.formats.export.ltx2 import LTX2Exporter

        return LTX2Exporter()
    if name == "fastvideo":
        from latentforge.formats.export.fastvideo import FastVideoExporter

        return FastVideoExporter()
    if name == "cogvideox":
        from latentforge.formats.export.cogvideox import CogVideoXExporter

        return CogVideoXExporter()
    from latentforge.formats.export.musubi import MusubiExporter

    return MusubiExporter()


class _Exporters(Mapping):
    """name -> Exporter instance, made on first use."""

    def __init__(self) -> None:
        self._made: dict[str, Exporter] = {}

    def __getitem__(self, name: str) -> Exporter:
        if name not in NAMES:
            raise KeyError(name)
        if name not in self._made:
            self._made[name] = _make(name)
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)


EXPORTERS: Mapping[str, Exporter] = _Exporters()
