//! The appliance's fixed paths, named once. `letterbox run` and the tests pass their own
//! instead; these are the defaults on the device.

/// Where the FAT boot partition, which holds the provisioning file, is mounted.
pub const BOOT_DIR: &str = "/boot";
/// Where the ext4 data partition is mounted.
pub const DATA_DIR: &str = "/data";
/// The agent's persistent state, on the data partition.
pub const STATE_DIR: &str = "/data/letterbox";
/// The provisioning file's name, on the boot partition.
pub const PROVISIONING_FILE: &str = "letterbox.toml";
/// The last valid provisioning file, kept in the state directory.
pub const LAST_GOOD_FILE: &str = "last-good.toml";
/// The agent's control socket on the appliance.
pub const CONTROL_SOCKET: &str = "/run/letterbox/control.sock";
/// containerd's root, state, socket and configuration: this directory of the agent's state
/// directory (on the appliance /data/letterbox/containerd, on the data partition).
pub const CONTAINERD_DIR: &str = "containerd";
/// Where the appliance's root filesystem has containerd, its runc shim (Debian's
/// `/usr/bin`) and runc (`/usr/sbin`).
pub const CONTAINERD_BIN_DIRS: &[&str] = &["/usr/bin", "/usr/sbin"];
/// The `letterbox-mail` OCI image layout, on the read-only root filesystem.
pub const MAIL_IMAGE_DIR: &str = "/usr/share/letterbox/letterbox-mail";
/// The `letterbox-webmail` OCI layout on the read-only root.
pub const WEBMAIL_IMAGE_DIR: &str = "/usr/share/letterbox/letterbox-webmail";
