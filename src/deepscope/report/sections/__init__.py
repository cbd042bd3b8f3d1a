"""The report's sections, in page order: ``SECTIONS[name] = build(context) -> Section``.

Adding a section is one module with one function and one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from deepscope.report.base import ReportContext, Section
from deepscope.report.sections.classviz import classviz_section
from deepscope.report.sections.features import features_section
from deepscope.report.sections.filters import filters_section
from deepscope.report.sections.model import model_section
from deepscope.report.sections.neurons import neurons_section
from deepscope.report.sections.saliency import saliency_section
from deepscope.report.sections.trust import trust_section

SECTIONS: dict[str, Callable[[ReportContext], Section]] = {
    "model": model_section,
    "filters": filters_section,
    "features": features_section,
    "saliency": saliency_section,
    "neurons": neurons_section,
    "classviz": classviz_section,
    "trust": trust_section,
}
