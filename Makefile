# podproxy: set-up, tests and benchmarks. Every target installs what it needs itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the tests use: curl, dnsmasq for the DNS tests, nghttp2-client (nghttp and
# h2load) as HTTP/2 peers.
APT_PACKAGES := curl dnsmasq nghttp2-client
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench fuzz venv system-deps clean

# A venv with podproxy and its test tools; re-done when pyproject.toml changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv && \
		$(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

# Installed only when missing (dnsmasq lives in /usr/sbin, so ask dpkg, not PATH).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

# The post's scenario on this machine: cluster DNS, pods, podproxy on the post's config, load.
run: $(STAMP)
	$(PY) -m podproxy sandbox

# The suite mostly waits on real peers (Envoy, DNS, timeouts): three workers (pytest-xdist)
# keep it well under CI's 10 minutes on two cores; each worker takes its own loopback blocks.
PYTEST_WORKERS ?= 3

test: $(STAMP) system-deps
	$(PY) -m pytest -q -n $(PYTEST_WORKERS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench fuzz
	$(VENV)/bin/ruff format --check src tests bench fuzz
	$(VENV)/bin/mypy

# Debian packages `make bench` drives: load generators (wrk, h2load), backends/proxy, the other proxy.
BENCH_APT_PACKAGES := wrk nginx haproxy nghttp2-client
BENCH_STAMP := $(VENV)/.bench-installed
# `make bench ARGS=--quick` (3 s runs); see `$(PY) bench/run.py --help`.
ARGS ?=

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@missing=""; for p in $(BENCH_APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi
	$(PY) bench/run.py $(ARGS)

# `make fuzz FUZZ_SECONDS=300`: the HTTP/1.1 decoders against fuzz/reference.py under atheris,
# one target after the other (not in `make test`). New inputs go to $(FUZZ_OUT)/corpus/<target>,
# findings to $(FUZZ_OUT)/<target>-crash-*; FUZZ_SKIP=kind,... looks past reported ones.
FUZZ_STAMP := $(VENV)/.fuzz-installed
FUZZ_SECONDS ?= 60
FUZZ_OUT ?= fuzz/findings
FUZZ_TARGETS := request response

$(FUZZ_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[fuzz]'
	@touch $(FUZZ_STAMP)

fuzz: $(FUZZ_STAMP)
	@status=0; for t in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZ_OUT)/corpus/$$t; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		$(PY) -m fuzz.fuzz_codec $$t $(FUZZ_OUT)/corpus/$$t fuzz/corpus/$$t \
			-dict=fuzz/http.dict -max_len=4096 -timeout=10 -max_total_time=$(FUZZ_SECONDS) \
			-artifact_prefix=$(FUZZ_OUT)/$$t- -print_final_stats=1 || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) build src/*.egg-info
