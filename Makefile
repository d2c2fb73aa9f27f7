# Two commands on a fresh machine: `make demo` (the rollback drill) and `make test` (the suite).
# Both set everything up first; every step is idempotent and cached outside the repo.
SHELL := /bin/bash
UV_VERSION := 0.13.8
TOOLS := $(HOME)/.cache/lockstep/tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup test demo bench lock services-up services-down clean schema engine sdks plugin

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

setup: $(UV)
	$(UV) sync --frozen
	$(VENV)/bin/lockstep services install
	$(VENV)/bin/python -m lockstep.models.minilm

lock: $(UV)
	$(UV) lock

# The Pulumi engine (CLI + YAML host): a `pulumi` on PATH, else built once from the Go module proxy
# into ~/.cache/lockstep/engine (scripts/engine/build.sh says where, in one line). `demo` does not
# need it. A failed build does not stop `test`: the engine tests then fail with build.sh's line.
engine:
	@scripts/engine/build.sh >/dev/null

# lockstep's resource plugin as an archive for Pulumi programs outside this repository, installed with
# `pulumi plugin install resource lockstep <version> --file <archive>` (scripts/plugin/build.sh).
plugin: $(UV)
	@scripts/plugin/build.sh

# lockstep's TypeScript and Go SDKs generated from schema.json by Pulumi's codegen into build/sdk,
# compiled, and examples/typescript type-checked against them (tests/test_sdks.py runs the same).
sdks:
	sdkgen/build.sh

test: setup
	@scripts/engine/build.sh >/dev/null || export LOCKSTEP_ENGINE_FAILED=1; \
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: setup
	eval "$$($(VENV)/bin/lockstep services up)" && $(VENV)/bin/lockstep drill

bench: setup
	eval "$$($(VENV)/bin/lockstep services up)" && $(VENV)/bin/python -m bench

services-up: setup
	$(VENV)/bin/lockstep services up

services-down:
	$(VENV)/bin/lockstep services down

clean: services-down
	rm -rf $(VENV)

# The component package's schema (inferred from components/ by the SDK), checked in as schema.json.
schema:
	$(VENV)/bin/python -m components.plugin --schema schema.json
