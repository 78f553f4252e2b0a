//! `letterbox qemu IMAGE`: boots an image under `qemu-system-aarch64 -M raspi3b`.
//!
//! QEMU has no Pi GPU firmware, so this does the firmware's part: it takes the kernel,
//! the Pi 3 device tree, the initramfs and cmdline.txt from the image's own FAT partition.
//! The SD card is a copy of the image grown to [`CARD_BYTES`], which also exercises growing
//! the data partition on first boot.
//! QEMU puts the PL011 on its first -serial and the mini UART (the console on GPIO
//! 14/15, ttyS1) on its second. Networking is user-mode, through a USB network adapter
//! (the Pi 3's on-board LAN9514 is not emulated), with host ports forwarded to the guest.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{file_len, run, ImageError};

/// User-mode networking's defaults: the guest's letterbox.toml must use these.
pub const GUEST_NET: &str = "10.0.2.0/24";
pub const GUEST_HOST: &str = "10.0.2.2";
/// The card's size: 64 GiB, a card a small organisation buys, and a power of two, as QEMU's
/// SD model wants. The image's 32 MiB data filesystem reserves group descriptor blocks for
/// growth to 32 GiB only, so first boot's growth also has the kernel change their layout
/// (meta_bg). A sparse file: only what the guest writes takes space.
pub const CARD_BYTES: u64 = 64 << 30;

/// The appliance's mail ports, and the webmail's HTTPS, which `letterbox qemu` forwards
/// from high local ports.
pub const MAIL_PORTS: &[(u16, &str)] = &[
    (25, "SMTP"),
    (587, "submission"),
    (465, "submission over TLS"),
    (993, "IMAP over TLS"),
    (143, "IMAP"),
    (443, "webmail (HTTPS)"),
];

/// A forward of host TCP port `host` on 127.0.0.1 to the guest's `guest`.
pub fn tcp_forward(host: u16, guest: u16) -> String {
    format!("tcp:127.0.0.1:{host}-:{guest}")
}

/// Each mail port at `base` plus the port (base 10000: 25 on 10025, 993 on 10993), as
/// (host port, guest port, what); None when one would pass 65535.
pub fn mail_forwards(base: u16) -> Option<Vec<(u16, u16, &'static str)>> {
    MAIL_PORTS
        .iter()
        .map(|&(port, what)| Some((base.checked_add(port)?, port, what)))
        .collect()
}

/// Appended to the image's kernel command line: see [`prepare`].
pub const WATCHDOG_OFF: &str = "letterbox.watchdog=off";

/// What QEMU needs, extracted from and next to the image.
pub struct Prepared {
    pub kernel: PathBuf,
    pub dtb: PathBuf,
    pub initrd: PathBuf,
    pub sd_card: PathBuf,
    pub cmdline: String,
    /// The image's letterbox.toml.
    pub config_text: String,
}

impl Prepared {
    /// Why the guest will not be reachable under user-mode networking, if it will not:
    /// its file gives no interface an address in 10.0.2.0/24.
    fn user_network_warning(&self) -> Option<String> {
        let net: ipnet::Ipv4Net = GUEST_NET.parse().expect("GUEST_NET");
        let reachable = crate::config::parse(crate::paths::PROVISIONING_FILE, &self.config_text)
            .map(|cfg| {
                cfg.interfaces
                    .iter()
                    .flat_map(|i| &i.ipv4)
                    .any(|a| net.contains(&a.addr()))
            })
            .unwrap_or(false);
        (!reachable).then(|| {
            format!(
                "the image's letterbox.toml has no address in {GUEST_NET} (gateway {GUEST_HOST}): \
                 QEMU's user-mode network and the DNS port forward will not reach the guest; \
                 `make qemu` builds one from image/qemu-letterbox.toml that does"
            )
        })
    }
}

/// Which SD card the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Card {
    /// A fresh copy of the image: a first boot.
    Fresh,
    /// The card an earlier boot in the same `work` left, as it is: the same Pi powered on
    /// again (its data partition grown, the mail image imported, its mail kept).
    AsLeft,
}

/// Extracts the boot files with mtools and makes (or, for [`Card::AsLeft`], finds) the SD
/// card in `work`; warns on stderr when the guest will be unreachable (see
/// [`Prepared::user_network_warning`]).
pub fn prepare(image: &Path, work: &Path, card: Card) -> Result<Prepared, ImageError> {
    let sd_card = work.join("sd.img");
    if card == Card::AsLeft && !sd_card.exists() {
        return Err(ImageError::Layout(format!(
            "no card from an earlier boot at {}: boot {} once without --same-card",
            sd_card.display(),
            image.display()
        )));
    }
    std::fs::create_dir_all(work).map_err(|e| ImageError::io(work, e))?;
    let mut disk = std::fs::File::open(image).map_err(|e| ImageError::io(image, e))?;
    let mbr = mbrman::MBR::read_from(&mut disk, 512)?;
    let boot_offset = u64::from(mbr[1].starting_lba) * 512;
    let fat = format!("{}@@{boot_offset}", image.display());
    let extract = |name: &str| -> Result<PathBuf, ImageError> {
        let to = work.join(name);
        let _ = std::fs::remove_file(&to);
        run(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-n", "-i", &fat])
                .arg(format!("::{name}"))
                .arg(&to),
            &format!("mcopy ::{name} from {}", image.display()),
        )?;
        Ok(to)
    };
    let kernel = extract("vmlinuz")?;
    let dtb = extract("bcm2837-rpi-3-b.dtb").map_err(|_| {
        ImageError::Layout(format!(
            "{} has no bcm2837-rpi-3-b.dtb: QEMU's raspi3b boots rpi3 images only \
             (build one with --board rpi3)",
            image.display()
        ))
    })?;
    let initrd = extract("initrd.img")?;
    let cmdline_path = extract("cmdline.txt")?;
    let cmdline =
        std::fs::read_to_string(&cmdline_path).map_err(|e| ImageError::io(&cmdline_path, e))?;
    // raspi3b resets the moment Linux arms the bcm2835 watchdog (QEMU does not emulate its
    // countdown): the agent must leave it alone. A later `letterbox.watchdog=` overrides.
    let cmdline = format!("{} {WATCHDOG_OFF}", cmdline.trim());
    let config_path = extract(crate::paths::PROVISIONING_FILE)?;
    let config_text =
        std::fs::read_to_string(&config_path).map_err(|e| ImageError::io(&config_path, e))?;
    match card {
        Card::Fresh => {
            std::fs::copy(image, &sd_card).map_err(|e| ImageError::io(image, e))?;
            // Never shorter than the image.
            let size = CARD_BYTES.max(file_len(image)?.next_power_of_two());
            std::fs::File::options()
                .write(true)
                .open(&sd_card)
                .and_then(|f| f.set_len(size))
                .map_err(|e| ImageError::io(&sd_card, e))?;
        }
        Card::AsLeft => {}
    }
    let prepared = Prepared {
        kernel,
        dtb,
        initrd,
        sd_card,
        cmdline,
        config_text,
    };
    if let Some(warning) = prepared.user_network_warning() {
        eprintln!("letterbox qemu: warning: {warning}");
    }
    Ok(prepared)
}

/// The QEMU command line. `console` is the -serial backend of the mini UART (e.g.
/// "stdio"); `forwards` are hostfwd rules such as "udp:127.0.0.1:5353-:53".
pub fn command(p: &Prepared, console: &str, forwards: &[String]) -> Command {
    let mut netdev = format!("user,id=net0,net={GUEST_NET},host={GUEST_HOST}");
    for fwd in forwards {
        netdev.push_str(",hostfwd=");
        netdev.push_str(fwd);
    }
    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args([
        "-M", "raspi3b", "-m", "1G", "-display", "none", "-monitor", "none",
    ])
    .arg("-kernel")
    .arg(&p.kernel)
    .arg("-dtb")
    .arg(&p.dtb)
    .arg("-initrd")
    .arg(&p.initrd)
    .args(["-append", &p.cmdline])
    .arg("-drive")
    .arg(format!("if=sd,format=raw,file={}", p.sd_card.display()))
    // A universally administered MAC (the Pi Foundation's OUI): usbnet then names the
    // link eth0, as on the Pi, instead of usb0.
    .args([
        "-netdev",
        &netdev,
        "-device",
        "usb-net,netdev=net0,mac=b8:27:eb:00:00:15",
    ])
    .args(["-serial", "null", "-serial", console]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(config_text: &str) -> Prepared {
        Prepared {
            kernel: PathBuf::new(),
            dtb: PathBuf::new(),
            initrd: PathBuf::new(),
            sd_card: PathBuf::new(),
            cmdline: String::new(),
            config_text: config_text.into(),
        }
    }

    #[test]
    fn the_same_card_needs_an_earlier_boot() {
        let work = tempfile::tempdir().unwrap();
        let image = work.path().join("letterbox-rpi3.img");
        let Err(e) = prepare(
            &image,
            &work.path().join("letterbox-rpi3.img.qemu"),
            Card::AsLeft,
        ) else {
            panic!("booted a card no earlier boot left");
        };
        let e = e.to_string();
        assert!(
            e.contains("no card from an earlier boot") && e.contains("without --same-card"),
            "{e}"
        );
    }

    #[test]
    fn mail_ports_are_forwarded_at_base_plus_port() {
        let forwards = mail_forwards(10000).unwrap();
        let hosts: Vec<(u16, u16)> = forwards.iter().map(|&(h, g, _)| (h, g)).collect();
        assert_eq!(
            hosts,
            [
                (10025, 25),
                (10587, 587),
                (10465, 465),
                (10993, 993),
                (10143, 143),
                (10443, 443)
            ]
        );
        assert_eq!(tcp_forward(10025, 25), "tcp:127.0.0.1:10025-:25");
        assert_eq!(mail_forwards(65000), None);
    }

    #[test]
    fn only_a_file_with_a_user_network_address_boots_without_a_warning() {
        let qemu = include_str!("../../image/qemu-letterbox.toml");
        assert_eq!(prepared(qemu).user_network_warning(), None);
        let warning = prepared(crate::config::DEFAULT_TOML)
            .user_network_warning()
            .unwrap();
        assert!(warning.contains("10.0.2.0/24"), "{warning}");
    }
}
