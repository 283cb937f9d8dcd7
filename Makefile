# Two entry points (see README): `make demo` (serve + transcribe on CPU) and `make test`.
VENV       ?= .venv
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
STAMP      := $(VENV)/.installed
# CPU torch; where a local wheel is offered (PIP_FIND_LINKS) pip takes it without downloading
TORCH_SPEC ?= torch==2.13.0
DEMO_WAVS  ?= ../shared/data/synth_test/test_00000*.wav
DEMO_REF   ?= ../shared/data/synth_test/text
DEMO_GRPC  ?= 8001

.PHONY: demo test

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[server,test,loadtest,trt]"
	touch $@

# Start Triton on the CPU default (exports and renders the repository on first use),
# transcribe the demo wavs over gRPC, stop the server.
demo: $(STAMP)
	@set -e; \
	$(VENV)/bin/wenet-triton serve --host 127.0.0.1 --grpc-port $(DEMO_GRPC) \
	  --metrics-port $$(($(DEMO_GRPC)+1)) --health-port $$(($(DEMO_GRPC)+2)) & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' EXIT; \
	$(PY) client/transcribe.py --server 127.0.0.1:$(DEMO_GRPC) --wait 600 --wait-pid $$pid \
	  --health http://127.0.0.1:$$(($(DEMO_GRPC)+2))/healthz \
	  $$( [ -f $(DEMO_REF) ] && echo --ref $(DEMO_REF) ) $(DEMO_WAVS)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider
