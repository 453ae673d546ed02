# Two entry points, each self-sufficient on a fresh clone with Python 3.11:
#   make demo   prepare tiny Shakespeare, train briefly on CPU, print a sample
#   make test   run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline machines: point this at a local copy of tiny Shakespeare (see README).
SOURCE ?= $(TINYGPT_SHAKESPEARE_SOURCE)
DEMO_RUN ?= runs/demo

.PHONY: demo test install clean

$(BIN)/tinygpt: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/tinygpt

demo: $(BIN)/tinygpt
	$(BIN)/tinygpt prepare shakespeare $(if $(SOURCE),--source $(SOURCE))
	$(BIN)/tinygpt vocab --limit 12
	$(BIN)/tinygpt train --preset cpu --max-iters 300 --eval-interval 100 --out $(DEMO_RUN) --overwrite
	$(BIN)/tinygpt generate --run $(DEMO_RUN) --prompt "ROMEO:" --max-new-tokens 300 --seed 1

test: $(BIN)/tinygpt
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs data .pytest_cache
