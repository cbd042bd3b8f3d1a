"""Run the chosen sections and write the report page atomically."""

from __future__ import annotations

import datetime
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import deepscope
from deepscope.errors import DeepscopeError, ImageError, did_you_mean
from deepscope.fileio import check_writable, display_path, write_text
from deepscope.report.base import ReportContext, SaliencyCard, Section
from deepscope.report.sections import SECTIONS

REPORT_FILE = "report.html"


def parse_sections(text: str | Sequence[str] | None) -> list[str]:
    """Section names from ``"model,saliency"`` (or a list), in page order; None or ``"all"`` gives all."""
    if text is None or text == "all":
        return list(SECTIONS)
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    for name in names:
        if name not in SECTIONS:
            raise DeepscopeError(f"--sections: unknown section {name!r}.{did_you_mean(name, SECTIONS)} "
                                 f"Available: {', '.join(SECTIONS)}.")
    if not names:
        raise DeepscopeError(f"--sections is empty; choose from {', '.join(SECTIONS)}.")
    return [name for name in SECTIONS if name in names]


def report_path(out: str | Path) -> Path:
    """The page file inside the output folder ``out``."""
    return Path(out) / REPORT_FILE


def build_sections(ctx: ReportContext, names: Sequence[str], log=None) -> list[Section]:
    """Build each named section, timing it (every random draw comes from a generator seeded by the settings)."""
    sections = []
    for name in names:
        with ctx.timer.step(name):
            section = SECTIONS[name](ctx)
        section.seconds = ctx.timer.seconds[name]
        sections.append(section)
        if log:
            log(f"section {name}: {section.seconds:.1f} s")
    return sections


def write_report(ctx: ReportContext, out: str | Path, sections: str | Sequence[str] | None = None, *,
                 overwrite: bool = False, log=None) -> Path:
    """Build the ``sections`` (default: all) and write ``out/report.html``; returns its path.

    Refuses to replace an existing page unless ``overwrite`` (before the work, and atomically when the page is
    put in place, so of two reports racing for one new folder exactly one is written). The page is written to
    a temporary file and renamed, so an interrupted run leaves the old page or none, never half a page.
    """
    from deepscope.render.report import render_page

    path = check_writable(report_path(out), overwrite)
    names = parse_sections(sections)
    started = datetime.datetime.now().astimezone()
    ctx.new_run()
    with ctx.timer.step("classify images"):
        readable = ctx.classification().paths
    if not readable:
        raise ImageError(f"none of the {len(ctx.images)} image(s) in {display_path(ctx.images.root)} can be read; "
                         "the report needs at least one.")
    if log:
        log(f"classify images: {ctx.timer.seconds['classify images']:.1f} s")
    built = build_sections(ctx, names, log)
    methods: list[str] = []
    for section in built:
        for n, item in enumerate(section.items):
            if isinstance(item, SaliencyCard):
                item.key = f"card-{section.name}-{n}"
                methods += [layer.method for layer in item.layers if layer.method not in methods]
    html = render_page(title=f"deepscope report: {ctx.loaded.name}", model_name=ctx.loaded.name,
                       image_root=str(ctx.images.root), image_count=len(ctx.images),
                       generated=started.strftime("%Y-%m-%d %H:%M %Z"), sections=built, methods=methods,
                       footer=footer(ctx))
    return write_text(path, html, overwrite=overwrite)


def footer(ctx: ReportContext) -> dict:
    """Versions, settings and time per step, for the page's footer."""
    import torchvision

    versions = [("deepscope", deepscope.__version__), ("torch", torch.__version__),
                ("torchvision", torchvision.__version__), ("python", platform.python_version()),
                ("platform", f"{platform.system()} {platform.machine()}"),
                ("torch threads", str(torch.get_num_threads()))]
    times = [(name, f"{seconds:.1f} s") for name, seconds in ctx.timer.seconds.items()]
    times.append(("total", f"{ctx.timer.total:.1f} s"))
    cache = "off" if ctx.cache.folder is None else f"{ctx.cache.folder} ({ctx.cache.hits} hits, {ctx.cache.misses} computed)"
    return {"versions": versions, "settings": ctx.settings.as_rows() + [("cache", cache)], "times": times,
            "command": " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith(("deepscope", "cli.py")) else ""}
