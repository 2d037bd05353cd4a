# fcos-paddle. On a fresh machine: `make demo` (installs on first use, then runs the no-download demo); `make test`.
PYTHON ?= python3
PADDLE ?= paddlepaddle==3.3.1
ONEDNN_HEADERS ?= onednn-devel==2025.0.1
CFG ?= configs/rt_dla34.yml
W ?=
OPTS ?=
STAMP := .make/installed

.PHONY: install demo test test-reference test-gui lint format train eval infer export benchmark vdl clean

# The package, its dependencies, and CPU Paddle unless a Paddle (e.g. paddlepaddle-gpu) is already installed.
# The stamp makes `make demo` / `make test` install once on a fresh clone and skip it afterwards.
$(STAMP): setup.py setup.cfg
	@$(PYTHON) -c "import paddle" 2>/dev/null && echo "Paddle already installed: keeping it" || $(PYTHON) -m pip install "$(PADDLE)"
	$(PYTHON) -m pip install -e ".[dev]"
	@# oneDNN C++ headers (headers only, no library) for the dygraph convolution operator in fcos/ops;
	@# the version matches the oneDNN 3.6 inside paddlepaddle 3.3.
	$(PYTHON) -m pip install --no-deps "$(ONEDNN_HEADERS)"
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

install:  ## (re)install: make install [PADDLE=paddlepaddle-gpu]
	@rm -f $(STAMP)
	@$(MAKE) --no-print-directory $(STAMP) PYTHON="$(PYTHON)" PADDLE="$(PADDLE)"

demo: $(STAMP)  ## synthetic data -> train -> evaluate -> export -> deploy on images and a video (CPU, minutes)
	$(PYTHON) tools/demo.py $(OPTS)

test: $(STAMP)  ## the CI test suite
	$(PYTHON) -m pytest -q tests

test-reference: $(STAMP)  ## parity with torchvision/timm, AdelaiDet (detectron2) and PaddleDetection (builds .venv-ref, .venv-ppdet, .ref/ on first use; slow)
	bash tests/reference/run.sh

test-gui: $(STAMP)  ## infer.py --show in a real OpenCV window on Xvfb (installs xvfb/xdotool, creates .venv-gui)
	bash tests/gui/run.sh

lint:
	ruff check .
	ruff format --check .

format:
	ruff format .
	ruff check --fix .

train: $(STAMP)
	$(PYTHON) tools/train.py -c $(CFG) $(OPTS)

eval: $(STAMP)
	$(PYTHON) tools/eval.py -c $(CFG) -w $(W) $(OPTS)

infer: $(STAMP)
	$(PYTHON) tools/infer.py -c $(CFG) -w $(W) $(OPTS)

export: $(STAMP)
	$(PYTHON) tools/export.py -c $(CFG) -w $(W) $(OPTS)

benchmark: $(STAMP)
	$(PYTHON) benchmarks/latency.py $(OPTS)

vdl:
	visualdl --logdir output --language en

clean:
	rm -rf output .pytest_cache .ruff_cache
