# custodyd — developer entry points. `make demo` and `make test` work on a fresh Debian 12 machine
# (as root, or with sudo) that has only Rust: they install the system packages they need first.
SHELL := /bin/bash
CARGO ?= cargo
DEV ?= $(CURDIR)/target/dev
# Building Parsec for `make bench-peers` only (bindgen, mbedtls): not needed by `make test`.
PEER_APT_PACKAGES := clang libclang-dev cmake
APT_PACKAGES := swtpm swtpm-tools softhsm2 libtss2-dev tpm2-tools opensc pkg-config openssl util-linux faketime systemd lintian dpkg-dev valgrind

.PHONY: deps build test lint demo dev dev-stop bench bench-peers peer-deps clean-dev deb fuzz faults soak

## deps: install missing system packages (apt), the Python interop libraries (pip: cryptography, PyNaCl) and cargo-deb
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@python3 -c 'import cryptography' 2>/dev/null || \
	  python3 -m pip install --quiet cryptography 2>/dev/null || \
	  python3 -m pip install --quiet --break-system-packages cryptography 2>/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends python3-cryptography >/dev/null; }
	@python3 -c 'import cryptography' || { echo "deps: python3 cannot import cryptography" >&2; exit 1; }
	@python3 -c 'import nacl.public' 2>/dev/null || \
	  python3 -m pip install --quiet pynacl 2>/dev/null || \
	  python3 -m pip install --quiet --break-system-packages pynacl 2>/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends python3-nacl >/dev/null; }
	@python3 -c 'import nacl.public' || { echo "deps: python3 cannot import nacl (PyNaCl)" >&2; exit 1; }
	@command -v cargo-deb >/dev/null || { echo "deps: installing cargo-deb"; $(CARGO) install cargo-deb --locked --quiet; }

## build: the whole workspace (daemon, client, tests)
build: deps
	$(CARGO) build --workspace --locked

## test: unit tests and end-to-end tests against real swtpm and SoftHSM
test: build
	$(CARGO) test --workspace --locked

## lint: formatting and clippy, warnings are errors (clippy builds tss-esapi: needs the deps)
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## dev: swtpm + SoftHSM token + custodyd under target/dev, in the background (restarts the daemon)
dev: build
	@DEV="$(DEV)" scripts/dev.sh start

## dev-stop: stop the dev daemon and swtpm (state is kept under target/dev)
dev-stop:
	@DEV="$(DEV)" scripts/dev.sh stop

## clean-dev: stop and delete the dev state
clean-dev: dev-stop
	rm -rf "$(DEV)"

## demo: the registration-client and IDA stories end to end on a provisioned swtpm + SoftHSM
demo: build
	@DEV="$(CURDIR)/target/demo" scripts/demo.sh

## bench: benchmarks (results in BENCHMARKS.md and target/bench/report.json; callgrind needs valgrind, from deps)
bench: build
	@scripts/bench.sh

## bench-peers: custodyd against Parsec 1.5 (PKCS#11 provider) on one SoftHSM token, RSA-2048 sign at 1/2/4 callers and ping (peer section of BENCHMARKS.md, target/bench/peers.json; builds Parsec once under target/peers/)
bench-peers: deps peer-deps
	@scripts/bench-peers.sh

## peer-deps: the system packages Parsec's build needs (apt: clang, libclang-dev, cmake)
peer-deps:
	@missing=""; for p in $(PEER_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "peer-deps: installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## fuzz: every cargo-fuzz target for FUZZ_SECS seconds (default 60) on its committed corpus; `make test` replays the corpora
fuzz: deps
	@scripts/fuzz.sh

## soak: 64 clients under three uids, every op, admin changes, SOAK_SECS (default 600) seconds; report in target/soak/report.json (`make test` runs 60 s)
soak: build
	SOAK_SECS=$${SOAK_SECS:-600} $(CARGO) test --locked -p custody-e2e --test soak -- --nocapture

## faults: kill -9 during every admin change, FAULT_TRIALS (default 20) trials each (`make test` runs 5)
faults: build
	FAULT_TRIALS=$${FAULT_TRIALS:-20} $(CARGO) test --locked -p custody-e2e --test faults -- --nocapture

## deb: the Debian package (release build, cargo-deb), checked with lintian; prints its path last
deb: deps
	@scripts/deb.sh
