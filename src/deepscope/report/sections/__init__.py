"""The report's sections, in page order: ``SECTIONS[name] = build(context) -> Section``.

Adding a section is one module with one function and one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from deepscope.report.base import ReportContext, Section
from deepscope.report.sections.model import model_section
from deepscope.report.sections.saliency import saliency_section

SECTIONS: dict[str, Callable[[ReportContext], Section]] = {
    "model": model_section,
    "saliency": saliency_section,
}
