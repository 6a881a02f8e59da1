# rnngen: generate every spec in specs/, build the libraries, run the demo.
PYTHON ?= python3

.PHONY: all generate build check demo test bench clean

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

clean:
	rm -rf build .pytest_cache
