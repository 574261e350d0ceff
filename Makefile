# Developer entry points. PYTHON defaults to the project venv (see README set-up).
PYTHON ?= $(shell test -x .venv/bin/python && echo .venv/bin/python || echo python3)
ML2P_MODEL ?= models/zoo/default
export ML2P_MODEL
DEFAULT_ARTIFACT := models/zoo/default
WEIGHTS := models/weights/default.pt

.PHONY: install proto client test-client model serve test lint compose-check

install: .venv/.installed .venv/.client  ## venv with the CPU torch build, every extra (train, dev) and the client

# the serving dependencies at the locked versions the images use, so tests run what ships
.venv/.installed: pyproject.toml requirements/serving.lock
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
	.venv/bin/pip install -q --disable-pip-version-check -e '.[train,dev]' \
		-c requirements/serving.lock
	touch $@

# the gRPC stubs are generated into the ml2p-client wheel when it is built; the server imports
# them from the installed client (one copy of ml2p.v1 per process)
CLIENT_SOURCES := proto/tagger.proto clients/python/setup.py clients/python/pyproject.toml \
	$(wildcard clients/python/ml2p_client/*.py)

client:  ## build the ml2p-client wheel, gRPC stubs inside, into dist/
	rm -f dist/ml2p_client-*.whl
	$(PYTHON) -m pip wheel -q --no-deps --no-build-isolation ./clients/python -w dist

proto: client  ## regenerate the gRPC stubs after a change to proto/tagger.proto: rebuild and install the client
	$(PYTHON) -m pip install -q --no-deps --force-reinstall dist/ml2p_client-*.whl

.venv/.client: .venv/.installed $(CLIENT_SOURCES)
	$(MAKE) proto PYTHON=.venv/bin/python
	touch $@

model: $(DEFAULT_ARTIFACT)/manifest.json  ## build the default artifact from the committed weights (cached)

# the exporter is a prerequisite too: a changed export (e.g. a new graph) rebuilds the artifact
$(DEFAULT_ARTIFACT)/manifest.json: $(WEIGHTS) models/weights/default.calibration.npz \
		models/weights/default.int8.json benchmarks/results/accuracy.json \
		models/export.py models/quantize.py
	$(PYTHON) -m ml2p_cli export $(WEIGHTS) --out $(DEFAULT_ARTIFACT) --version 0.2.0 \
		--calibration models/weights/default.calibration.npz \
		--int8-ranges models/weights/default.int8.json \
		--accuracy benchmarks/results/accuracy.json

serve: install $(if $(filter $(DEFAULT_ARTIFACT),$(ML2P_MODEL)),model)  ## install if needed, then REST (:8000) + gRPC (:50051) on $(ML2P_MODEL)
	$(PYTHON) -m ml2p_cli serve

test: install model  ## the whole test-suite (builds the default artifact first: the real-model tests serve it), then the client's
	$(PYTHON) -m pytest -q
	$(MAKE) test-client

# the client as `pip install` users get it: its wheel in a fresh virtual environment, without
# the source tree on the path, against real servers run by the project's environment
test-client: install  ## the ml2p-client wheel's own suite (REST and gRPC against real servers)
	rm -rf .client-venv
	python3 -m venv .client-venv
	.client-venv/bin/pip install -q dist/ml2p_client-*.whl pytest pillow numpy tqdm
	cd /tmp && ML2P_REPO=$(CURDIR) ML2P_SERVER_PYTHON=$(CURDIR)/.venv/bin/python \
		$(CURDIR)/.client-venv/bin/python -m pytest -q -p no:cacheprovider \
		--rootdir=$(CURDIR)/clients/python/tests $(CURDIR)/clients/python/tests

lint:
	$(PYTHON) -m ruff check .

.PHONY: lock audit
LOCK := requirements/serving.lock
lock: install  ## upgrade the serving (base) dependencies in the venv, then pin them → $(LOCK)
	$(PYTHON) -m pip install -q --disable-pip-version-check --upgrade -e .
	$(PYTHON) .ci/lock.py -o $(LOCK)

audit: install  ## pip-audit $(LOCK); fails on fixable vulnerabilities not in .ci/audit-allowlist.toml
	$(PYTHON) .ci/audit.py $(LOCK) --allowlist .ci/audit-allowlist.toml

compose-check: proto  ## tests/deploy: compose, docker/ and deploy/k8s (rendered, schema-validated) against the code, promtool, real Prometheus, and the images built and run with Podman (each skips without its tool)
	CONTAINERS_CONF=$${CONTAINERS_CONF:-$(CURDIR)/docker/containers.conf} $(PYTHON) -m pytest tests/deploy -q

.PHONY: images
images:  ## build the CPU tagger and the Debian Prometheus image with Podman (docs/deploy.md)
	CONTAINERS_CONF=$${CONTAINERS_CONF:-$(CURDIR)/docker/containers.conf} $(PYTHON) docker/build_images.py

.PHONY: bench-paper
BUDGET ?= small
bench-paper:  ## the paper's comparison (ConSE/Fast0Tag/LESA/BiAM/ML2P, ablations, cost) → benchmarks/results/paper_comparison.*
	$(PYTHON) -m ml2p_cli bench paper --budget $(BUDGET) $(ARGS)
