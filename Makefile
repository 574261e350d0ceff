# Developer entry points. PYTHON defaults to the project venv (see README set-up).
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
ML2P_MODEL ?= models/zoo/default
export ML2P_MODEL

.PHONY: proto serve test lint compose-check

proto:  ## generate the gRPC stubs into service/_generated/ (also done on first import)
	$(PYTHON) -m service.protos

serve: proto  ## run REST (:8000) + gRPC (:50051) on $(ML2P_MODEL)
	$(PYTHON) -m service.cli serve

test: proto  ## the whole test-suite
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .

compose-check: proto  ## check docker-compose.yml, docker/, deploy/ against the code (+ real Prometheus if installed)
	$(PYTHON) -m pytest tests/deploy -q

.PHONY: bench-paper
BUDGET ?= small
bench-paper:  ## the paper's comparison (ConSE/Fast0Tag/LESA/BiAM/ML2P, ablations, cost) → benchmarks/results/paper_comparison.*
	$(PYTHON) -m service.cli bench paper --budget $(BUDGET)
