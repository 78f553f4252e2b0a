//! `letterbox qemu`: boot an image under qemu-system-aarch64 -M raspi3b.

use std::path::PathBuf;

use super::CliResult;
use crate::image;

#[derive(Debug, clap::Args)]
pub struct Args {
    image: PathBuf,
    /// Host port forwarded to the appliance's DNS server (UDP and TCP 53).
    #[arg(long, default_value_t = 5353)]
    dns_port: u16,
    /// The mail ports (25, 587, 465, 993, 143) and the webmail's 443 are forwarded from
    /// this plus the port:
    /// 10025, 10587, 10465, 10993, 10143 and 10443 by default.
    #[arg(long, default_value_t = 10000)]
    mail_port_base: u16,
    /// The agent's watchdog: `off` (raspi3b resets as soon as the Pi's watchdog is armed)
    /// or a device such as /dev/watchdog1; passed as `letterbox.watchdog=` to the kernel.
    #[arg(long, default_value = "off")]
    watchdog: String,
    /// Boot the SD card the last boot of IMAGE left (IMAGE.qemu/sd.img) as it is, as when
    /// a Pi is powered on again, rather than a fresh copy of IMAGE (a first boot).
    #[arg(long)]
    same_card: bool,
}

pub fn run(args: Args) -> CliResult {
    let work = PathBuf::from(format!("{}.qemu", args.image.display()));
    let card = match args.same_card {
        true => image::qemu::Card::AsLeft,
        false => image::qemu::Card::Fresh,
    };
    let mut prepared = image::qemu::prepare(&args.image, &work, card)?;
    // The last `letterbox.watchdog=` wins over the one `prepare` appended.
    prepared
        .cmdline
        .push_str(&format!(" letterbox.watchdog={}", args.watchdog));
    let Some(mail) = image::qemu::mail_forwards(args.mail_port_base) else {
        return Err(format!(
            "--mail-port-base {} puts a mail port past 65535",
            args.mail_port_base
        )
        .into());
    };
    let mut forwards = vec![
        format!("udp:127.0.0.1:{}-:53", args.dns_port),
        image::qemu::tcp_forward(args.dns_port, 53),
    ];
    eprintln!("letterbox qemu: forwarded from 127.0.0.1 to the appliance:");
    eprintln!("  {:>5} -> 53  DNS (UDP and TCP)", args.dns_port);
    for (host, guest, what) in mail {
        eprintln!("  {host:>5} -> {guest:<3} {what}");
        forwards.push(image::qemu::tcp_forward(host, guest));
    }
    // Become QEMU: signals (^C, a script's kill) then reach it, not a parent.
    let err = std::os::unix::process::CommandExt::exec(&mut image::qemu::command(
        &prepared, "stdio", &forwards,
    ));
    Err(format!("cannot run qemu-system-aarch64: {err}").into())
}
