SUMMARY = "The letterbox-mail OCI image layout on the root filesystem"
DESCRIPTION = "Installs letterbox-mail's OCI layout where the agent imports it from \
(/usr/share/letterbox/letterbox-mail, src/paths.rs), as `make image` does with the \
Debian-built one."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

INHIBIT_DEFAULT_DEPS = "1"
# The layout comes from this machine's deploy directory (its binaries are this machine's).
PACKAGE_ARCH = "${MACHINE_ARCH}"

# image-oci links the layout in DEPLOY_DIR_IMAGE as <image>-<tag>-oci.
MAIL_OCI_LAYOUT = "${DEPLOY_DIR_IMAGE}/letterbox-mail-latest-oci"
do_install[depends] += "letterbox-mail:do_image_complete"

do_install() {
    install -d ${D}${datadir}/letterbox/letterbox-mail
    cp -R --no-preserve=ownership ${MAIL_OCI_LAYOUT}/. ${D}${datadir}/letterbox/letterbox-mail/
}

FILES:${PN} = "${datadir}/letterbox/letterbox-mail"
