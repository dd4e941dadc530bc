# The two commands README.md opens with. Both set up .venv on a fresh machine first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per install set: `make demo` installs only what the demo needs, and a later `make test`
# installs the rest (pip keeps what is already there).
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
EXAMPLE := examples/train_unseeded.py
DEMO_DIR := out/demo

.PHONY: demo test test-fast install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes; torch==2.13.0 is the CPU wheel on this machine's disk.
# editable_mode=compat: the checkout goes on sys.path through a .pth line, as a wheel's files would be
# found. setuptools' default editable finder imports pathlib, urllib and re in every interpreter that
# starts (about 20 ms here), and detrun starts two for each run (start-up, issue 15).
EDITABLE := --config-settings editable_mode=compat -e
# The demo needs detrun and torch only. --no-compile: byte-compiling all of torch's files takes most of
# the install's time; python compiles the few modules the demo imports on first use.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-compile $(EDITABLE) '.[torch]'
	touch $(DEMO_STAMP)

# The tests need every extra: TensorFlow, and the trainers the verdict corpus runs.
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(EDITABLE) '.[torch,tensorflow,test]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

# Record the bundled unseeded example, replay it, and print the verdict.
demo: $(DEMO_STAMP)
	@mkdir -p $(DEMO_DIR)
	@echo "== two plain runs (they differ):"
	@$(BIN)/python $(EXAMPLE) | tail -1
	@$(BIN)/python $(EXAMPLE) | tail -1
	@echo "== detrun record:"
	@$(BIN)/detrun record --force -o $(DEMO_DIR)/trace.zst $(EXAMPLE) | tail -1
	@echo "== detrun replay:"
	@$(BIN)/detrun replay $(DEMO_DIR)/trace.zst $(EXAMPLE) | tail -1

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

# The in-process unit tests only (seconds): session, step clock, trace, Patcher, patches.
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) out .pytest_cache
