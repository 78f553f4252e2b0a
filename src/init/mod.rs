//! `letterbox-init`: PID 1 of the appliance, and the same agent on an ordinary host under
//! `letterbox run`. [`boot`] reads top to bottom as the boot sequence, one named step a
//! line; the steps follow it in this file, the command line and shutdown in their own.

mod args;
mod crash_backoff;
mod shutdown;
mod watchdog;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};

pub use args::InitArgs;

use crate::agent::provisioning::{self, Provisioning};
use crate::agent::{Agent, Settings, Shutdown};
use crate::supervise::log::logger;
use crate::supervise::{Reaper, Scope, Supervisor};
use crash_backoff::CrashBackoff;
use shutdown::Signals;
use watchdog::Watchdog;

/// How long boot waits for the file's interfaces to appear (USB adapters enumerate late).
const BOOT_LINK_WAIT: Duration = Duration::from_secs(20);
/// How long boot waits for the network to be configured before it goes on to the console.
const BOOT_NETWORK_LIMIT: Duration = Duration::from_secs(30);
/// How long the watchdog is petted from boot until the main loop turns (the network's
/// waits above, and the crash backoff's delay on top).
const WATCHDOG_BOOT_ALLOWANCE: Duration = Duration::from_secs(180);
/// How long the main loop may go without turning before the watchdog is let go.
const WATCHDOG_MAIN_LOOP_ALLOWANCE: Duration = Duration::from_secs(20);
/// How long the watchdog is petted while the units and processes are stopped.
const WATCHDOG_SHUTDOWN_ALLOWANCE: Duration = Duration::from_secs(90);

/// How the agent was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of the appliance (or of a PID namespace): mounts, reaps orphans, reboots.
    Pid1,
    /// `letterbox run` on an ordinary host: no mounts, no reboot; it exits instead.
    Host,
}

/// What the agent needs to know, whichever way it was started.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub settings: Settings,
    /// `None`: the configured device as PID 1; no console at all in host mode.
    pub console: Option<String>,
    /// Where the control socket listens; `None`: no control socket.
    pub control_socket: Option<PathBuf>,
}

impl From<InitArgs> for Options {
    fn from(args: InitArgs) -> Options {
        Options {
            mode: Mode::Pid1,
            settings: Settings {
                provisioning_file: Some(args.boot_dir.join(crate::paths::PROVISIONING_FILE)),
                state_dir: args.state_dir,
                system_root: args.root,
                mail: Some(crate::agent::MailSettings::appliance()),
            },
            console: args.console,
            control_socket: Some(args.socket),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot watch {0}")]
    Signal(&'static str, #[source] std::io::Error),
    #[error("cannot start the child reaper")]
    Reaper(#[from] crate::supervise::reaper::ReaperError),
}

/// Entry point of `letterbox-init`.
pub fn main_pid1(mut args: InitArgs) -> ExitCode {
    let problem = args.command_line_problem.take();
    start_with(args.into(), problem)
}

/// Builds the runtime and runs the agent to its end; as PID 1 the end is a reboot or
/// power-off, which does not return.
pub fn start(options: Options) -> ExitCode {
    start_with(options, None)
}

fn start_with(options: Options, command_line_problem: Option<String>) -> ExitCode {
    // Installs the logger; everything from here on is logged. As PID 1 stderr is the
    // kernel's /dev/console, which shows a boot that stalls before the console unit.
    logger().log_to_stderr(options.mode == Mode::Pid1);
    if options.mode == Mode::Pid1 {
        // PID 1 must not end (the kernel would panic): a panic is logged, then the box
        // reboots. With panic=abort the hook still runs, before the abort.
        std::panic::set_hook(Box::new(|panic| {
            error!("{panic}");
            shutdown::reboot_forever(Shutdown::Reboot)
        }));
    }
    if let Some(problem) = command_line_problem {
        error!("{problem}");
    }
    let mode = options.mode;
    match run(options) {
        Ok(how) => shutdown::finish(mode, how),
        Err(e) => {
            error!("{}", crate::error_chain(&e));
            // PID 1 must not just exit (the kernel would panic): power off cleanly instead.
            match mode {
                Mode::Pid1 => shutdown::finish(Mode::Pid1, Shutdown::PowerOff),
                Mode::Host => ExitCode::FAILURE,
            }
        }
    }
}

fn run(options: Options) -> Result<Shutdown, InitError> {
    if options.mode == Mode::Host {
        keep_host_name_private();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(InitError::Runtime)?;
    runtime.block_on(boot(options))
}

/// The boot sequence, in order.
async fn boot(mut options: Options) -> Result<Shutdown, InitError> {
    announce(options.mode);
    let mut appliance = false;
    if options.mode == Mode::Pid1 {
        mount_kernel_filesystems();
        appliance = run_early_boot(&mut options.settings);
        crate::clock::restore_at_boot(&options.settings.state_dir);
        keep_images_only_if_installed(&mut options.settings);
    }
    // Only the appliance's own boot counts and arms a watchdog: never a host's.
    let backoff = appliance.then(|| CrashBackoff::record_boot(&options.settings.state_dir));
    let watchdog = appliance
        .then(|| {
            let allowance = WATCHDOG_BOOT_ALLOWANCE
                + backoff
                    .as_ref()
                    .map_or_else(Default::default, CrashBackoff::delay);
            Watchdog::arm(watchdog_choice(), allowance)
        })
        .flatten();
    let mut signals = Signals::watch()?;
    let reaper = Reaper::start(reaper_scope(options.mode))?;
    let provisioning = read_provisioning(&options.settings);
    bring_up_network(&provisioning, &options.settings.system_root).await;
    let console = console_device(&options, &provisioning);
    let (agent, mut shutdown_requests) = Agent::new(
        options.settings.clone(),
        provisioning,
        Supervisor::new(reaper),
    );

    info!("starting units");
    if let Some((device, baud)) = console {
        start_console(&agent, options.mode, &device, baud);
    }
    if let Some(path) = options.control_socket {
        agent.start_control_socket(path);
    }
    agent.start_clock();
    if let Some(backoff) = &backoff {
        backoff.wait().await;
    }
    agent.start_dns();
    // After DNS, so they stop before it: containerd, then the mail containers.
    agent.start_containers();
    // A boot is good once the units have run for a while: the backoff's own wait is not it.
    let units_started = std::time::Instant::now();

    let mut good_boot = backoff;
    let how = signals
        .wait_for_shutdown(&agent, &mut shutdown_requests, || {
            agent.heartbeat();
            if let Some(watchdog) = &watchdog {
                watchdog.keep_alive_for(WATCHDOG_MAIN_LOOP_ALLOWANCE);
            }
            if units_started.elapsed() > crash_backoff::STABLE_AFTER {
                if let Some(backoff) = good_boot.take() {
                    backoff.clear();
                }
            }
        })
        .await;
    if let Some(watchdog) = &watchdog {
        watchdog.keep_alive_for(WATCHDOG_SHUTDOWN_ALLOWANCE);
    }
    shutdown::stop_everything(&agent, options.mode).await;
    if let Some(backoff) = good_boot {
        backoff.clear();
    }
    Ok(how)
}

/// `letterbox.watchdog=` from the kernel command line; a wrong value is logged and the
/// watchdog stays off, as it does when the command line cannot be read.
fn watchdog_choice() -> watchdog::Choice {
    let choice = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("/proc/cmdline: {e}"))
        .and_then(|cmdline| watchdog::choice(&cmdline));
    choice.unwrap_or_else(|e| {
        error!("watchdog: {e}; the watchdog stays off");
        watchdog::Choice::Off
    })
}

fn announce(mode: Mode) {
    info!(
        "letterbox {} starting ({})",
        env!("CARGO_PKG_VERSION"),
        match mode {
            Mode::Pid1 => "as PID 1",
            Mode::Host => "run mode on this host",
        }
    );
}

/// `net::apply` sets the host name; on a shared host it must stay inside the agent. Done
/// before the runtime starts threads, which then inherit the namespace.
fn keep_host_name_private() {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS) {
        // Without root nothing can change the host name anyway; net reports that.
        warn!("no UTS namespace of its own ({e}): the host name will not be set");
    }
}

/// PID 1: /proc, /sys, /dev, /run and /tmp, then the kernel log as a log sink.
fn mount_kernel_filesystems() {
    info!("mounting pseudo filesystems");
    let result = crate::early_boot::mounts::mount_pseudo_filesystems();
    match &result.mounted[..] {
        [] if result.failed.is_empty() => info!("pseudo filesystems already mounted"),
        [] => {}
        mounted => info!("mounted {}", mounted.join(", ")),
    }
    // Keep going: the console is still the best place to see what is wrong.
    for e in &result.failed {
        error!("{}", crate::error_chain(e));
    }
    if let Err(e) = logger().log_to_kmsg() {
        warn!("no kernel log: /dev/kmsg: {e}");
    }
    // Ctrl-alt-del then reaches PID 1 as SIGINT (a clean reboot) instead of resetting at
    // once. Refused inside a PID namespace, where there is no such key.
    let _ = nix::sys::reboot::set_cad_enabled(false);
}

/// The appliance's kernel modules and SD card partitions. It does nothing unless "/" is
/// the appliance's initramfs; when it ran, its paths are the ones, and it says true.
fn run_early_boot(settings: &mut Settings) -> bool {
    match crate::early_boot::run() {
        Ok(Some(layout)) => {
            info!("early boot: layout {layout:?}");
            settings.provisioning_file = Some(layout.config_file);
            settings.state_dir = layout.state_dir;
            true
        }
        Ok(None) => false,
        Err(e) => {
            error!("early boot failed: {}", crate::error_chain(&e));
            false
        }
    }
}

/// Drops the images this root filesystem does not carry. Without the letterbox-mail image
/// (`make image` ships it; an image built otherwise may not) no containerd runs: it would
/// only restart its mail unit for ever. The webmail image is carried only when the file
/// enables the webmail. It runs after early boot, in that root: the initramfs, where the
/// settings were made, has neither.
fn keep_images_only_if_installed(settings: &mut Settings) {
    let Some(mail) = &mut settings.mail else {
        return;
    };
    let index = mail.image.join("index.json");
    if !index.exists() {
        info!(
            "mail: no letterbox-mail image in this build ({} is missing); containerd and mail stay off",
            index.display()
        );
        settings.mail = None;
        return;
    }
    if let Some(webmail) = &mail.webmail_image {
        if !webmail.join("index.json").exists() {
            mail.webmail_image = None;
        }
    }
}

fn reaper_scope(mode: Mode) -> Scope {
    match mode {
        Mode::Pid1 => Scope::AllChildren,
        Mode::Host => Scope::Spawned,
    }
}

fn read_provisioning(settings: &Settings) -> Provisioning {
    provisioning::read(settings.provisioning_file.as_deref(), &settings.state_dir)
}

/// The console's device and baud: the command line wins, then the configuration; PID 1
/// falls back to `serial0`, run mode has no console unless asked for one.
fn console_device(options: &Options, p: &Provisioning) -> Option<(String, u32)> {
    let configured = p.config.as_ref().map(|(cfg, _)| cfg.console.clone());
    let baud = configured.as_ref().map_or(115_200, |c| c.baud);
    match (&options.console, options.mode) {
        (Some(device), _) => Some((device.clone(), baud)),
        (None, Mode::Host) => None,
        (None, Mode::Pid1) => Some((
            configured.map_or_else(|| "serial0".to_string(), |c| c.device),
            baud,
        )),
    }
}

/// Waits for the file's interfaces to appear, then applies the network. Whatever fails is
/// logged and boot goes on: the console must come up regardless, and `net` on it retries.
async fn bring_up_network(p: &Provisioning, root: &Path) {
    let Some((cfg, _)) = &p.config else {
        warn!("network not configured: no valid configuration");
        return;
    };
    info!("network up: applying {} interface(s)", cfg.interfaces.len());
    match crate::net::missing_links(cfg).await {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => {
            let names = missing.join(", ");
            info!(
                "network: waiting up to {}s for {names} to appear",
                BOOT_LINK_WAIT.as_secs()
            );
            match crate::net::wait_for_links(cfg, BOOT_LINK_WAIT).await {
                Ok(still) if still.is_empty() => info!("network: {names} appeared"),
                Ok(still) => warn!(
                    "network: {} did not appear within {}s",
                    still.join(", "),
                    BOOT_LINK_WAIT.as_secs()
                ),
                Err(e) => error!("network: {}", crate::error_chain(&e)),
            }
        }
        Err(e) => error!("network: {}", crate::error_chain(&e)),
    }
    let apply = crate::net::apply(cfg, root);
    match tokio::time::timeout(BOOT_NETWORK_LIMIT, apply).await {
        Ok(Ok(report)) if report.failed() => warn!("{report}"),
        Ok(Ok(report)) => info!("{report}"),
        Ok(Err(e)) => error!("network: {}", crate::error_chain(&e)),
        Err(_) => error!(
            "network: not configured within {}s; going on without it",
            BOOT_NETWORK_LIMIT.as_secs()
        ),
    }
}

/// The console login, the first unit; it sends the log lines to the console whenever it
/// opens it.
fn start_console(agent: &Arc<Agent>, mode: Mode, device: &str, baud: u32) {
    use crate::console::device;
    // The kernel's console is where someone is looking: better than no login at all.
    let dev_console = PathBuf::from("/dev/console");
    let mut path = device::resolve(device).unwrap_or_else(|e| {
        error!("{}; using /dev/console instead", crate::error_chain(&e));
        dev_console.clone()
    });
    // As PID 1 a missing UART (`ttyAMA0` on a board without it) would leave the login
    // restarting for ever. On a host the unit's own error is the better answer.
    if mode == Mode::Pid1 {
        match device::usable_or(&path, &dev_console) {
            Ok((usable, why)) => {
                if let Some(e) = why {
                    error!(
                        "{}; using {} instead",
                        crate::error_chain(&e),
                        usable.display()
                    );
                }
                path = usable;
            }
            Err(e) => warn!("{}", crate::error_chain(&e)),
        }
    }
    info!("login prompt on {}", path.display());
    agent.start_unit(crate::console::unit(agent.clone(), path, baud));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::MailSettings;

    fn settings(image: &Path, webmail: &Path) -> Settings {
        let mut mail = MailSettings::appliance();
        mail.image = image.into();
        mail.webmail_image = Some(webmail.into());
        Settings {
            provisioning_file: None,
            state_dir: "/data/letterbox".into(),
            system_root: "/".into(),
            mail: Some(mail),
        }
    }

    #[test]
    fn the_appliance_settings_name_the_webmail_image_before_boot_can_see_it() {
        // Made in the initramfs, where /usr/share/letterbox does not exist yet.
        assert_eq!(
            MailSettings::appliance().webmail_image.as_deref(),
            Some(Path::new(crate::paths::WEBMAIL_IMAGE_DIR))
        );
    }

    #[test]
    fn only_the_carried_images_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let (mail, webmail) = (root.path().join("mail"), root.path().join("webmail"));
        std::fs::create_dir(&mail).unwrap();
        std::fs::write(mail.join("index.json"), "{}").unwrap();

        let mut without_webmail = settings(&mail, &webmail);
        keep_images_only_if_installed(&mut without_webmail);
        let kept = without_webmail.mail.expect("the mail image is carried");
        assert_eq!(kept.webmail_image, None);

        std::fs::create_dir(&webmail).unwrap();
        std::fs::write(webmail.join("index.json"), "{}").unwrap();
        let mut both = settings(&mail, &webmail);
        keep_images_only_if_installed(&mut both);
        assert_eq!(both.mail.unwrap().webmail_image, Some(webmail.clone()));

        let mut no_mail = settings(&root.path().join("absent"), &webmail);
        keep_images_only_if_installed(&mut no_mail);
        assert!(no_mail.mail.is_none());
    }
}
