//! The serial console: a login prompt for `admin` and, behind it, the agent's admin shell
//! (the agent's command vocabulary, [`crate::agent::commands`]). Runs as the first
//! supervised unit; if the line fails it is reopened after a backoff.

pub mod device;
mod login;
mod terminal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::agent::commands::{self, AdminCommand, Via};
use crate::agent::Agent;
use crate::supervise::log::{logger, FLUSH_LIMIT};
use crate::supervise::{StopSignal, Unit};
use login::FailedLogins;
use terminal::{Input, Terminal};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    #[error("console {path} failed")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

const USER: &str = "admin";

/// The console login as a supervised unit. The failed-login count belongs to the unit,
/// not to one run of it: reopening the line (a USB-serial unplug) does not reset it.
pub fn unit(agent: Arc<Agent>, device: PathBuf, baud: u32) -> Unit {
    let failures = Arc::new(Mutex::new(FailedLogins::default()));
    Unit::task("console", move |stop| {
        let agent = agent.clone();
        let device = device.clone();
        let failures = failures.clone();
        async move { Ok(serve(agent, &device, baud, &failures, stop).await?) }
    })
    .logs_from(&[module_path!()])
}

async fn serve(
    agent: Arc<Agent>,
    device: &Path,
    baud: u32,
    failures: &Mutex<FailedLogins>,
    mut stop: StopSignal,
) -> Result<(), ConsoleError> {
    let io_error = |source| ConsoleError::Io {
        path: device.display().to_string(),
        source,
    };
    let file = device::open_for_login(device, baud)?;
    let mut term = Terminal::new(file).map_err(io_error)?;
    // With every opening: a line that went away and came back (a USB-serial unplug) is a
    // new tty, on which the log's earlier handle is dead.
    let log = device::open_for_log(device)?;
    let same_tty = device::is_stderr_tty(&log, device);
    logger().log_to_console(log, same_tty);
    log::info!("console ready on {}", device.display());
    // The boot's log lines go first: the prompt is then the last thing on the screen.
    logger().flushed(FLUSH_LIMIT).await;
    tokio::select! {
        result = sessions(&agent, &mut term, failures) => result.map_err(io_error),
        _ = stop.requested() => {
            // After the shutdown's log lines so far, as at boot.
            logger().flushed(FLUSH_LIMIT).await;
            let notice = match agent.is_shutting_down() {
                true => "\nletterbox is shutting down\n",
                false => "\nthe console is restarting\n",
            };
            let _ = term.write(notice).await;
            Ok(())
        }
    }
}

/// Prompts forever: a login when there is a password hash, otherwise an explanation of
/// what to fix with `check` to re-read the file.
async fn sessions(
    agent: &Arc<Agent>,
    term: &mut Terminal,
    failures: &Mutex<FailedLogins>,
) -> std::io::Result<()> {
    loop {
        let p = agent.provisioning();
        let Some((cfg, _)) = p.config else {
            term.write(&format!(
                "\nletterbox has no valid configuration:\n{}\n\
                 Fix letterbox.toml on the boot partition, then type `check` here (or reboot).\n",
                p.problem.unwrap_or_default()
            ))
            .await?;
            unconfigured_prompt(agent, term).await?;
            continue;
        };
        let Some(hash) = cfg.console.admin_password_hash else {
            term.write(NO_PASSWORD_HELP).await?;
            unconfigured_prompt(agent, term).await?;
            continue;
        };
        if p.problem.is_some() {
            term.write(
                "\nletterbox.toml has errors (logged above; `check` shows them again): \
                 running the last good configuration.\n",
            )
            .await?;
        }
        term.write(&format!("\n{} login: ", cfg.system.hostname))
            .await?;
        let user = match term.read_line(true).await? {
            Input::Line(user) if !user.trim().is_empty() => user.trim().to_string(),
            _ => continue,
        };
        term.write("Password: ").await?;
        let Input::Line(password) = term.read_line(false).await? else {
            continue;
        };
        let verified = user == USER
            && tokio::task::spawn_blocking(move || crate::passwd::verify(&password, &hash))
                .await
                .unwrap_or(false);
        if !verified {
            let delay = failures.lock().expect("failed logins").record();
            // Neither the password nor the typed user name is logged: either may be a secret.
            log::warn!("console: failed login");
            tokio::time::sleep(delay).await;
            term.write("Login incorrect\n").await?;
            continue;
        }
        failures.lock().expect("failed logins").reset();
        log::info!("console: {USER} logged in");
        // Its line before the shell's prompt, not in the middle of it.
        logger().flushed(FLUSH_LIMIT).await;
        let idle_limit = cfg.console.idle_timeout;
        admin_shell(agent, term, &cfg.system.hostname, idle_limit).await?;
        log::info!("console: {USER} logged out");
        logger().flushed(FLUSH_LIMIT).await;
    }
}

const NO_PASSWORD_HELP: &str = "\nNo admin password is set, so this console gives no shell.\n\
To set one: run `letterbox passwd` on any computer, then paste the hash it prints into\n\
letterbox.toml on the boot partition:\n\
\n  [console]\n  admin_password_hash = \"$6$...\"\n\n\
then type `check` here (or reboot).\n";

/// Before login, only `check` (re-read the file) is offered.
async fn unconfigured_prompt(agent: &Arc<Agent>, term: &mut Terminal) -> std::io::Result<()> {
    loop {
        term.write("letterbox (no login)> ").await?;
        match term.read_line(true).await? {
            Input::Line(line) if line.trim() == "check" => {
                let reply = commands::execute(agent, AdminCommand::Check, Via::Console, None).await;
                term.write(&reply.text).await?;
                return Ok(());
            }
            Input::Line(line) if line.trim().is_empty() => return Ok(()),
            _ => term.write("only `check` works before login\n").await?,
        }
    }
}

/// The shell, until `exit`, ^D or `idle_limit` without a key (`None`: no limit).
async fn admin_shell(
    agent: &Arc<Agent>,
    term: &mut Terminal,
    hostname: &str,
    idle_limit: Option<Duration>,
) -> std::io::Result<()> {
    term.write("Type `help` for the commands.\n").await?;
    loop {
        term.write(&format!("{hostname}# ")).await?;
        let line = match term.read_line_within(true, idle_limit).await? {
            Input::Line(line) => line,
            Input::Ended => return Ok(()),
            Input::Idle => {
                let idle = idle_limit.map(|d| d.as_secs()).unwrap_or_default();
                log::info!("console: no key for {idle}s");
                term.write(&format!("\nno key for {idle}s: logged out\n"))
                    .await?;
                return Ok(());
            }
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let password = if commands::needs_password(&words) {
            match ask_new_password(term).await? {
                Some(password) => Some(password),
                None => continue,
            }
        } else {
            None
        };
        let reply = commands::run_with_password(agent, &words, Via::Console, password).await;
        term.write(&reply.text).await?;
        if reply.logout {
            return Ok(());
        }
    }
}

/// `account add`'s password, typed twice without echo; None (and why, on the console)
/// when the two differ or the input ends.
async fn ask_new_password(term: &mut Terminal) -> std::io::Result<Option<String>> {
    let mut typed = Vec::new();
    for prompt in ["Password: ", "Again: "] {
        term.write(prompt).await?;
        match term.read_line(false).await? {
            Input::Line(line) => typed.push(line),
            Input::Ended | Input::Idle => return Ok(None),
        }
        term.write("\n").await?;
    }
    if typed[0] != typed[1] {
        term.write("error: the two passwords differ; nothing was changed\n")
            .await?;
        return Ok(None);
    }
    Ok(typed.pop())
}
