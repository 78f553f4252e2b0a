SUMMARY = "letterbox-mail: the mail system's OCI image (Postfix and Dovecot)"
DESCRIPTION = "The Yocto way to build the image `make mail-image` builds from Debian trixie: \
the same packages from meta-networking, as an OCI image layout the agent imports into \
containerd."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# image-oci builds on the "container" type (image-container), which must be named too.
IMAGE_FSTYPES = "container oci"
inherit image image-oci

# The image's name and tag, as src/image/mail.rs's REFERENCE (letterbox-mail:latest).
OCI_IMAGE_TAG = "latest"
# The agent starts each container with its own command line (src/containers/spec.rs).
OCI_IMAGE_CMD = ""

IMAGE_FEATURES = ""
IMAGE_LINGUAS = ""
NO_RECOMMENDATIONS = "1"
# Postfix 3.10 and Dovecot 2.4, as in the Debian-built image; base-passwd and base-files
# for the users, groups and directories their packages create.
IMAGE_INSTALL = "base-files base-passwd busybox postfix dovecot"

# No kernel in a container image.
IMAGE_CONTAINER_NO_DUMMY = "1"
