# fcos-paddle. `make install && make demo` on a fresh machine; `make test` runs the test suite.
PYTHON ?= python3
PADDLE ?= paddlepaddle==3.3.1
CFG ?= configs/rt_dla34.yml
W ?=
OPTS ?=

.PHONY: install demo test test-reference lint format train eval infer export benchmark vdl clean

install:  ## the package, its dependencies, and CPU Paddle unless a Paddle is already installed
	@$(PYTHON) -c "import paddle" 2>/dev/null && echo "Paddle already installed: keeping it" || $(PYTHON) -m pip install "$(PADDLE)"
	$(PYTHON) -m pip install -e ".[dev]"

demo:  ## synthetic data -> train -> evaluate -> export -> deploy on images and a video (CPU, minutes)
	$(PYTHON) tools/demo.py

test:  ## the CI test suite
	$(PYTHON) -m pytest -q tests

test-reference:  ## parity against torchvision / timm (creates .venv-ref with torch; slow)
	bash tests/reference/run.sh

lint:
	ruff check .
	ruff format --check .

format:
	ruff format .
	ruff check --fix .

train:
	$(PYTHON) tools/train.py -c $(CFG) $(OPTS)

eval:
	$(PYTHON) tools/eval.py -c $(CFG) -w $(W) $(OPTS)

infer:
	$(PYTHON) tools/infer.py -c $(CFG) -w $(W) $(OPTS)

export:
	$(PYTHON) tools/export.py -c $(CFG) -w $(W) $(OPTS)

benchmark:
	$(PYTHON) benchmarks/latency.py

vdl:
	visualdl --logdir output --language en

clean:
	rm -rf output .pytest_cache .ruff_cache
