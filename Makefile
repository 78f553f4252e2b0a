# letterbox: `make image` builds the SD-card image, `make test` runs every test.
# Both install what they need with apt first (Debian 12, as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE := .cache
STAMPS := $(CACHE)/stamps
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

# What the tests drive: kernel netlink tools, DNS clients and peers.
TEST_PACKAGES := iproute2 iputils-ping util-linux procps dnsutils knot-dnsutils bind9-utils knot nsd radvd

.PHONY: help test image bench deps-test

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
