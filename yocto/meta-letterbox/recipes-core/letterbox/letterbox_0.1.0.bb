SUMMARY = "letterbox, the init agent (PID 1) of the Raspberry Pi mail appliance"
DESCRIPTION = "Brings the appliance up from letterbox.toml on the boot partition: network, \
DNS, the console, containerd and the mail containers."
HOMEPAGE = "https://github.com/letterbox/letterbox"
LICENSE = "MIT | Apache-2.0"
# Cargo.toml's license field: the tree has no license file of its own.
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302 \
                    file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# The agent is built from the checkout this layer lives in (LETTERBOX_SRC, conf/layer.conf),
# as `make image` builds the working tree; the crates come from letterbox-crates.inc.
inherit cargo cargo-update-recipe-crates deploy externalsrc
EXTERNALSRC = "${LETTERBOX_SRC}"
EXTERNALSRC_BUILD = "${WORKDIR}/build"
# No oe-workdir/oe-logs links in the project's tree.
EXTERNALSRC_SYMLINKS = ""
CARGO_LOCK_SRC_DIR = "${S}"

require letterbox-crates.inc

# containerd-client's build script compiles containerd's .proto files with protoc.
DEPENDS += "protobuf-native"

# The provisioning file put on the boot partition; a local.conf may name its own.
LETTERBOX_CONFIG ?= "${LETTERBOX_SRC}/image/letterbox.toml"

do_install:append() {
    # The kernel starts /sbin/init as PID 1: the agent (INIT_MANAGER = "none").
    install -d ${D}${base_sbindir}
    ln -sf ${bindir}/letterbox ${D}${base_sbindir}/init
}

do_deploy() {
    install -m 0644 ${LETTERBOX_CONFIG} ${DEPLOYDIR}/letterbox.toml
}
addtask deploy after do_install before do_build

FILES:${PN} += "${base_sbindir}/init"
# containerd and runc run the mail containers; the agent finds them on the PATH.
RDEPENDS:${PN} += "containerd runc"
