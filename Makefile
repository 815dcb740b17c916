# Two entry points: `make run` (dashboard on the embedded digits demo) and `make test` (whole suite).
# Both create and reuse a local .venv; the stamp file re-installs only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8501
CLASS_PORT ?= 8502

.PHONY: run class test install cli-demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/streamlit run dashboard/app.py --server.address=127.0.0.1 --server.port=$(PORT) \
		--server.headless=true --browser.gatherUsageStats=false

# Class mode: every interface, port $(CLASS_PORT); viewers need $$KDLAB_PASSWORD, the operator $$KDLAB_OPERATOR_PASSWORD.
class: $(STAMP)
	@test -n "$$KDLAB_PASSWORD" || { echo "set KDLAB_PASSWORD (the class's password) first" >&2; exit 2; }
	$(BIN)/streamlit run dashboard/app.py --server.address=0.0.0.0 --server.port=$(CLASS_PORT) \
		--server.headless=true --browser.gatherUsageStats=false

test: $(STAMP)
	$(BIN)/python -m pytest -q

cli-demo: $(STAMP)
	$(BIN)/kdlab run --preset digits-demo --out runs/digits-demo

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
