# Ratatoskr: run `make help` for the targets.
CARGO ?= cargo
TARGETS ?= x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu

.PHONY: help build run cluster-demo test test-rust test-build test-js test-browser test-contract test-readme lint fmt bench fuzz release clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## debug build
	$(CARGO) build

run: ## run the gateway on its embedded defaults (0.0.0.0:8080)
	$(CARGO) run --release --bin ratatoskr

cluster-demo: ## Redis plus three cluster nodes on 127.0.0.1:8081-8083 (Ctrl-C stops them)
	scripts/cluster-demo.sh

test: test-rust test-js test-browser test-contract test-readme ## every test: Rust suites, the EventSource client, the dashboard in Chromium, the OpenAPI contract, the examples of the README and docs/

test-rust: .venv/bin/moto_server ## cargo tests (unit, property, black-box over real sockets, SQS via moto; nextest when installed), doctests, then the black-box suite again with every gateway a node on one Redis, and again on a three-primary Redis Cluster
	@rm -f target/tmp/skipped-tests.txt
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --locked --all-targets --no-fail-fast; \
	else \
	  echo "cargo-nextest is not installed (cargo install cargo-nextest --locked): cargo test instead"; \
	  $(CARGO) test --locked --all-targets --no-fail-fast; \
	fi
	$(CARGO) test --locked --doc
	CARGO=$(CARGO) scripts/test-cluster.sh
	@if [ -s target/tmp/skipped-tests.txt ]; then \
	  echo "== not run here ($$(wc -l < target/tmp/skipped-tests.txt)), each with why:"; \
	  cat target/tmp/skipped-tests.txt; \
	fi

# The binary the browser, EventSource and contract tests run: the one the
# Rust tests built (same features), not a second build of every dependency
# with the normal build's features.
test-build:
	$(CARGO) test --locked --all-targets --no-run -q

# moto's SQS-API server for the SQS tests, in a local virtualenv.
.venv/bin/moto_server: tests/requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

test-contract: test-build .venv/bin/moto_server ## schemathesis against a live gateway, auth off and on (reports in artifacts/contract/)
	tests/contract/run.sh

test-readme: test-build ## the examples of the README and docs/ run as written against a live gateway, their output compared
	tests/readme/run.sh

test-js: test-build ## a real EventSource client (npm eventsource) against the binary
	cd tests/js && npm ci --no-audit --no-fund --silent && node --test

test-browser: test-build ## the dashboard in Debian's headless Chromium via playwright-core (screenshots in artifacts/)
	cd tests/browser && npm ci --no-audit --no-fund --silent && node --test

lint: ## formatting and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

bench: ## load benchmark, side by side with the roofline and nginx+nchan (see docs/performance.md)
	scripts/bench.sh

fuzz: ## every cargo-fuzz target for FUZZ_SECONDS each (default 60; nightly toolchain)
	scripts/fuzz.sh

release: ## release binaries in dist/ for each target the toolchain has
	@mkdir -p dist
	@for t in $(TARGETS); do \
	  if rustup target list --installed 2>/dev/null | grep -qx $$t; then \
	    $(CARGO) build --release --bin ratatoskr --target $$t && cp target/$$t/release/ratatoskr dist/ratatoskr-$$t; \
	  else echo "skipping $$t (rustup target add $$t, plus a linker, to build it)"; fi; \
	done

clean: ## remove build output
	$(CARGO) clean
	rm -rf dist bench-results artifacts tests/js/node_modules tests/browser/node_modules .venv fuzz/target fuzz/corpus fuzz/artifacts fuzz/logs
