//! Appliance-only early boot, run by PID 1 straight out of the initramfs: kernel
//! filesystems, kernel modules (coldplug and later hotplug), the SD card's partitions,
//! the move into the read-only root filesystem, and the data partition grown to fill
//! the card on first boot.
//!
//! The root filesystem is entered with an in-process `switch_root`: the agent keeps
//! running (same PID 1, same process) but its root becomes p2. That way containerd and
//! runc (dynamically linked Debian binaries on p2) find their libraries at the usual
//! paths, the full module tree on p2 serves devices that appear later, and the initramfs'
//! memory is freed. Nothing is exec'd, so no state is lost between early boot and init.

pub mod data;
mod devices;
pub mod disk;
pub mod modules;
pub mod mounts;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::mount::{mount, MsFlags};

use devices::{coldplug, hotplug, load_named};
use disk::{DiskError, PartitionRef};
use modules::{Loader, ModuleError, ModuleIndex};
use mounts::{mount_at, MountError};

use crate::paths::{BOOT_DIR, DATA_DIR, PROVISIONING_FILE, STATE_DIR};

/// Where the root filesystem is mounted before the agent moves into it.
const NEW_ROOT: &str = "/sysroot";
/// How long to wait for the SD card to show up (TCG emulation is slow; real cards are fast).
const ROOT_WAIT: Duration = Duration::from_secs(90);
/// Modules the mounts need whatever the device tree says: filesystems and codepages.
const FILESYSTEM_MODULES: &[&str] = &[
    "squashfs",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
];
/// On the kernel command line: the agent's watchdog is the kernel's software one.
pub const SOFTDOG_SWITCH: &str = "letterbox.watchdog=softdog";
/// Modules the containers need: overlayfs for containerd's snapshots, a veth pair per
/// box, and the bridge the boxes' veths join. (cgroup v2 is built in; init mounts it.)
const CONTAINER_MODULES: &[&str] = &["overlay", "veth", "bridge"];

/// Where early boot put things, for the rest of the agent.
#[derive(Debug, Clone)]
pub struct BootLayout {
    /// The persistent data partition, writable.
    pub state_dir: PathBuf,
    /// letterbox.toml on the boot partition.
    pub config_file: PathBuf,
    /// The kernel's console tty (`console=` on the command line), e.g. /dev/ttyS1: the UART
    /// on GPIO 14/15 that `serial0` names.
    pub console_tty: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("cannot create mount point {path}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the kernel command line")]
    Cmdline(#[source] std::io::Error),
    #[error("kernel modules")]
    Modules(#[from] ModuleError),
    #[error("no disk with partition {0} appeared within {1:?}")]
    RootNotFound(String, Duration),
    #[error("disk")]
    Disk(#[from] DiskError),
    #[error("cannot move into the root filesystem at {NEW_ROOT}")]
    SwitchRoot(#[source] nix::Error),
    #[error("kernel version (uname)")]
    Uname(#[source] nix::Error),
}

/// Messages go through `log`, whose logger (installed by init) stamps them with the time
/// since boot like the kernel's own lines.
///
/// Expects init's kernel filesystems (/proc, /sys, /dev, /run, /tmp); the switch to the
/// root filesystem moves them along.
///
/// Returns None, touching nothing, when this is not the appliance's initramfs: "/" is not
/// the initramfs, or the kernel command line does not name a root partition (e.g. the
/// agent as PID 1 of a namespace in tests, or on another machine).
pub fn run() -> Result<Option<BootLayout>, BootError> {
    if !root_is_initramfs() {
        return Ok(None);
    }
    let Some(root) = root_partition()? else {
        return Ok(None);
    };
    // First, before anything that can fail: the login goes to /dev/serial0, and without the
    // link it would fall back to the device tree's `serial0`, the Bluetooth UART on a Pi 3.
    let console_tty = console_tty();
    link_serial0(console_tty.as_deref());
    info!("early boot: loading storage drivers, looking for root partition {root}");
    let release = nix::sys::utsname::uname().map_err(BootError::Uname)?;
    let release = release.release().to_string_lossy().into_owned();

    let initramfs_index = ModuleIndex::load(&modules_dir(Path::new("/"), &release))?;
    let modules = Arc::new(Mutex::new((initramfs_index, Loader::default())));
    // Listen before the first scan so a device that appears during it is not missed.
    hotplug::spawn(Arc::clone(&modules));

    for name in FILESYSTEM_MODULES {
        load_named(&modules, name);
    }
    let started = Instant::now();
    let disk = loop {
        coldplug(&modules);
        if let Some(disk) = disk::find_disk(&root)? {
            break disk;
        }
        if started.elapsed() > ROOT_WAIT {
            return Err(BootError::RootNotFound(root.to_string(), ROOT_WAIT));
        }
        let before = started.elapsed().as_secs();
        std::thread::sleep(Duration::from_millis(100));
        let waited = started.elapsed().as_secs();
        if waited / 10 > before / 10 {
            info!("early boot: still waiting for root partition {root} ({waited} s)");
        }
    };
    info!("early boot: found SD card {disk}");

    // Growing is a convenience: a card that cannot grow still boots, with the image's size.
    if let Err(e) = disk::grow_last_partition(&disk, 3) {
        warn!(
            "early boot: data partition not grown: {}",
            crate::error_chain(&e)
        );
    }

    let part = |n: u32| disk::partition_device(&disk, n);
    mount_at(
        &part(root.partition),
        NEW_ROOT,
        "squashfs",
        MsFlags::MS_RDONLY,
        "",
    )?;
    switch_root()?;
    info!("early boot: switched to the read-only root filesystem");

    // The full module tree lives on the root filesystem; the initramfs only had storage.
    let full_index = ModuleIndex::load(&modules_dir(Path::new("/"), &release))?;
    {
        let mut guard = modules.lock().expect("module index");
        guard.0 = full_index;
        guard.1.retry_failed();
    }
    coldplug(&modules);
    for name in CONTAINER_MODULES {
        load_named(&modules, name);
    }
    // Only when asked for (QEMU's tests, where the Pi's own watchdog cannot run): on a
    // host the software watchdog would reboot the machine.
    if kernel_command_line_has(SOFTDOG_SWITCH) {
        load_named(&modules, "softdog");
    }

    // /data first: when the boot partition will not mount, the last good configuration
    // kept there is what the appliance runs.
    let data = data::mount_data(&part(3))?;
    let boot = part(1);
    let boot_mounted = mount_at(
        &boot,
        BOOT_DIR,
        "vfat",
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "fmask=0133,dmask=0022",
    );
    if let Err(e) = &boot_mounted {
        error!(
            "early boot: cannot mount the boot partition {boot}: {}",
            crate::error_chain(e)
        );
        error!(
            "early boot: no {PROVISIONING_FILE}: running the last good configuration kept on \
             {DATA_DIR}, if there is one"
        );
    }
    writable_etc(&modules)?;
    let state_dir = PathBuf::from(STATE_DIR);
    std::fs::create_dir_all(&state_dir).map_err(|source| BootError::MountPoint {
        path: state_dir.clone(),
        source,
    })?;
    let layout = BootLayout {
        state_dir,
        config_file: Path::new(BOOT_DIR).join(PROVISIONING_FILE),
        console_tty,
    };
    info!(
        "early boot: done: boot partition {}, data {}",
        match boot_mounted {
            Ok(()) => "on /boot",
            Err(_) => "NOT MOUNTED",
        },
        match data {
            data::Data::Partition => "on /data",
            data::Data::Tmpfs => "ON A TMPFS",
        }
    );
    Ok(Some(layout))
}

/// /etc stays the image's, but writable for what the agent generates (hostname, hosts,
/// resolv.conf): an overlay whose changes live in /run and vanish at reboot, since the
/// agent writes them afresh from letterbox.toml at every boot.
fn writable_etc(modules: &Mutex<(ModuleIndex, Loader)>) -> Result<(), BootError> {
    load_named(modules, "overlay");
    for dir in ["/run/etc/upper", "/run/etc/work"] {
        std::fs::create_dir_all(dir).map_err(|source| BootError::MountPoint {
            path: dir.into(),
            source,
        })?;
    }
    mount_at(
        "overlay",
        "/etc",
        "overlay",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "lowerdir=/etc,upperdir=/run/etc/upper,workdir=/run/etc/work",
    )?;
    Ok(())
}

/// /dev/serial0 -> the kernel console's tty, as Raspberry Pi OS's udev rules make it:
/// `serial0` means the UART on GPIO 14/15, which cmdline.txt makes the console. (The
/// mainline device trees' `serial0` alias is the PL011, which drives Bluetooth.)
fn link_serial0(console: Option<&Path>) {
    let Some(tty) = console else {
        warn!("early boot: no kernel console; /dev/serial0 not created");
        return;
    };
    let link = Path::new("/dev/serial0");
    let _ = std::fs::remove_file(link);
    match std::os::unix::fs::symlink(tty.file_name().unwrap_or_default(), link) {
        Ok(()) => info!("early boot: /dev/serial0 is {}", tty.display()),
        Err(e) => warn!("early boot: cannot create /dev/serial0: {e}"),
    }
}

/// From <linux/magic.h>; the initramfs is ramfs unless the kernel made it tmpfs.
const RAMFS_MAGIC: i64 = 0x8584_58f6;

fn root_is_initramfs() -> bool {
    nix::sys::statfs::statfs("/")
        .map(|s| {
            let t = s.filesystem_type();
            t == nix::sys::statfs::TMPFS_MAGIC || t.0 == RAMFS_MAGIC
        })
        .unwrap_or(false)
}

/// A directory with a different filesystem than "/" is a mount point.
fn is_mount_point(dir: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(dir), std::fs::metadata("/")) {
        (Ok(d), Ok(root)) => d.dev() != root.dev(),
        _ => false,
    }
}

fn modules_dir(root: &Path, release: &str) -> PathBuf {
    root.join("usr/lib/modules").join(release)
}

/// root=PARTUUID=xxxxxxxx-NN from /proc/cmdline: the MBR disk signature and partition number.
fn root_partition() -> Result<Option<PartitionRef>, BootError> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(BootError::Cmdline)?;
    Ok(cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("root=PARTUUID="))
        .and_then(PartitionRef::parse))
}

fn kernel_command_line_has(word: &str) -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .is_ok_and(|cmdline| cmdline.split_whitespace().any(|w| w == word))
}

/// Moves /dev, /proc and /sys into the new root, frees the initramfs, and makes the new
/// root "/" for this process (what busybox's switch_root does, minus the exec).
fn switch_root() -> Result<(), BootError> {
    for dir in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        if !is_mount_point(dir) {
            continue;
        }
        let target = format!("{NEW_ROOT}{dir}");
        mount(
            Some(dir),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|source| MountError::Mount {
            what: dir.to_string(),
            target,
            source,
        })?;
    }
    free_initramfs();
    std::env::set_current_dir(NEW_ROOT)
        .map_err(|e| BootError::SwitchRoot(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(BootError::SwitchRoot)?;
    nix::unistd::chroot(".").map_err(BootError::SwitchRoot)?;
    nix::unistd::chdir("/").map_err(BootError::SwitchRoot)
}

/// Deletes the initramfs' files (it is RAM that nothing else can free), but only when "/"
/// really is the initramfs: never on a disk.
fn free_initramfs() {
    if !root_is_initramfs() {
        return;
    }
    let Ok(entries) = std::fs::read_dir("/") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if ["dev", "proc", "sys", "run", "tmp", &NEW_ROOT[1..]]
            .iter()
            .any(|keep| name == **keep)
        {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            warn!("early boot: cannot free {}: {e}", path.display());
        }
    }
}

/// The tty the kernel console is on (the last `console=`), from /sys/class/tty/console/active.
fn console_tty() -> Option<PathBuf> {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").ok()?;
    let last = active.split_whitespace().last()?;
    Some(Path::new("/dev").join(last))
}
