# rnngen: generate every spec in specs/, build the libraries, run the demo.
PYTHON ?= python3

.PHONY: all generate build check demo test fuzz bench microbench clean wheel

all: build demo

generate:
	$(PYTHON) -m rnngen generate

build:
	$(PYTHON) -m rnngen build

check:
	$(PYTHON) -m rnngen check

demo: build
	$(PYTHON) -m rnngen demo

test:
	$(PYTHON) -m pytest -q

# The spec fuzzer's long profile: thousands of random and mutated specs, each accepted or
# refused with a SpecError; accepted ones are rendered, and up to FUZZ_COMPILE distinct
# ones compiled.  The suite runs the quick profile.
FUZZ_COMPILE ?= 40
fuzz:
	RNNGEN_FUZZ_PROFILE=long RNNGEN_FUZZ_COMPILE=$(FUZZ_COMPILE) $(PYTHON) -m pytest -q \
		--hypothesis-show-statistics tests/test_fuzz_specs.py

# Peers come from the bench extras: pip install -e '.[bench]'.  OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE are unset for this command alone: where the machine sets them (to
# work around old OpenBLAS builds) they force a slower kernel on rnngen's and numpy's
# BLAS alike; the benchmark prints which kernel its BLAS runs.
bench: build
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/bench.py $(BENCH_ARGS)

# The single-row product's rate and the barrier's cost (the README's B = 1 arithmetic).
microbench:
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/micro.py

# A wheel with the built-in specs and templates inside (rnngen/_data), in build/dist/:
# pip install it anywhere (its dependencies come from PyPI).
wheel:
	$(PYTHON) -m pip wheel --no-deps -w build/dist .

clean:
	rm -rf build .pytest_cache
