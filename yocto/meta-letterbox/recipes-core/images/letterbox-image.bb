SUMMARY = "The letterbox SD-card image for Raspberry Pi 3 and 4"
DESCRIPTION = "What `make image` builds, the Yocto way: a FAT boot partition (firmware, \
kernel, config.txt, cmdline.txt, letterbox.toml), a read-only squashfs root with the agent \
as /sbin/init, containerd, runc and the letterbox-mail image, and a data partition the \
agent grows to fill the card on first boot."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit image

IMAGE_FEATURES = "read-only-rootfs"
IMAGE_LINGUAS = ""
NO_RECOMMENDATIONS = "1"
IMAGE_INSTALL = "base-files base-passwd letterbox letterbox-mail-layout containerd runc \
    kernel-modules"

# The three partitions of files/wic/letterbox-sdimage.wks, as in src/image/disk.rs.
IMAGE_FSTYPES = "wic wic.bmap"
WKS_FILE = "letterbox-sdimage.wks"
# The boot partition also has the provisioning file (deployed by the letterbox recipe).
IMAGE_BOOT_FILES:append = " letterbox.toml"
do_image_wic[depends] += "letterbox:do_deploy"
