"""The trainer layouts by name, for `latentforge export` and the `export:` config key."""

from __future__ import annotations

from latentforge.formats.export.base import Exporter
from latentforge.formats.export.cogvideox import CogVideoXExporter
from latentforge.formats.export.fastvideo import FastVideoExporter
from latentforge.formats.export.ltx2 import LTX2Exporter
from latentforge.formats.export.musubi import MusubiExporter

EXPORTERS: dict[str, Exporter] = {e.name: e for e in (LTX2Exporter(), FastVideoExporter(), CogVideoXExporter(), MusubiExporter())}
