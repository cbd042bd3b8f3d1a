# Two commands on a fresh machine (each sets everything up first, once):
#   make report   the main job on the built-in default model and photos: deepscope-report/report.html
#   make test     the tests (reference data: DEEPSCOPE_DATA, default ../shared/data beside the repository)
# and `make serve` starts the explorer on the built-in default (http://127.0.0.1:8000/).
# The set-up is scripts/setup.sh: a virtual environment in .venv with deepscope, its test dependencies and,
# when run as root on Debian, headless Chromium for the browser tests. It reruns when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
READY := $(VENV)/.deepscope-ready

.PHONY: setup report test serve

setup: $(READY)

$(READY): pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh
	touch $@

report: $(READY)
	$(VENV)/bin/deepscope report --force

test: $(READY)
	$(VENV)/bin/python -m pytest -q

serve: $(READY)
	$(VENV)/bin/deepscope serve
