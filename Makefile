# letterbox: `make image` builds the SD-card image, `make test` runs every test.
# Both install what they need with apt first (Debian 12, as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE := .cache
STAMPS := $(CACHE)/stamps
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

# What the tests drive: kernel netlink tools, DNS clients and peers; protoc for the
# containerd client's build; mmdebstrap, patchelf and busybox for the containerd tests;
# swaks for the mail tests; zstd (with GNU tar) to read the archives of deleted homes; Debian's
# python3-aiosmtpd, the SMTP server the welcome mail is sent to; dpkg-dev for
# dpkg-architecture (the extracted trixie binaries' library paths); chromium and
# chromium-driver, the headless browser the webmail tests drive over WebDriver, and curl for
# their plain HTTP checks.
TEST_PACKAGES := iproute2 iputils-ping util-linux procps dnsutils knot-dnsutils bind9-utils knot nsd radvd \
	protobuf-compiler mmdebstrap patchelf busybox-static openssl python3 swaks zstd python3-aiosmtpd dpkg-dev \
	libnet-ssleay-perl python3-dkim pebble chromium chromium-driver curl
# What the benchmarks drive: the load generators and the peers (the mail benchmark's,
# smtp-source and Postfix, come from the mail image), and the namespaces they run in; swaks
# fills the webmail benchmark's INBOX.
BENCH_PACKAGES := dnsperf nsd knot dnsutils python3 iproute2 util-linux procps swaks
# What bitbake's sanity check wants on the host (make yocto-check), with an en_US.UTF-8
# locale.
YOCTO_PACKAGES := chrpath diffstat lz4 zstd gawk file cpio python3-jinja2 python3-pexpect python3-git \
	python3-subunit socat texinfo unzip wget xz-utils locales build-essential

# The host toolchain: the machine's cargo when it has one, else Debian's Rust 1.96 from
# bookworm-security (a fresh Debian 12 has no cargo, and bookworm's own is too old).
ifeq ($(filter-out /usr/bin/cargo,$(shell command -v cargo)),)
CARGO := /usr/bin/cargo
HOST_RUST_PACKAGES := rustc-web cargo-web rustfmt-web rust-web-clippy
else
CARGO := cargo
HOST_RUST_PACKAGES :=
endif
export CARGO

.PHONY: help test image bench bench-dns bench-mail bench-dkim bench-webmail deps-test deps-bench

help:
	@echo "make image   build the SD-card image from letterbox.toml (or the embedded default)"
	@echo "make test    install test dependencies, then run every test"
	@echo "make bench   run the benchmarks against their peers"
	@echo "make qemu    build an image from image/qemu-letterbox.toml and boot it in QEMU (raspi3b)"
	@echo "make yocto-check  bitbake's own parser on yocto/meta-letterbox (slow: minutes a board)"
	@echo "make mail-image  build the letterbox-mail OCI image for this machine (MAIL_ARCH=amd64|arm64)"
	@echo "make webmail-image  build the letterbox-webmail OCI image (Roundcube) for this machine (MAIL_ARCH=...)"

$(STAMPS)/apt-update:
	@mkdir -p $(STAMPS)
	apt-get update
	@touch $@

$(STAMPS)/deps-test: $(STAMPS)/apt-update Makefile
	$(APT_INSTALL) $(TEST_PACKAGES) $(HOST_RUST_PACKAGES)
	@touch $@

deps-test: $(STAMPS)/deps-test

# What the tests need is built two jobs at a time: the aarch64 agent's release build, whose
# last step (fat LTO of one codegen unit) keeps one core busy for minutes, beside this
# machine's builds, lints, image builds and downloads. apt runs first, alone (dpkg's lock).
test: deps-test deps-image
	$(MAKE) --no-print-directory -j2 --output-sync=line test-inputs
	LETTERBOX_REQUIRE_ALL=1 tests/run

.PHONY: test-inputs lint test-binaries
test-inputs: test-image lint test-binaries containerd-trixie chrony-trixie mail-image webmail-image

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# tests/run builds them too; here they build while the agent's cross build runs.
test-binaries:
	$(CARGO) test --no-run

# The appliance's containerd and runc (Debian trixie, this host's architecture) for
# tests/containers.rs, extracted with mmdebstrap as the image's packages are. trixie's runc
# needs trixie's glibc (2.38+): its copy in bin/ loads trixie's loader and libraries
# (patchelf; an extracted tree has no merged-/usr links), so runc can still re-execute itself (`runc init`) through /proc/self/exe.
CONTAINERD_TRIXIE := $(CACHE)/containerd-trixie
.PHONY: containerd-trixie
$(STAMPS)/containerd-trixie: $(STAMPS)/deps-test
	rm -rf $(CONTAINERD_TRIXIE) && mkdir -p $(CONTAINERD_TRIXIE)
	mmdebstrap --variant=extract --arch=$$(dpkg --print-architecture) --quiet \
		--include=containerd,runc trixie $(CONTAINERD_TRIXIE)/root http://deb.debian.org/debian
	mkdir -p $(CONTAINERD_TRIXIE)/bin
	cp $(CONTAINERD_TRIXIE)/root/usr/sbin/runc $(CONTAINERD_TRIXIE)/bin/runc
	patchelf --set-interpreter $(CURDIR)/$(CONTAINERD_TRIXIE)/root/usr$$(patchelf --print-interpreter $(CONTAINERD_TRIXIE)/bin/runc) \
		--set-rpath $(CURDIR)/$(CONTAINERD_TRIXIE)/root/usr/lib/$$(dpkg-architecture -qDEB_HOST_MULTIARCH) \
		$(CONTAINERD_TRIXIE)/bin/runc
	$(CONTAINERD_TRIXIE)/bin/runc --version
	$(CONTAINERD_TRIXIE)/root/usr/bin/containerd --version
	@touch $@

containerd-trixie: $(STAMPS)/containerd-trixie

# chronyd (Debian trixie's) for tests/clock.rs, extracted as containerd is above and never
# installed: installing chrony would start a time daemon on the machine running the tests
# and remove its own. The test runs it with -x, so it never sets the clock it serves. Its
# copy in bin/ loads trixie's libraries through DT_RPATH (--force-rpath), which, unlike
# RUNPATH, also serves those libraries' own dependencies (gnutls's libunistring).
CHRONY_TRIXIE := $(CACHE)/chrony-trixie
.PHONY: chrony-trixie
$(STAMPS)/chrony-trixie: $(STAMPS)/deps-test
	rm -rf $(CHRONY_TRIXIE) && mkdir -p $(CHRONY_TRIXIE)/bin
	mmdebstrap --variant=extract --arch=$$(dpkg --print-architecture) --quiet \
		--include=chrony trixie $(CHRONY_TRIXIE)/root http://deb.debian.org/debian
	cp $(CHRONY_TRIXIE)/root/usr/sbin/chronyd $(CHRONY_TRIXIE)/bin/chronyd
	patchelf --set-interpreter $(CURDIR)/$(CHRONY_TRIXIE)/root/usr$$(patchelf --print-interpreter $(CHRONY_TRIXIE)/bin/chronyd) \
		--force-rpath --set-rpath $(CURDIR)/$(CHRONY_TRIXIE)/root/usr/lib/$$(dpkg-architecture -qDEB_HOST_MULTIARCH) \
		$(CHRONY_TRIXIE)/bin/chronyd
	$(CHRONY_TRIXIE)/bin/chronyd --version
	@touch $@

chrony-trixie: $(STAMPS)/chrony-trixie

# bitbake's own parser on yocto/meta-letterbox, offline (tests/yocto.rs's ignored tests):
# `bitbake -p`, `-e` and `-g` for both boards. It parses every recipe of the layers it
# builds on, 17 minutes a board on a loaded 2-core machine, so it is kept out of `make
# test` (whose yocto tests check the crate list, kickstart, kas pins and layer files).
.PHONY: yocto-check
$(STAMPS)/deps-yocto: $(STAMPS)/apt-update Makefile
	$(APT_INSTALL) $(YOCTO_PACKAGES)
	grep -qx 'en_US.UTF-8 UTF-8' /etc/locale.gen || { echo 'en_US.UTF-8 UTF-8' >>/etc/locale.gen && locale-gen; }
	@touch $@

yocto-check: deps-test $(STAMPS)/deps-yocto
	LETTERBOX_TEST_TIMEOUT_YOCTO=2h tests/run --test yocto -- --ignored

$(STAMPS)/deps-bench: $(STAMPS)/apt-update Makefile
	$(APT_INSTALL) $(BENCH_PACKAGES) $(HOST_RUST_PACKAGES)
	@touch $@

deps-bench: $(STAMPS)/deps-bench

bench: bench-dns bench-mail bench-dkim bench-webmail

# letterbox's authoritative DNS against NSD and Knot (dnsperf, same zone, same query mix).
bench-dns: deps-bench
	$(CARGO) build --release
	benches/dns.sh

# letterbox's mail path (front -> box) against a plain Postfix delivering to a Maildir; the
# memory of a box and of the agent; the time from creating a box to an IMAP login.
bench-mail: deps-bench containerd-trixie mail-image
	$(CARGO) build --release
	benches/mail.sh

# DKIM signing on the submission path: msg/s with the agent's milter in the path against
# the same path without it; the agent's memory idle and after signing.
bench-dkim: deps-bench containerd-trixie mail-image
	$(CARGO) build --release
	benches/dkim.sh

# The webmail: time to first byte and to a full inbox page at 1 and 10 sessions, through the
# agent's forwarder against straight to nginx; the memory of its containers, idle and loaded.
bench-webmail: deps-bench containerd-trixie mail-image webmail-image
	$(CARGO) build --release
	benches/webmail.sh

# --- SD-card image (src/image, src/boot): cross-built agent, Debian packages, QEMU ---
# make image [CONFIG=letterbox.toml] [BOARD=rpi3|rpi4] [OUT=out/letterbox-rpi3.img]
BOARD ?= rpi3
CONFIG ?=
OUT ?= out/letterbox-$(BOARD).img
TARGET := aarch64-unknown-linux-gnu
AGENT := target-aarch64/$(TARGET)/release/letterbox
TEST_IMAGE := out/test-rpi3.img
# The mail image every SD image carries (letterbox build --mail-image; its rule is below),
# and the webmail image, carried when the file enables the webmail (--webmail-image).
SD_MAIL_IMAGE := out/letterbox-mail-arm64
SD_WEBMAIL_IMAGE := out/letterbox-webmail-arm64
# Builds the image: no root, loop devices or mounts; QEMU boots it.
IMAGE_PACKAGES := protobuf-compiler mmdebstrap mtools dosfstools e2fsprogs squashfs-tools kmod qemu-system-arm
# The agent for aarch64 with the rustup target when installed, else Debian's Rust.
CROSS_ENV := CARGO_TARGET_DIR=target-aarch64 RUSTFLAGS='-C target-feature=+crt-static' \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$(CURDIR)/image/cross/link-static-aarch64
ifeq ($(shell rustup target list --installed 2>/dev/null | grep -x $(TARGET)),$(TARGET))
CROSS_CARGO := $(CARGO)
CROSS_PACKAGES := gcc-aarch64-linux-gnu libc6-dev-arm64-cross
else
CROSS_CARGO := RUSTC=/usr/bin/rustc /usr/bin/cargo
CROSS_PACKAGES := rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
endif

.PHONY: deps-image cross test-image qemu bench-image

$(STAMPS)/deps-image: $(STAMPS)/apt-update Makefile
	dpkg --add-architecture arm64
	apt-get update
	$(APT_INSTALL) $(IMAGE_PACKAGES) $(CROSS_PACKAGES) $(HOST_RUST_PACKAGES)
	@touch $@

deps-image: $(STAMPS)/deps-image

cross: deps-image
	$(CROSS_ENV) $(CROSS_CARGO) build --release --target $(TARGET) --bin letterbox

image: cross $(SD_MAIL_IMAGE).lock $(SD_WEBMAIL_IMAGE).lock
	$(CARGO) run --quiet -- build $(CONFIG) --board $(BOARD) -o $(OUT) --agent $(AGENT)

# The image the image and QEMU tests check, from the test provisioning file (which turns the
# webmail off, so it carries no webmail image).
test-image: cross $(SD_MAIL_IMAGE).lock
	$(CARGO) run --quiet -- build tests/fixtures/qemu-letterbox.toml --board rpi3 -o $(TEST_IMAGE) --agent $(AGENT)

# QEMU's raspi3b with user-mode networking: an rpi3 image from image/qemu-letterbox.toml
# (10.0.2.15; admin password "letterbox-test", for QEMU only). DNS: dig -p 5353 @127.0.0.1
QEMU_IMAGE := out/qemu-rpi3.img
qemu: cross $(SD_MAIL_IMAGE).lock $(SD_WEBMAIL_IMAGE).lock
	$(CARGO) run --quiet -- build image/qemu-letterbox.toml --board rpi3 -o $(QEMU_IMAGE) --agent $(AGENT)
	$(CARGO) run --quiet -- qemu $(QEMU_IMAGE)

bench-image: cross deps-bench $(SD_MAIL_IMAGE).lock $(SD_WEBMAIL_IMAGE).lock
	benches/image.sh

# --- The letterbox-mail OCI image (src/image/mail.rs): Postfix and Dovecot from trixie ---
# make mail-image [MAIL_ARCH=amd64|arm64]: an OCI layout in out/letterbox-mail-ARCH and its
# lock file (manifest digest, package versions) beside it. Rebuilt only when the code, the
# overlay or the crates changed; packages come from .cache/ (downloaded once).
MAIL_ARCH ?= $(shell dpkg --print-architecture)
MAIL_IMAGE := out/letterbox-mail-$(MAIL_ARCH)
MAIL_IMAGE_INPUTS := $(wildcard src/image/*.rs src/cli/mail_image.rs) \
	$(shell find overlays/mail -type f) Cargo.toml Cargo.lock

.PHONY: mail-image
mail-image: $(MAIL_IMAGE).lock

out/letterbox-mail-%.lock: $(STAMPS)/deps-image $(MAIL_IMAGE_INPUTS)
	$(CARGO) run --quiet -- mail-image --arch $* -o out/letterbox-mail-$*

# make webmail-image [MAIL_ARCH=amd64|arm64]: the letterbox-webmail image (Roundcube,
# PHP-FPM, nginx; src/image/webmail.rs), built the same way into out/letterbox-webmail-ARCH.
WEBMAIL_IMAGE := out/letterbox-webmail-$(MAIL_ARCH)
WEBMAIL_IMAGE_INPUTS := $(wildcard src/image/*.rs src/cli/mail_image.rs) \
	$(shell find overlays/webmail -type f) Cargo.toml Cargo.lock

.PHONY: webmail-image
webmail-image: $(WEBMAIL_IMAGE).lock

out/letterbox-webmail-%.lock: $(STAMPS)/deps-image $(WEBMAIL_IMAGE_INPUTS)
	$(CARGO) run --quiet -- mail-image --image webmail --arch $* -o out/letterbox-webmail-$*

bench: bench-image
