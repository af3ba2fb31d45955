# `make test` and `make demo` work on a fresh machine: they create .venv, install the pinned CPU torch
# and the other pins, build the extension, then test or run.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
TORCH_VERSION := 2.13.0
DEPS_STAMP := $(VENV)/.deps-stamp
PYTEST_ARGS ?=

.PHONY: venv build test demo bench bench-pytest wheel test-asan clean

$(DEPS_STAMP): requirements-dev.txt requirements-peers.txt requirements-peers-deps.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build first: a plain `torch` requirement would otherwise pull a multi-GB CUDA build
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -r requirements-dev.txt
	# the peers' own needs before the peers: pip's conflict check after an install with dependencies would
	# otherwise report that torchrec requires fbgemm-gpu (we install fbgemm-gpu-cpu); --no-deps skips that check
	$(PIP) install -q -r requirements-peers-deps.txt
	$(PIP) install -q --no-deps -r requirements-peers.txt
	touch $@

venv: $(DEPS_STAMP)

build: $(DEPS_STAMP)
	$(PIP) install -q --no-build-isolation --no-deps -e .

test: build
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests

demo: build
	$(VENV)/bin/dv365 demo

# The CPU benchmarks as scripts: each prints its markdown table (per op: dv365 against its peers on the same
# inputs), as in benchmarks/results/. `make bench-pytest` gives pytest-benchmark's timings instead.
BENCH_SCRIPTS := bench_jagged.py bench_token_pool.py bench_int4.py bench_sliced_pool.py bench_data.py
bench: build
	@set -e; for f in $(BENCH_SCRIPTS); do echo; echo "## benchmarks/$$f"; $(VPY) benchmarks/$$f; done
	@echo; echo "## benchmarks/bench_ingest.py --rows 1000000"; $(VPY) benchmarks/bench_ingest.py --rows 1000000

bench-pytest: build
	$(VPY) -m pytest -q $(wildcard benchmarks/bench_*.py) --benchmark-only --benchmark-columns=median,iqr,rounds --benchmark-sort=name

# The CPU wheel in dist/, against the venv's torch (no isolation: the extension must see the torch it will run
# with), in its own build folder; then its METADATA is pinned to that torch's minor release (docs/packaging.md).
wheel: $(DEPS_STAMP)
	rm -f dist/dv365-*.whl
	$(PIP) wheel -q --no-build-isolation --no-deps -w dist . --config-settings=build-dir=build/wheel
	$(VPY) tools/pin_torch_wheel.py dist/dv365-*.whl

# The op tests on a build with AddressSanitizer and UndefinedBehaviorSanitizer (its own build folder).
test-asan: $(DEPS_STAMP)
	$(PIP) install -q --no-build-isolation --no-deps -e . \
		--config-settings=cmake.define.DV365_SANITIZE=ON --config-settings=build-dir=build/asan \
		--config-settings=cmake.build-type=RelWithDebInfo
	ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0 UBSAN_OPTIONS=print_stacktrace=1 \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		$(VPY) -m pytest -q -x -m "not compile" -p no:cacheprovider tests/test_jagged.py tests/test_token_pool.py tests/test_int4.py tests/test_slicing.py
	$(PIP) install -q --no-build-isolation --no-deps -e .

clean:
	rm -rf build _skbuild *.egg-info
