# letterbox: `make image` builds the SD-card image, `make test` runs every test.
# Both install what they need with apt first (Debian 12, as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE := .cache
STAMPS := $(CACHE)/stamps
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

# What the tests drive: kernel netlink tools, DNS clients and peers.
TEST_PACKAGES := iproute2 iputils-ping util-linux procps dnsutils knot-dnsutils bind9-utils knot nsd radvd
# What the benchmarks drive: the load generator and the peers.
BENCH_PACKAGES := dnsperf nsd knot dnsutils python3

.PHONY: help test image bench bench-dns deps-test deps-bench

help:
	@echo "make image   build the SD-card image from letterbox.toml (or the embedded default)"
	@echo "make test    install test dependencies, then run every test"
	@echo "make bench   run the benchmarks against their peers"

$(STAMPS)/apt-update:
	@mkdir -p $(STAMPS)
	apt-get update
	@touch $@

$(STAMPS)/deps-test: $(STAMPS)/apt-update Makefile
	$(APT_INSTALL) $(TEST_PACKAGES)
	@touch $@

deps-test: $(STAMPS)/deps-test

test: deps-test
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	tests/run

$(STAMPS)/deps-bench: $(STAMPS)/apt-update Makefile
	$(APT_INSTALL) $(BENCH_PACKAGES)
	@touch $@

deps-bench: $(STAMPS)/deps-bench

bench: bench-dns

# letterbox's authoritative DNS against NSD and Knot (dnsperf, same zone, same query mix).
bench-dns: deps-bench
	cargo build --release
	benches/dns.sh
