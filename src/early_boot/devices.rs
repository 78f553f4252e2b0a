//! Drivers for the devices: coldplug loads the modules for what is there at boot (from
//! each device's modalias), and hotplug does the same for devices that appear later.

use std::path::Path;
use std::sync::Mutex;

use log::{info, warn};

use super::modules::{Loader, ModuleIndex};

pub fn load_named(modules: &Mutex<(ModuleIndex, Loader)>, name: &str) {
    let mut guard = modules.lock().expect("module index");
    let (index, loader) = &mut *guard;
    let Some(module) = index.resolve(name) else {
        warn!("early boot: no module {name}");
        return;
    };
    match loader.load(index, &module) {
        Ok(new) if !new.is_empty() => info!("modules: loaded {}", new.join(" ")),
        Ok(_) => {}
        Err(e) => warn!("modules: {}", crate::error_chain(&e)),
    }
}

/// Loads the drivers of every device present: reads each `modalias` under /sys/devices and
/// loads what modules.alias maps it to, until a pass finds nothing new (loading a bus
/// driver makes the devices behind it appear).
pub fn coldplug(modules: &Mutex<(ModuleIndex, Loader)>) {
    loop {
        let mut aliases = Vec::new();
        collect_modaliases(Path::new("/sys/devices"), &mut aliases);
        aliases.sort();
        aliases.dedup();
        let mut loaded_any = false;
        for alias in aliases {
            loaded_any |= load_for_alias(modules, &alias);
        }
        if !loaded_any {
            return;
        }
    }
}

/// Drivers a headless mail appliance leaves out although the device tree lists their
/// hardware: display and GPU (vc4 also stalls boot waiting for firmware clocks), the
/// VideoCore messaging and camera/audio stack, and Bluetooth.
const NOT_FOR_A_HEADLESS_APPLIANCE: &[&str] = &["vc4", "vchiq", "snd_bcm2835", "hci_uart", "btbcm"];

/// Loads the modules matching one device's modalias; true when something new was loaded.
pub fn load_for_alias(modules: &Mutex<(ModuleIndex, Loader)>, alias: &str) -> bool {
    let mut guard = modules.lock().expect("module index");
    let (index, loader) = &mut *guard;
    let mut loaded_any = false;
    for module in index.matching(alias) {
        if NOT_FOR_A_HEADLESS_APPLIANCE.contains(&module.as_str()) {
            continue;
        }
        match loader.load(index, &module) {
            Ok(new) if !new.is_empty() => {
                info!("modules: {alias}: loaded {}", new.join(" "));
                loaded_any = true;
            }
            Ok(_) => {}
            // One driver failing (e.g. for hardware that is absent) must not stop the boot.
            Err(e) => warn!("modules: {alias}: {}", crate::error_chain(&e)),
        }
    }
    loaded_any
}

fn collect_modaliases(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            collect_modaliases(&entry.path(), out);
        } else if kind.is_file() && entry.file_name() == "modalias" {
            if let Ok(alias) = std::fs::read_to_string(entry.path()) {
                let alias = alias.trim();
                if !alias.is_empty() {
                    out.push(alias.to_string());
                }
            }
        }
    }
}

pub mod hotplug {
    //! Devices that appear after coldplug (a USB network adapter plugged in later, the
    //! devices behind a freshly loaded USB host driver): the kernel announces them on the
    //! uevent netlink socket with their MODALIAS.

    use std::sync::{Arc, Mutex};

    use log::warn;
    use nix::sys::socket::{
        bind, recvfrom, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag,
        SockProtocol, SockType,
    };

    use super::{coldplug, load_for_alias, Loader, ModuleIndex};

    /// Room for the burst of uevents a USB hub with several devices makes while a module
    /// load holds this thread up (the default, ~200 KiB, overflows).
    const RECEIVE_BUFFER: usize = 4 << 20;

    pub fn spawn(modules: Arc<Mutex<(ModuleIndex, Loader)>>) {
        let sock = match socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        ) {
            Ok(sock) => sock,
            Err(e) => {
                warn!("hotplug: no uevent socket ({e}); only devices present at boot get drivers");
                return;
            }
        };
        // Group 1: the kernel's own uevents.
        if let Err(e) = bind(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &NetlinkAddr::new(0, 1),
        ) {
            warn!("hotplug: cannot bind the uevent socket ({e}); only devices present at boot get drivers");
            return;
        }
        // Force (as root) past rmem_max; the plain option is capped but better than nothing.
        if setsockopt(&sock, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            let _ = setsockopt(&sock, sockopt::RcvBuf, &RECEIVE_BUFFER);
        }
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let (n, from) =
                    match recvfrom::<NetlinkAddr>(std::os::fd::AsRawFd::as_raw_fd(&sock), &mut buf)
                    {
                        Ok(received) => received,
                        Err(nix::Error::EINTR) => continue,
                        // Events were dropped, maybe a device's "add": scan for every device.
                        Err(nix::Error::ENOBUFS) => {
                            warn!("hotplug: uevents were dropped; scanning all devices again");
                            coldplug(&modules);
                            continue;
                        }
                        Err(e) => {
                            warn!("hotplug: uevent socket failed: {e}");
                            return;
                        }
                    };
                // Only the kernel (port 0) is trusted to name modules to load.
                if from.is_none_or(|addr| addr.pid() != 0) {
                    continue;
                }
                if let Some(alias) = add_event_modalias(&buf[..n]) {
                    load_for_alias(&modules, &alias);
                }
            }
        });
    }

    /// The MODALIAS of an "add@..." uevent: NUL-separated KEY=value fields.
    fn add_event_modalias(msg: &[u8]) -> Option<String> {
        let mut fields = msg.split(|&b| b == 0);
        let header = fields.next()?;
        if !header.starts_with(b"add@") {
            return None;
        }
        fields
            .filter_map(|f| f.strip_prefix(b"MODALIAS="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .next()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn add_events_yield_their_modalias() {
            let msg =
                b"add@/devices/usb1/1-1/1-1:1.0\0ACTION=add\0MODALIAS=usb:v0525pA4A2d\0SEQNUM=9\0";
            assert_eq!(
                super::add_event_modalias(msg).as_deref(),
                Some("usb:v0525pA4A2d")
            );
            let msg = b"remove@/devices/usb1\0MODALIAS=usb:x\0";
            assert_eq!(super::add_event_modalias(msg), None);
        }
    }
}
