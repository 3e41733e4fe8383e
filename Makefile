# The two commands of the quick start:
#   make dev    build (release) and run a local 3-node cluster, model serving
#   make test   the read-only gate: fmt, clippy, every Rust and Python test,
#               then the quick fault-injection runs (jepsen/)
# Builds go to a persistent target dir so they are incremental across clones.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/stockd/target
CARGO ?= cargo
DEV_ARGS ?=

.PHONY: setup build dev test verify bench-hot bench-uniform clean-data

setup:
	@scripts/setup.sh

build: setup venv
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

# The availability risk model: `make venv` sets up .venv (training, the Python
# tests, the onnxruntime library the server loads); `make model` simulates the
# pinned seed and retrains models/v1 and models/MODEL_CARD.md from it.
MODEL_SEED ?= 7
MODEL_VERSION ?= v1

.PHONY: venv model

venv:
	@scripts/setup-venv.sh

model: venv
	$(CARGO) build --release -p models --bin stockd-sim
	$(CARGO_TARGET_DIR)/release/stockd-sim --seed $(MODEL_SEED) --out data/sim/rows.csv
	PYTHONDONTWRITEBYTECODE=1 .venv/bin/python models/train/train.py --rows data/sim/rows.csv --out models/$(MODEL_VERSION) --version $(MODEL_VERSION)
