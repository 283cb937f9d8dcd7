# Two entry points (see README): `make demo` (serve + transcribe on CPU) and `make test`.
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
CLI        := $(VENV)/bin/wenet-triton
STAMP      := $(VENV)/.installed
# CPU torch; where a local wheel is offered (PIP_FIND_LINKS) pip takes it without downloading
TORCH_SPEC ?= torch==2.13.0
SAMPLES    := wenet_triton/samples
DEMO_WAVS  ?= $(SAMPLES)/*.wav
DEMO_REF   ?= $(SAMPLES)/text
DEMO_GRPC  ?= 8001

.PHONY: demo test lint

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[server,test,loadtest,trt]"
	touch $@

# Start Triton on the CPU default (exports and renders the repository on first use),
# transcribe the sample wavs over gRPC, stop the server.
demo: $(STAMP)
	@set -e; \
	$(CLI) serve --host 127.0.0.1 --grpc-port $(DEMO_GRPC) \
	  --metrics-port $$(($(DEMO_GRPC)+1)) --health-port $$(($(DEMO_GRPC)+2)) & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' EXIT; \
	$(CLI) transcribe --server 127.0.0.1:$(DEMO_GRPC) --wait 600 --wait-pid $$pid \
	  --health http://127.0.0.1:$$(($(DEMO_GRPC)+2))/healthz \
	  $$( [ -f $(DEMO_REF) ] && echo --ref $(DEMO_REF) ) $(DEMO_WAVS)

lint: $(STAMP)
	$(VENV)/bin/ruff check --no-cache .

test: lint
	$(PY) -m pytest -q -p no:cacheprovider
