# ntk — two commands on a fresh clone: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.ntk-setup-stamp

.PHONY: setup test demo bench lint tools clean test-xla embedded-model

setup: $(STAMP) tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so no multi-GB CUDA build is pulled in by the project's range
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian's bedtools/samtools/bcftools/tabix, used by tests as the field's reference tools.
tools:
	@missing=""; for t in bedtools samtools bcftools tabix bgzip; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian tools:$$missing" >&2; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bedtools samtools bcftools tabix >/dev/null) \
	      || echo "warning: could not install$$missing; tests needing them are skipped" >&2; \
	  else echo "warning: missing$$missing (install bedtools samtools bcftools tabix); tests needing them are skipped" >&2; fi; \
	fi

test: setup
	$(BIN)/python -m pytest -q -n 2 tests

demo: setup
	PATH="$(BIN):$$PATH" bash scripts/demo.sh

bench: setup
	$(BIN)/python bench/core_throughput.py
	$(BIN)/python bench/segment_throughput.py --quick
	$(BIN)/python bench/embed_throughput.py
	$(BIN)/python bench/variants_throughput.py
	$(BIN)/python bench/pretrain_throughput.py

# The embedded model's recipe (scripts/embedded/train.sh): stage 1 = ntk-yeast-tiny from ../shared/data/yeast,
# stage 2 = its continuation on yeast + Arabidopsis chr1, stage 3 = held-out evaluation with the CNN and k-mer
# baselines; ntk's own pretrain + finetune segment; seeds fixed; DEVICE=cuda to use a GPU. See ntk/models/README.md.
embedded-model: setup
	PATH="$(BIN):$$PATH" bash scripts/embedded/train.sh

lint: setup
	$(BIN)/ruff check ntk tests bench

clean:
	rm -rf $(VENV) build *.egg-info

# torch-xla on the CPU PJRT backend, in its own environment (not part of `make test`): each torch-xla wheel is
# built for one torch release and the newest on PyPI (2.9.0) predates the torch pinned above. PyPI's torch wheel
# of that release is the CUDA build (7 GB installed with its nvidia-* dependencies); the tests run it on the CPU.
XLA_VENV  ?= build/venv-xla
XLA_TORCH ?= 2.9.0
test-xla:
	test -x $(XLA_VENV)/bin/python || $(PY) -m venv $(XLA_VENV)
	$(XLA_VENV)/bin/python -m pip install -q "torch==$(XLA_TORCH)" "torch-xla==$(XLA_TORCH)"
	$(XLA_VENV)/bin/python -m pip install -q -e . pytest matplotlib
	PJRT_DEVICE=CPU $(XLA_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_pretrain_xla.py
