# Two commands: `make reports/<paper>` (e.g. make reports/feddf) and `make test`.
# Both create .venv on first use and install the pinned dependencies declared in pyproject.toml.
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
SCALE ?= quick

.PHONY: test venv FORCE
venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))' > $(VENV)/requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check -r $(VENV)/requirements.txt
	touch $(STAMP)

# quick: reports/<paper> (committed); smoke/paper: reports/<scale>/<paper>; SEEDS=0,1 (every seed list of the
# scale replaced): reports/<scale>-seeds-0-1/<paper>. A lock left by a killed run is removed first when no
# Snakemake is running here, so the same command resumes.
comma := ,
BUILD = $(SCALE)$(if $(SEEDS),-seeds-$(subst $(comma),-,$(SEEDS)))
reports/%: FORCE $(STAMP)
	@$(PY) -m common.workflow unlock-if-stale .
	$(VENV)/bin/snakemake $(if $(filter quick,$(BUILD)),reports/$*,reports/$(BUILD)/$*) --config scale=$(SCALE) \
		$(if $(SEEDS),seeds=[$(SEEDS)])

test: $(STAMP)
	$(PY) -m pytest

FORCE:
