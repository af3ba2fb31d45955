# `make test` and `make demo` work on a fresh machine: they create .venv, install the pinned CPU torch
# and the other pins, build the extension, then test or run.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip
TORCH_VERSION := 2.13.0
DEPS_STAMP := $(VENV)/.deps-stamp
PYTEST_ARGS ?=

.PHONY: venv build test demo bench test-asan clean

$(DEPS_STAMP): requirements-dev.txt requirements-peers.txt requirements-peers-deps.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build first: a plain `torch` requirement would otherwise pull a multi-GB CUDA build
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps -r requirements-peers.txt
	$(PIP) install -q -r requirements-peers-deps.txt
	touch $@

venv: $(DEPS_STAMP)

build: $(DEPS_STAMP)
	$(PIP) install -q --no-build-isolation --no-deps -e .

test: build
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests

demo: build
	$(VENV)/bin/dv365 demo

bench: build
	$(VPY) -m pytest -q $(wildcard benchmarks/bench_*.py) --benchmark-only --benchmark-columns=median,iqr,rounds --benchmark-sort=name

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
