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
