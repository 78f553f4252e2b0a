//! `letterbox-init`: PID 1 of the appliance, and the same agent on an ordinary host under
//! `letterbox run`. [`boot`] reads top to bottom as the boot sequence.

mod dns_unit;
pub mod log;
mod mounts;
pub mod provisioning;
pub mod reaper;
pub mod units;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::log::{error, info, warn};
use clap::{CommandFactory, Parser};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use provisioning::{Provisioning, Source};
use reaper::{Reaper, Scope};
use units::{Supervisor, UnitState, UnitTable};

/// How long boot waits for the file's interfaces to appear (USB adapters enumerate late).
const BOOT_LINK_WAIT: Duration = Duration::from_secs(20);
/// How long boot waits for the network to be configured before it goes on to the console.
const BOOT_NETWORK_LIMIT: Duration = Duration::from_secs(30);
/// How long the remaining processes get after SIGTERM at shutdown, before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the agent was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of the appliance (or of a PID namespace): mounts, reaps orphans, reboots.
    Pid1,
    /// `letterbox run` on an ordinary host: no mounts, no reboot; it exits instead.
    Host,
}

/// `letterbox-init` (and `/init`) command line; the defaults are the appliance's paths.
#[derive(Debug, clap::Parser)]
#[command(
    name = "letterbox-init",
    version,
    about = "letterbox's init agent (PID 1)"
)]
pub struct InitArgs {
    /// Where the boot partition (with letterbox.toml) is mounted.
    #[arg(long, default_value = "/boot")]
    pub boot_dir: PathBuf,
    /// Persistent state (the last good configuration); on the data partition.
    #[arg(long, default_value = "/data/letterbox")]
    pub state_dir: PathBuf,
    /// Console device; overrides `[console] device` (serial0, ttyAMA0 or a /dev path).
    #[arg(long)]
    pub console: Option<String>,
    /// Root under which /etc/hostname, /etc/hosts, /etc/resolv.conf are written.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// As PID 1: what was wrong with the command line, logged once the logger is up.
    #[arg(skip)]
    pub command_line_problem: Option<String>,
}

impl InitArgs {
    /// The command line of `letterbox-init`. As PID 1 it is parsed leniently: the kernel
    /// hands init the boot parameters it does not know (`quiet`, `splash`) as arguments,
    /// and a stray word must not stop the appliance from booting.
    pub fn from_command_line() -> InitArgs {
        if std::process::id() == 1 {
            InitArgs::parse_lenient(std::env::args_os())
        } else {
            InitArgs::parse()
        }
    }

    fn parse_lenient(args: impl IntoIterator<Item = std::ffi::OsString>) -> InitArgs {
        let command = InitArgs::command();
        let known: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long().map(|long| format!("--{long}")))
            .collect();
        let mut args = args.into_iter();
        let mut kept: Vec<std::ffi::OsString> = args.next().into_iter().collect();
        let mut problems = Vec::new();
        while let Some(arg) = args.next() {
            let text = arg.to_string_lossy();
            let flag = text.split('=').next().unwrap_or_default().to_string();
            if !known.contains(&flag) {
                continue;
            }
            if text.contains('=') {
                kept.push(arg);
                continue;
            }
            match args.next() {
                Some(value) => kept.extend([arg, value]),
                // A trailing `--console`: without it the rest still counts.
                None => problems.push(format!("{flag} has no value; ignored")),
            }
        }
        let mut parsed = InitArgs::try_parse_from(kept).unwrap_or_else(|e| {
            problems.push(format!("{}; using the default paths", e.kind()));
            InitArgs::parse_from(["letterbox-init"])
        });
        if !problems.is_empty() {
            parsed.command_line_problem =
                Some(format!("init command line: {}", problems.join("; ")));
        }
        parsed
    }
}

/// What the agent needs to know, whichever way it was started.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// The provisioning file; `None` runs the embedded default.
    pub provisioning_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// `None`: the configured device as PID 1; no console at all in host mode.
    pub console: Option<String>,
    pub system_root: PathBuf,
}

impl From<InitArgs> for Options {
    fn from(args: InitArgs) -> Options {
        Options {
            mode: Mode::Pid1,
            provisioning_file: Some(args.boot_dir.join("letterbox.toml")),
            state_dir: args.state_dir,
            console: args.console,
            system_root: args.root,
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
    Reaper(#[from] reaper::ReaperError),
}

/// Why the agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Reboot,
    PowerOff,
}

/// The running agent, as the console sees it.
pub struct Agent {
    options: Options,
    provisioning: Mutex<Provisioning>,
    units: UnitTable,
    started: Instant,
    shutdown: mpsc::UnboundedSender<Shutdown>,
    /// The DNS server's zone switch, while the DNS unit runs.
    dns: Mutex<Option<crate::dns::DnsHandle>>,
}

impl Agent {
    /// The configuration in force and the provisioning file's problem, if any.
    pub fn provisioning(&self) -> Provisioning {
        self.provisioning.lock().expect("provisioning").clone()
    }

    /// Re-reads the provisioning file (console `check`); a valid file takes effect for
    /// the console at once and for the network at the next `net` or boot.
    pub fn reload(&self) -> Provisioning {
        let fresh = read_provisioning(&self.options);
        *self.provisioning.lock().expect("provisioning") = fresh.clone();
        fresh
    }

    pub fn request_shutdown(&self, how: Shutdown) {
        let _ = self.shutdown.send(how);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn units(&self) -> Vec<(String, UnitState)> {
        self.units.snapshot()
    }

    pub fn state_dir(&self) -> &std::path::Path {
        &self.options.state_dir
    }

    fn set_dns(&self, handle: Option<crate::dns::DnsHandle>) {
        *self.dns.lock().expect("dns handle") = handle;
    }

    /// The serial the DNS server is serving, if it runs.
    pub fn dns_serial(&self) -> Option<u32> {
        self.dns
            .lock()
            .expect("dns handle")
            .as_ref()
            .map(|h| h.serial())
    }

    /// Re-reads the provisioning file and serves its zone without a restart (console
    /// `dns reload`, SIGHUP). Returns what happened, as text. The reading, zone building
    /// and serial fsync run on the blocking pool, off the runtime's workers.
    pub async fn reload_dns(self: &Arc<Self>) -> Result<String, String> {
        let agent = self.clone();
        tokio::task::spawn_blocking(move || agent.reload_dns_blocking())
            .await
            .map_err(|e| format!("the DNS reload task failed: {e}"))?
    }

    fn reload_dns_blocking(&self) -> Result<String, String> {
        let p = self.reload();
        let Some((cfg, source)) = p.config else {
            return Err(p.problem.unwrap_or_else(|| "no valid configuration".into()));
        };
        let handle = self.dns.lock().expect("dns handle").clone();
        let Some(handle) = handle else {
            return Err("the DNS server is not running (see `status` and `logs`)".into());
        };
        let serial = handle.reload(&cfg).map_err(|e| crate::error_chain(&e))?;
        let mut out = String::new();
        if let Some(problem) = p.problem {
            out.push_str(&problem);
            out.push('\n');
        }
        out.push_str(&format!(
            "zone {} from {source}: serving serial {serial}",
            cfg.system.domain
        ));
        Ok(out)
    }

    /// Applies the network of the configuration in force; the report or the error, as text.
    pub async fn apply_network(&self) -> Result<String, String> {
        let Some((cfg, _)) = self.provisioning().config else {
            return Err("no valid configuration to apply".into());
        };
        crate::net::apply(&cfg, &self.options.system_root)
            .await
            .map(|report| report.to_string())
            .map_err(|e| crate::error_chain(&e))
    }
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
    let logger = log::logger();
    logger.log_to_stderr(options.mode == Mode::Pid1);
    if options.mode == Mode::Pid1 {
        // PID 1 must not end (the kernel would panic): a panic is logged, then the box
        // reboots. With panic=abort the hook still runs, before the abort.
        std::panic::set_hook(Box::new(|panic| {
            error!("{panic}");
            reboot_forever(Shutdown::Reboot)
        }));
    }
    if let Some(problem) = command_line_problem {
        error!("{problem}");
    }
    match run(options.clone()) {
        Ok(how) => finish(options.mode, how),
        Err(e) => {
            error!("{}", crate::error_chain(&e));
            // PID 1 must not just exit (the kernel would panic): power off cleanly instead.
            match options.mode {
                Mode::Pid1 => finish(Mode::Pid1, Shutdown::PowerOff),
                Mode::Host => ExitCode::FAILURE,
            }
        }
    }
}

fn run(options: Options) -> Result<Shutdown, InitError> {
    if options.mode == Mode::Host {
        // net::apply sets the host name; on a shared host it must stay inside the agent.
        // Done before the runtime starts threads, which then inherit the namespace.
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS) {
            // Without root nothing can change the host name anyway; net reports that.
            warn!("no UTS namespace of its own ({e}): the host name will not be set");
        }
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
    let mode = options.mode;
    info!(
        "letterbox {} starting ({})",
        env!("CARGO_PKG_VERSION"),
        match mode {
            Mode::Pid1 => "as PID 1",
            Mode::Host => "run mode on this host",
        }
    );

    if mode == Mode::Pid1 {
        info!("mounting pseudo filesystems");
        let result = mounts::mount_pseudo_filesystems();
        match &result.mounted[..] {
            [] if result.failed.is_empty() => info!("pseudo filesystems already mounted"),
            [] => {}
            mounted => info!("mounted {}", mounted.join(", ")),
        }
        // Keep going: the console is still the best place to see what is wrong.
        for e in &result.failed {
            error!("{}", crate::error_chain(e));
        }
        if let Err(e) = log::logger().log_to_kmsg() {
            warn!("no kernel log: /dev/kmsg: {e}");
        }
        // Ctrl-alt-del then reaches PID 1 as SIGINT (a clean reboot, below) instead of
        // resetting at once. Refused inside a PID namespace, where there is no such key.
        let _ = nix::sys::reboot::set_cad_enabled(false);
    }

    // Appliance early boot (mode == Pid1 only): kernel modules and the SD card's
    // boot/root/data partitions, from `crate::early_boot` (the image helper's module). It does
    // nothing unless "/" is the appliance's initramfs; when it ran, its paths are the ones.
    if mode == Mode::Pid1 {
        match crate::early_boot::run() {
            Ok(Some(layout)) => {
                info!("early boot: layout {layout:?}");
                options.provisioning_file = Some(layout.config_file);
                options.state_dir = layout.state_dir;
            }
            Ok(None) => {}
            Err(e) => error!("early boot failed: {}", crate::error_chain(&e)),
        }
    }

    let (shutdown_tx, mut shutdown_rx) = mpsc::unbounded_channel();
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| InitError::Signal("SIGTERM", e))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| InitError::Signal("SIGINT", e))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| InitError::Signal("SIGHUP", e))?;
    let reaper = Reaper::start(match mode {
        Mode::Pid1 => Scope::AllChildren,
        Mode::Host => Scope::Spawned,
    })?;

    let provisioning = read_provisioning(&options);

    match &provisioning.config {
        Some((cfg, _)) => bring_up_network(cfg, &options.system_root).await,
        None => warn!("network not configured: no valid configuration"),
    }

    let console = console_device(&options, &provisioning);
    let mode = options.mode;
    let agent = Arc::new(Agent {
        options,
        provisioning: Mutex::new(provisioning),
        units: UnitTable::default(),
        started: Instant::now(),
        shutdown: shutdown_tx,
        dns: Mutex::new(None),
    });

    info!("starting units");
    let mut supervisor = Supervisor::new(reaper, agent.units.clone());
    if let Some((device, baud)) = console {
        start_console(&mut supervisor, &agent, mode, &device, baud);
    }
    // Later units (containerd) start here, after the console: they stop before it.
    supervisor.start(dns_unit::unit(agent.clone()));

    let how = loop {
        tokio::select! {
            Some(how) = shutdown_rx.recv() => {
                info!("{} requested from the console", describe(how));
                break how;
            }
            _ = sigterm.recv() => {
                // As PID 1, SIGTERM is how a supervisor (or `kill 1`) asks the appliance to
                // stop: power off. In run mode it only ends the agent.
                info!("SIGTERM received");
                break Shutdown::PowerOff;
            }
            _ = sigint.recv() => {
                // The kernel sends PID 1 SIGINT for ctrl-alt-del: the traditional reboot.
                info!("SIGINT received");
                break Shutdown::Reboot;
            }
            _ = sighup.recv() => {
                info!("SIGHUP received: reloading the zone");
                match agent.reload_dns().await {
                    Ok(done) => info!("{done}"),
                    Err(e) => warn!("DNS reload: {e}"),
                }
            }
        }
    };

    info!("shutting down: stopping units");
    supervisor.stop_all().await;
    if mode == Mode::Pid1 {
        stop_remaining_processes().await;
    }
    Ok(how)
}

/// The console login, the first unit; log lines go to the console from now on.
fn start_console(
    supervisor: &mut Supervisor,
    agent: &Arc<Agent>,
    mode: Mode,
    device: &str,
    baud: u32,
) {
    use crate::console::device;
    // The kernel's console is where someone is looking: better than no login at all.
    let dev_console = PathBuf::from("/dev/console");
    let mut path = device::resolve(device).unwrap_or_else(|e| {
        error!("{}; using /dev/console instead", crate::error_chain(&e));
        dev_console.clone()
    });
    // As PID 1 a missing UART (`ttyAMA0` on a board without it) would leave the login
    // restarting for ever. On a host the error on stderr is the better answer.
    let opened = match mode {
        Mode::Pid1 => device::open_for_log_or(&path, &dev_console),
        Mode::Host => device::open_for_log(&path).map(|file| (path.clone(), file, None)),
    };
    match opened {
        Ok((opened, file, why)) => {
            if let Some(e) = why {
                error!(
                    "{}; using {} instead",
                    crate::error_chain(&e),
                    opened.display()
                );
            }
            path = opened;
            let same_tty = device::is_stderr_tty(&file, &path);
            log::logger().log_to_console(file, same_tty);
        }
        Err(e) => warn!("{}", crate::error_chain(&e)),
    }
    info!("login prompt on {}", path.display());
    supervisor.start(crate::console::unit(agent.clone(), path, baud));
}

/// Reads the provisioning file, logging what it found and which configuration is used.
fn read_provisioning(options: &Options) -> Provisioning {
    match &options.provisioning_file {
        Some(path) => info!("reading {}", path.display()),
        None => info!("reading the embedded default configuration"),
    }
    let p = provisioning::load(options.provisioning_file.as_deref(), &options.state_dir);
    if let Some(problem) = &p.problem {
        error!("{problem}");
    }
    match (&p.config, &p.problem) {
        (Some((cfg, Source::LastGood(path))), _) => warn!(
            "using the last good configuration {} ({})",
            path.display(),
            cfg.system.fqdn()
        ),
        (Some((cfg, source)), _) => info!("configuration {} from {source}", cfg.system.fqdn()),
        (None, _) => error!(
            "no valid configuration and no last good copy: fix letterbox.toml, then `check` on the console"
        ),
    }
    p
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
async fn bring_up_network(cfg: &crate::config::Config, root: &Path) {
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

/// PID 1 only: whatever is still running (orphans, helpers) gets SIGTERM and, if still
/// there after the grace period, SIGKILL. The reaper collects them meanwhile, so none is
/// left (not even a zombie) when the disks are synced.
async fn stop_remaining_processes() {
    let everyone = Pid::from_raw(-1);
    if kill(everyone, Signal::SIGTERM).is_err() {
        return;
    }
    info!("sent SIGTERM to the remaining processes");
    if wait_until_none_left(SHUTDOWN_GRACE).await {
        info!("every other process has ended");
        return;
    }
    warn!(
        "processes left after {}s: sending SIGKILL",
        SHUTDOWN_GRACE.as_secs()
    );
    let _ = kill(everyone, Signal::SIGKILL);
    if wait_until_none_left(SHUTDOWN_GRACE).await {
        info!("every other process has ended");
    } else {
        error!("processes left after SIGKILL; going on");
    }
}

/// Whether every other user-space process (zombies included) was gone within `limit`.
/// Not `kill(-1, 0)`: it also reaches kernel threads, which never end.
async fn wait_until_none_left(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while other_processes_exist() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Whether /proc lists a process other than PID 1 that is not a kernel thread.
fn other_processes_exist() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1)
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !is_kernel_thread(&stat))
        })
}

/// PF_KTHREAD in the flags of a /proc/PID/stat line (field 9; the name, field 2, may
/// hold spaces and parentheses, so fields are counted after its last ')').
fn is_kernel_thread(stat: &str) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

fn describe(how: Shutdown) -> &'static str {
    match how {
        Shutdown::Reboot => "reboot",
        Shutdown::PowerOff => "power-off",
    }
}

/// Syncs, then reboots or powers off (PID 1) or exits (run mode).
fn finish(mode: Mode, how: Shutdown) -> ExitCode {
    nix::unistd::sync();
    match mode {
        Mode::Host => {
            info!("run mode: exiting instead of a {}", describe(how));
            log::logger().flush_within(LOG_FLUSH_LIMIT);
            ExitCode::SUCCESS
        }
        Mode::Pid1 => reboot_forever(how),
    }
}

/// How long the last lines may take to reach the console before an exit or reboot.
const LOG_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// PID 1 never returns (the kernel would panic): syncs and reboots or powers off; if the
/// kernel refuses, tries the other, and failing both waits for ever with the reason logged.
fn reboot_forever(how: Shutdown) -> ! {
    nix::unistd::sync();
    let other = match how {
        Shutdown::Reboot => Shutdown::PowerOff,
        Shutdown::PowerOff => Shutdown::Reboot,
    };
    for attempt in [how, other] {
        info!(
            "{}",
            match attempt {
                Shutdown::Reboot => "rebooting",
                Shutdown::PowerOff => "powering off",
            }
        );
        log::logger().flush_within(LOG_FLUSH_LIMIT);
        let result = reboot(match attempt {
            Shutdown::Reboot => RebootMode::RB_AUTOBOOT,
            Shutdown::PowerOff => RebootMode::RB_POWER_OFF,
        });
        let Err(e) = result;
        error!("{} failed: {e}", describe(attempt));
    }
    error!("cannot reboot or power off: waiting for a power cycle");
    log::logger().flush_within(LOG_FLUSH_LIMIT);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid1_command_line_ignores_kernel_boot_words() {
        let args = [
            "letterbox-init",
            "quiet",
            "--console",
            "ttyS1",
            "splash",
            "--root=/r",
        ];
        let parsed = InitArgs::parse_lenient(args.map(Into::into));
        assert_eq!(parsed.console.as_deref(), Some("ttyS1"));
        assert_eq!(parsed.root, PathBuf::from("/r"));
        assert_eq!(parsed.boot_dir, PathBuf::from("/boot"));
        assert_eq!(parsed.state_dir, PathBuf::from("/data/letterbox"));
    }

    #[test]
    fn pid1_command_line_keeps_what_it_can_and_says_what_it_ignored() {
        let args = ["letterbox-init", "--root=/r", "--console"];
        let parsed = InitArgs::parse_lenient(args.map(Into::into));
        assert_eq!(parsed.root, PathBuf::from("/r"));
        assert_eq!(parsed.console, None);
        let problem = parsed.command_line_problem.unwrap();
        assert!(problem.contains("--console has no value"), "{problem}");

        let fine = InitArgs::parse_lenient(["letterbox-init", "quiet"].map(Into::into));
        assert_eq!(fine.command_line_problem, None);
    }

    #[test]
    fn kernel_threads_are_told_from_processes_by_their_flags() {
        // kthreadd (PID 2) is a kernel thread on every Linux; this test is a process.
        let kthreadd = std::fs::read_to_string("/proc/2/stat").unwrap();
        assert!(is_kernel_thread(&kthreadd), "{kthreadd}");
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(!is_kernel_thread(&own), "{own}");
        // A name may hold ") " and digits: fields are counted after the last ')'.
        let tricky = "42 (a) 0 0 0 0 0 2097152 x) S 1 42 42 0 -1 4194560 0 0";
        assert!(!is_kernel_thread(tricky));
        let kthread = "7 (kworker/0:1) I 2 0 0 0 -1 69238880 0 0";
        assert!(is_kernel_thread(kthread));
    }
}
