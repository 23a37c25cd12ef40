# Every user-facing command of pe-workspace. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := $(CURDIR)/.venv
PYTHON      := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-done
PE          := target/release/pe
# The experiment `make exp` runs: a recipe name under experiments/.
EXP         ?= fmnist_resnet_mini_pe
# Processes `make exp` trains with (one per GPU on CUDA; Gloo processes on CPU).
NPROC       ?= 1
FMNIST_IDX  := /usr/share/datasets/fashion-mnist

# Build tch against the venv's torch wheel: torch-sys asks `python` on PATH when VIRTUAL_ENV is set.
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1

.PHONY: help setup build exp paper-table1 paper-table2 data fashion-mnist-package tensorboard summary bench bench-data bench-torch bench-train bench-infer bench-ddp bench-shards bench-gpu test-gpu claim-table fmnist-table transfer-table convert-table distill-table test fmt fmt-check clippy cargo-test pytest clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: $(SETUP_STAMP) ## Create .venv with torch 2.11 (libtorch for tch) and the Python references; idempotent

$(SETUP_STAMP): python/requirements.txt python/pe_models/pyproject.toml
	@# cmake + nasm build the libjpeg-turbo that pe-data's decoder links statically.
	@command -v cmake >/dev/null && command -v nasm >/dev/null || { \
		echo "installing cmake and nasm (Debian packages)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake nasm; }
	@# Gloo's headers, which pe-dist's c10d shim needs (the torch wheel ships c10d's but not Gloo's).
	@test -f /usr/include/gloo/algorithm.h || { \
		echo "installing libgloo-dev (Debian package)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgloo-dev; }
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --disable-pip-version-check -q -r python/requirements.txt
	@# The PE models as PyTorch modules (python/pe_models), editable: the tests check this checkout's.
	$(PYTHON) -m pip install --disable-pip-version-check -q -e python/pe_models
	@# A stable path to libtorch for test binaries (.cargo/config.toml), whatever the Python version.
	ln -sfn "$$($(PYTHON) -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" $(VENV)/torch-lib
	@touch $@

build: setup ## Build the release `pe` binary
	cargo build --release -p pe-runner

exp: build ## Train experiments/$(EXP).toml on NPROC processes (default: a Fashion-MNIST recipe, 1 process)
	@test -f experiments/$(EXP).toml || { echo "no experiments/$(EXP).toml; recipes: $$(ls experiments/*.toml | xargs -n1 basename | sed 's/.toml//' | tr '\n' ' ')"; exit 2; }
	@# Recipes named fmnist_* train on Fashion-MNIST, which the project prepares itself.
	@if [[ "$(EXP)" == fmnist_* ]]; then $(MAKE) --no-print-directory data; fi
	$(if $(filter-out 1,$(NPROC)),$(PE) launch --nproc $(NPROC) -- train experiments/$(EXP).toml,$(PE) train experiments/$(EXP).toml)

data: build fashion-mnist-package ## Fashion-MNIST as an ImageFolder of JPEGs in data/fashion-mnist
	$(PE) prepare fashion-mnist --from $(FMNIST_IDX) --to data/fashion-mnist

fashion-mnist-package: ## Debian's dataset-fashion-mnist (its IDX files in $(FMNIST_IDX)): make data and the tests read it
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || { \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; }

tensorboard: setup ## Serve TensorBoard on the runs/ folder (http://localhost:6006)
	$(VENV)/bin/tensorboard --logdir runs --port 6006

summary: build ## Parameters and MACs of every registry model beside the paper's numbers
	$(PE) summary

test: setup fmt-check clippy cargo-test pytest ## Everything CI checks: format, lints, Rust tests, PyTorch parity tests

fmt: ## Format the Rust code
	cargo fmt --all

fmt-check:
	cargo fmt --all -- --check

clippy: setup
	cargo clippy --workspace --all-targets -- -D warnings

cargo-test: setup
	cargo test --workspace

# Parity tests drive the debug `pe` that cargo-test built (libtorch does the arithmetic either way).
# Temporary folders are kept for failed tests only: passing runs left ~1 GB each behind in /tmp.
# The export tests check the consumers on real Fashion-MNIST images (conftest's fashion_mnist).
pytest: cargo-test fashion-mnist-package
	PE_BIN=$(CURDIR)/target/debug/pe $(PYTHON) -m pytest -q -o tmp_path_retention_policy=failed tests/python crates/pe-torch/tests/python crates/pe-runner/tests/python

bench: bench-data bench-torch bench-train ## The CPU benchmarks against PyTorch (data, torch, train; bench-shards/-ddp/-gpu run on their own): bench/results/

bench-data: build ## pe-data vs torchvision DataLoader+PIL (train/eval pipelines, img/s per worker) and JPEG decoders
	$(PYTHON) bench/data/make_photos.py --out data/bench-photos
	cargo build --release -p pe-data --example pipeline_bench --example decode_bench --example stage_bench
	target/release/examples/decode_bench data/bench-photos 3
	$(PYTHON) bench/data/compare.py --bin target/release/examples/pipeline_bench --root data/bench-photos --workers 1 $$(nproc)

bench-torch: setup ## pe-torch: fused vs per-tensor optimizer steps, bf16 autocast / channels_last train steps, beside PyTorch
	cargo build --release -p pe-torch --example torch_bench
	@mkdir -p target/bench
	target/release/examples/torch_bench --json target/bench/torch_rust.json
	$(PYTHON) bench/torch/torch_bench.py --rust-json target/bench/torch_rust.json --json target/bench/torch_pytorch.json
	$(PYTHON) bench/conv_gemm.py --out bench/results/conv_gemm.md

bench-train: build ## Train-step time of resnet50(-PE) and deit_small/ViT-PE: Rust vs PyTorch eager, interleaved, fp32 and bf16+channels_last
	$(PYTHON) bench/train_step.py --pe $(PE) --out bench/results/train_step_cpu.md
	$(PYTHON) bench/train_step.py --pe $(PE) --amp bf16 --channels-last --out bench/results/train_step_cpu_bf16.md

bench-gpu: build ## One GPU: Rust vs PyTorch eager img/s and peak memory, bf16 + channels_last, synthetic and real JPEGs
	$(PYTHON) bench/data/make_photos.py --out data/bench-photos
	$(PYTHON) bench/gpu_bench.py --pe $(PE) --photos data/bench-photos --out bench/results/gpu.md

test-gpu: setup ## The tests that need a CUDA GPU (CI has none): CUDA memory stats, NCCL + Reducer, CUDA graphs, every recipe on CUDA
	cargo test --release -p pe-torch --test cuda --test cuda_graph -- --include-ignored
	cargo test --release -p pe-dist --test nccl -- --ignored
	cargo test --release -p pe-runner --test cuda --test cuda_graph -- --include-ignored

bench-infer: build ## Inference: pe vs PyTorch eager vs ONNX Runtime, batch 1/32, 1-2 threads, fp32 (+ bf16), file sizes (bench/results/inference_cpu*.md)
	$(PYTHON) bench/infer.py --pe $(PE) --amp off --steps 5 --warmup 1 --out bench/results/inference_cpu.md
	@# bf16 only where the CPU has bf16 instructions (AVX512-BF16/AMX); elsewhere libtorch emulates it, 30x slower.
	@if grep -q -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo; then \
		$(PYTHON) bench/infer.py --pe $(PE) --amp bf16 --steps 5 --warmup 1 --out bench/results/inference_cpu_bf16.md; \
	else \
		$(PYTHON) bench/infer.py --pe $(PE) --amp bf16 --models resnet_mini_pe vit_pe_mini --threads 2 --steps 5 --warmup 1 --out bench/results/inference_cpu_bf16.md; \
	fi

bench-shards: build ## Folder vs tar-shard loader img/s and files opened (bench/results/shards.md); local vs loopback S3/HTTP shards (shards_remote.md)
	$(PYTHON) bench/data/make_photos.py --out data/bench-photos
	$(PE) prepare shards --from data/bench-photos --to data/bench-photos-shards --shard-mb 8
	cargo build --release -p pe-data --example shards_bench
	for w in 1 $$(nproc); do target/release/examples/shards_bench data/bench-photos data/bench-photos-shards train-basic $$w 64 2; done
	target/release/examples/shards_bench data/bench-photos data/bench-photos-shards eval $$(nproc) 64 2
	$(PYTHON) bench/data/remote_shards.py --bench target/release/examples/shards_bench --folder data/bench-photos \
		--shards data/bench-photos-shards --out bench/results/shards_remote.md

bench-ddp: build ## Data-parallel scaling on CPU: 1 vs 2 processes (Gloo), efficiency, all-reduce hidden behind backward
	$(PYTHON) bench/ddp_bench.py --pe $(PE) --out bench/results/ddp_cpu.md

# Does tying beat shrinking? baseline / PE twin / parameter-matched baseline × 3 seeds (~5 h on an idle 2-core CPU).
CLAIM_EPOCHS ?= 10
# The paper's tables at its scale, for whoever has ImageNet and GPUs: NPROC processes per run, DATA =
# data.root, EPOCHS = a short schedule, SET = "key=value ..." overrides; rerun to continue after a stop.
PAPER_TABLE_ARGS = --pe $(PE) --nproc $(or $(NPROC),1) $(if $(DATA),--data $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
	$(foreach s,$(SET),--set $(s)) $(if $(RETRY_FAILED),--retry-failed)
paper-table1: build ## The paper's Table 1 (DeiT-T/S, ViT-PE 300/600 ep, matched ViT-S): trains, evaluates, bench/results/paper_table1.md
	$(PYTHON) bench/paper_table.py --table 1 $(PAPER_TABLE_ARGS)

paper-table2: build ## The paper's Table 2 (ResNet-18/34/50, ResNet50-PE¹/², matched ResNet50): bench/results/paper_table2.md
	$(PYTHON) bench/paper_table.py --table 2 $(PAPER_TABLE_ARGS)

claim-table: build data ## Tying vs shrinking on Fashion-MNIST, 3 seeds: bench/results/claim.{md,json,svg}
	cargo build --release -p pe-analyze --example claim_figure
	$(PYTHON) bench/claim_table.py --pe $(PE) --epochs $(CLAIM_EPOCHS) --out bench/results/claim.md

fmnist-table: build data ## The Fashion-MNIST PE/baseline table (3 seeds each) for README
	$(PYTHON) bench/fmnist_table.py --pe $(PE) --out bench/results/fmnist.md

transfer-table: build data ## Pre-train on Fashion-MNIST 0-4, then 5-9: fine-tune / linear probe / scratch, ViT and ViT-PE, 3 seeds
	$(PYTHON) bench/transfer_table.py --pe $(PE) --out bench/results/transfer.md

# `pe convert` against training: per family and seed, baseline → PE twin (naive, symmetric) → k fine-tune
# epochs, beside the twin from scratch for 2 + k epochs (~50 min per family and seed on an idle 2-core CPU).
CONVERT_SEEDS ?= 0 1 2
CONVERT_FINETUNE ?= 1 2 5
convert-table: build data ## Convert a trained ViT/ResNet to its PE twin and fine-tune, vs the twin from scratch: bench/results/convert.{md,json,svg}
	$(PYTHON) bench/convert_table.py --pe $(PE) --seeds $(CONVERT_SEEDS) --finetune $(CONVERT_FINETUNE) --out bench/results/convert.md

DISTILL_SEEDS ?= 0 1 2
distill-table: build data ## ViT-PE-mini with and without teachers (DeiT's hard distillation token), and the matched untied model: bench/results/distill.md
	$(PYTHON) bench/distill_table.py --pe $(PE) --seeds $(DISTILL_SEEDS) --out bench/results/distill.md

# The weight-space analysis of the four Fashion-MNIST recipes (`pe analyze`, crates/pe-analyze): runs/<recipe>
# as `make exp EXP=<recipe>` leaves them, each trained here first if missing.
ANALYZE_RECIPES := fmnist_resnet_mini fmnist_resnet_mini_pe fmnist_vit_mini fmnist_vit_pe_mini
.PHONY: analyze-table
analyze-table: build data ## Weight-space analysis of the Fashion-MNIST runs: bench/results/weight_space.{md,svg}
	@for r in $(ANALYZE_RECIPES); do test -e runs/$$r/checkpoints/last || $(PE) train experiments/$$r.toml; done
	@mkdir -p target/analyze
	{ echo "Weight-space analysis (\`pe analyze\`) of the Fashion-MNIST runs, best checkpoints, activations of 4 validation batches of 500."; echo; \
	  $(PE) analyze $(ANALYZE_RECIPES:%=runs/%) --data --batches 4 --format markdown --figures target/analyze; } > bench/results/weight_space.md
	cp target/analyze/weight_space.svg bench/results/weight_space.svg

clean: ## Remove build outputs (keeps .venv and data)
	cargo clean
