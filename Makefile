# rnngen: generate every spec in specs/, build the libraries, run the demo.
PYTHON ?= python3

.PHONY: all generate build check demo test fuzz asan bench bench-busy bench-gpu gpu-check microbench clean wheel

all: build demo

generate:
	$(PYTHON) -m rnngen generate

# (with jax installed, rnngen.jax's XLA FFI handlers of the built-ins too)
build:
	$(PYTHON) -m rnngen build $$($(PYTHON) -c 'import jax' 2>/dev/null && echo --jax)

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

# The kernels' tests against libraries built with AddressSanitizer and UBSan (C and the
# CUDA emulation; their own cache), in a Python that preloads the sanitizer runtime:
# every seed cell and user cell against the references, forced layouts and schedules,
# threads, the emulated CUDA backend against the C backend.  Leaks are not checked (the
# interpreter's own allocations would be reported); nor are the Keras comparisons (Keras
# imports matplotlib, whose extensions abort under the preloaded ASan).  CI runs it (.ci/run).
ASAN_TESTS ?= tests/test_against_reference.py tests/test_custom_cells.py tests/test_layout.py \
	tests/test_hardening.py tests/test_states.py tests/test_cuda.py::test_emulated_cuda_agrees_with_c \
	tests/test_accepted_specs_build.py tests/test_arguments.py::test_kernel_calls_check_every_argument
asan:
	RNNGEN_SANITIZE=1 RNNGEN_CACHE_DIR="$(CURDIR)/build/cache-asan" \
	LD_PRELOAD="$$($${CC:-cc} -print-file-name=libasan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	$(PYTHON) -m pytest -q -p no:cacheprovider -k "not keras" $(ASAN_TESTS)

# Peers come from the bench extras: pip install -e '.[bench]'.  RNNGEN_MARCH=x86-64-v3 (or
# any x86 level) builds rnngen for that level and holds the peers to it; each level's run
# is kept under benchmarks/results/<level>/ and RESULTS.md shows them all.  OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE are unset for this command alone: where the machine sets them (to
# work around old OpenBLAS builds) they force a slower kernel on rnngen's and numpy's
# BLAS alike; the benchmark prints which kernel its BLAS runs.  Then the drop-in modules
# (rnngen.torch.LSTM, GRU, RNN(cell=...)) against torch.nn: benchmarks/bench_dropin.py; and
# rnngen.keras against keras.layers on Keras's torch and jax backends: benchmarks/bench_keras.py.
bench: build
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/bench.py $(BENCH_ARGS)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/bench_dropin.py $(DROPIN_ARGS)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/bench_keras.py $(KERAS_ARGS)

# Training on a busy machine: the small LSTM and the LSTM and GRU at bench's sizes, idle,
# against one busy process and one per core, with the default threads and one thread;
# medians, 90th percentiles and issue 10's targets (BUSY_ARGS: e.g. --rounds 5, --calibrate).
bench-busy: build
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/busy.py $(BUSY_ARGS)

# rnngen's CUDA kernels against cuDNN, the PyTorch eager loop, torch.compile and jax.lax.scan
# on one GPU (needs torch with CUDA; jax[cuda13] for the JAX column); exits 2 without a GPU.
# Writes benchmarks/RESULTS-GPU.md.  BENCH_GPU_ARGS: e.g. --quick (each target once, for a
# short session), --smoke (the whole code path on the CPU at tiny sizes: a test).
bench-gpu:
	$(PYTHON) benchmarks/bench_gpu.py $(BENCH_GPU_ARGS)

# The one command for a session lent a GPU (docs/gpu-check.md): the gpu tests, a small
# forward/backward under compute-sanitizer memcheck, racecheck and synccheck, and
# bench-gpu --quick, each with a time limit (about 8 minutes on one H100), then one
# summary; exits 2 without a GPU.  GPU_CHECK_ARGS: e.g. --out DIR (every step's log).
gpu-check:
	$(PYTHON) tests/gpu_check.py $(GPU_CHECK_ARGS)

# The micro-kernels against the BLAS at every x86 level the CPU runs (the BLAS held to the
# same level), the single-row product's rate, the barrier's cost.
microbench:
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PYTHON) benchmarks/micro.py

# A wheel with the built-in specs and templates inside (rnngen/_data), in build/dist/:
# pip install it anywhere (its dependencies come from PyPI).
wheel:
	$(PYTHON) -m pip wheel --no-deps -w build/dist .

clean:
	rm -rf build .pytest_cache
