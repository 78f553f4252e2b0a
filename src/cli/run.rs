//! `letterbox run`: the agent on an ordinary host, as on the appliance but without
//! mounting, reaping orphans or rebooting (it exits instead).

use std::path::PathBuf;

use super::CliResult;
use crate::agent::{MailSettings, Settings};
use crate::init::{self, Mode, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The provisioning file; the embedded default when omitted.
    file: Option<PathBuf>,
    /// State directory (keeps the last good configuration).
    #[arg(long)]
    state: PathBuf,
    /// Console device for the login (a tty or pty path, or a name such as ttyS0).
    #[arg(long)]
    console: Option<String>,
    /// Where /etc/hostname, /etc/hosts and /etc/resolv.conf are written [default: STATE/root].
    #[arg(long)]
    root: Option<PathBuf>,
    /// The control socket for `letterbox ctl --socket PATH` (none when omitted).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The letterbox-mail OCI image (`make mail-image` builds it in out/): runs containerd,
    /// with its root, state and socket in STATE/containerd, and imports the image into it.
    /// Without it: no containerd and no mail.
    #[arg(long, value_name = "DIR")]
    mail_image: Option<PathBuf>,
    /// The letterbox-webmail OCI image (`make webmail-image`): runs the webmail when
    /// `[webmail] enabled` (the default). Without it: no webmail.
    #[arg(long, value_name = "DIR", requires = "mail_image")]
    webmail_image: Option<PathBuf>,
    /// Where containerd, containerd-shim-runc-v2 and runc are, searched before PATH (may be
    /// given more than once).
    #[arg(long, value_name = "DIR", requires = "mail_image")]
    containerd_dir: Vec<PathBuf>,
}

pub fn run(args: Args) -> CliResult {
    let netns_dir = args.state.join("netns");
    Ok(init::start(Options {
        mode: Mode::Host,
        settings: Settings {
            provisioning_file: args.file,
            system_root: args.root.unwrap_or_else(|| args.state.join("root")),
            state_dir: args.state,
            mail: args.mail_image.map(|image| MailSettings {
                image,
                webmail_image: args.webmail_image,
                binary_dirs: args.containerd_dir,
                netns_dir,
                containerd_state: None,
            }),
        },
        console: args.console,
        control_socket: args.socket,
    }))
}
