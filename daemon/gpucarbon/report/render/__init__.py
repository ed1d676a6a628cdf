"""One renderer per output format; each takes a Report and returns text."""

from __future__ import annotations

from collections.abc import Callable

from gpucarbon.report.model import Report

FORMATS = ("table", "csv", "json", "markdown", "html")


def renderer(fmt: str) -> Callable[[Report], str]:
    if fmt == "table":
        from gpucarbon.report.render.table import render
    elif fmt == "csv":
        from gpucarbon.report.render.csv import render
    elif fmt == "json":
        from gpucarbon.report.render.json import render
    elif fmt == "markdown":
        from gpucarbon.report.render.markdown import render
    elif fmt == "html":
        from gpucarbon.report.render.html import render
    else:
        raise ValueError(fmt)
    return render
