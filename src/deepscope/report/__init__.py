"""The deepscope report: one self-contained HTML page that shows how a model reaches its predictions.

>>> from deepscope.report import ReportContext, ReportSettings, write_report
>>> ctx = ReportContext(load_model("default"), builtin_images(), ReportSettings(per_class=1))
>>> write_report(ctx, "out/report", sections="model,saliency")

Sections are functions ``build(context) -> Section`` listed in :data:`deepscope.report.sections.SECTIONS`.
"""

from deepscope.report.base import (Facts, Figure, Gallery, MapLayer, Note, ReportContext, ReportSettings,
                                   SaliencyCard, Section, Table, Timer)
from deepscope.report.build import parse_sections, report_path, write_report
from deepscope.cache import Cache, default_cache_dir

__all__ = ["Cache", "Facts", "Figure", "Gallery", "MapLayer", "Note", "ReportContext", "ReportSettings",
           "SaliencyCard", "Section", "Table", "Timer", "default_cache_dir", "parse_sections", "report_path",
           "write_report"]
