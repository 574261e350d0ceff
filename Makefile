# Developer entry points. PYTHON defaults to the project venv (see README set-up).
PYTHON ?= $(shell test -x .venv/bin/python && echo .venv/bin/python || echo python3)
ML2P_MODEL ?= models/zoo/default
export ML2P_MODEL
DEFAULT_ARTIFACT := models/zoo/default
WEIGHTS := models/weights/default.pt

.PHONY: install proto model serve test lint compose-check

install: .venv/.installed  ## venv with the CPU torch build and every extra (train, dev)

# the serving dependencies at the locked versions the images use, so tests run what ships
.venv/.installed: pyproject.toml requirements/serving.lock
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
	.venv/bin/pip install -q --disable-pip-version-check -e '.[train,dev]' \
		-c requirements/serving.lock
	touch $@

proto:  ## generate the gRPC stubs into service/_generated/ (also done on first import)
	$(PYTHON) -m service.protos

model: $(DEFAULT_ARTIFACT)/manifest.json  ## build the default artifact from the committed weights (cached)

$(DEFAULT_ARTIFACT)/manifest.json: $(WEIGHTS) models/weights/default.calibration.npz \
		models/weights/default.int8.json benchmarks/results/accuracy.json
	$(PYTHON) -m ml2p_cli export $(WEIGHTS) --out $(DEFAULT_ARTIFACT) --version 0.1.0 \
		--calibration models/weights/default.calibration.npz \
		--int8-ranges models/weights/default.int8.json \
		--accuracy benchmarks/results/accuracy.json

serve: install proto $(if $(filter $(DEFAULT_ARTIFACT),$(ML2P_MODEL)),model)  ## install if needed, then REST (:8000) + gRPC (:50051) on $(ML2P_MODEL)
	$(PYTHON) -m ml2p_cli serve

test: install proto model  ## the whole test-suite (builds the default artifact first: the real-model tests serve it)
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .

.PHONY: lock audit
LOCK := requirements/serving.lock
lock: install  ## upgrade the serving (base) dependencies in the venv, then pin them → $(LOCK)
	$(PYTHON) -m pip install -q --disable-pip-version-check --upgrade -e .
	$(PYTHON) .ci/lock.py -o $(LOCK)

audit: install  ## pip-audit $(LOCK); fails on fixable vulnerabilities not in .ci/audit-allowlist.toml
	$(PYTHON) .ci/audit.py $(LOCK) --allowlist .ci/audit-allowlist.toml

compose-check: proto  ## check docker-compose.yml, docker/ against the code (+ real Prometheus if installed)
	$(PYTHON) -m pytest tests/deploy -q

.PHONY: bench-paper
BUDGET ?= small
bench-paper:  ## the paper's comparison (ConSE/Fast0Tag/LESA/BiAM/ML2P, ablations, cost) → benchmarks/results/paper_comparison.*
	$(PYTHON) -m ml2p_cli bench paper --budget $(BUDGET) $(ARGS)
