# The two commands of the quick start:
#   make dev    build (release) and run a local 3-node cluster
#   make test   the read-only gate: fmt, clippy, every test
# Builds go to a persistent target dir so they are incremental across clones.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/stockd/target
CARGO ?= cargo
DEV_ARGS ?=

.PHONY: setup build dev test verify bench-hot bench-uniform clean-data

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --bins
	@mkdir -p bin
	@ln -sf $(CARGO_TARGET_DIR)/release/stockd bin/stockd
	@ln -sf $(CARGO_TARGET_DIR)/release/stockctl bin/stockctl

dev: build
	bin/stockd dev $(DEV_ARGS)

test: setup
	@scripts/test.sh

verify: test

bench-hot: build
	bin/stockctl bench --workload hot --clients 64 --duration 10s

bench-uniform: build
	bin/stockctl bench --workload uniform --skus 1000 --clients 64 --duration 10s

clean-data:
	rm -rf data
