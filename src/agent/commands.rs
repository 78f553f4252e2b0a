//! The one command vocabulary: every admin command, parsed by clap the same way whether
//! it was typed on the serial console, sent over the control socket or given to
//! `letterbox ctl`. Help text and error messages are clap's. A new command is one variant
//! of [`AdminCommand`] and one arm of [`execute`].

use std::sync::Arc;

use clap::{ColorChoice, Parser, Subcommand};

use super::{status, Agent, Shutdown};
use crate::accounts::AccountCommand;

/// One line of admin input: its first word is the command (clap's multicall mode, as in
/// a REPL).
#[derive(Debug, Parser)]
#[command(
    multicall = true,
    color = ColorChoice::Never,
    subcommand_value_name = "COMMAND",
    override_usage = "<COMMAND> [ARGS]...",
    subcommand_help_heading = "Commands",
    help_template = "{all-args}"
)]
struct Line {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum AdminCommand {
    /// Host name, uptime, configuration, units and network
    Status,
    /// Apply the network configuration again and show what changed
    Net,
    /// Re-read letterbox.toml from the boot partition and show its errors
    Check,
    /// The zone's serial; `dns reload` re-reads letterbox.toml and serves its zone
    Dns {
        #[command(subcommand)]
        action: Option<DnsAction>,
    },
    /// Recent log lines: the agent's, or one unit's own
    Logs {
        /// A unit (see `units`): its output and log lines only
        unit: Option<String>,
        /// How many lines
        #[arg(short = 'n', long, default_value_t = 40)]
        lines: usize,
    },
    /// Add, list or delete mail accounts
    Account {
        #[command(subcommand)]
        action: crate::accounts::AccountCommand,
    },
    /// The units and their states
    Units,
    /// Stop a unit and start it again at once
    Restart {
        /// The unit (see `units`)
        unit: String,
    },
    /// Stop the services and reboot
    Reboot,
    /// Stop the services and power off
    Poweroff,
    /// Log out of the console
    #[command(visible_alias = "logout")]
    Exit,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DnsAction {
    /// Re-read letterbox.toml and serve its zone without a restart
    Reload,
}

/// Where a command came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Console,
    ControlSocket,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Console => "the console",
            Via::ControlSocket => "the control socket",
        })
    }
}

/// What a command answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    /// False when the command failed or could not be parsed.
    pub ok: bool,
    /// The console session ends (`exit`, `reboot`, `poweroff`).
    pub logout: bool,
}

impl Reply {
    fn ok(text: impl Into<String>) -> Reply {
        Reply {
            text: with_newline(text.into()),
            ok: true,
            logout: false,
        }
    }

    fn error(why: impl std::fmt::Display) -> Reply {
        Reply {
            text: format!("error: {why}\n"),
            ok: false,
            logout: false,
        }
    }

    fn logout(text: &str) -> Reply {
        Reply {
            logout: true,
            ..Reply::ok(text)
        }
    }
}

fn with_newline(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// A parsed line.
#[derive(Debug)]
pub enum Parsed {
    Empty,
    Command(AdminCommand),
    /// Not a command to run: clap's help (ok) or its error (not ok), already rendered.
    Answer(Reply),
}

/// Parses the words of one line; the first is the command.
pub fn parse<S: AsRef<str>>(words: &[S]) -> Parsed {
    if words.is_empty() {
        return Parsed::Empty;
    }
    match Line::try_parse_from(words.iter().map(AsRef::as_ref)) {
        Ok(line) => Parsed::Command(line.command),
        Err(e) => Parsed::Answer(Reply {
            text: with_newline(e.render().to_string()),
            ok: !e.use_stderr(),
            logout: false,
        }),
    }
}

/// Parses and runs one command given as words.
pub async fn run_words<S: AsRef<str>>(agent: &Arc<Agent>, words: &[S], via: Via) -> Reply {
    run_with_password(agent, words, via, None).await
}

/// [`run_words`], with the password `account add` needs, which never travels in the words
/// (so never in a log line or an argv).
pub async fn run_with_password<S: AsRef<str>>(
    agent: &Arc<Agent>,
    words: &[S],
    via: Via,
    password: Option<String>,
) -> Reply {
    match parse(words) {
        Parsed::Empty => Reply::ok(""),
        Parsed::Answer(reply) => reply,
        Parsed::Command(command) => execute(agent, command, via, password).await,
    }
}

/// Whether `words` are an `account add`, which needs a password.
pub fn needs_password<S: AsRef<str>>(words: &[S]) -> bool {
    matches!(
        parse(words),
        Parsed::Command(AdminCommand::Account {
            action: AccountCommand::Add { .. }
        })
    )
}

/// Runs a parsed command; `password` is `account add`'s.
pub async fn execute(
    agent: &Arc<Agent>,
    command: AdminCommand,
    via: Via,
    password: Option<String>,
) -> Reply {
    match command {
        AdminCommand::Account { action } => account(agent, action, password).await,
        AdminCommand::Status => Reply::ok(status::report(agent).await),
        AdminCommand::Net => match agent.apply_network().await {
            Ok(report) => Reply::ok(report),
            Err(e) => Reply::error(crate::error_chain(&e)),
        },
        AdminCommand::Check => match agent.reload_off_runtime().await {
            Ok(p) => Reply::ok(status::check_report(&p)),
            Err(e) => Reply::error(crate::error_chain(&e)),
        },
        AdminCommand::Dns { action: None } => match agent.dns_serial() {
            Some(serial) => Reply::ok(format!("DNS serving serial {serial}")),
            None => Reply::error("DNS is not running (see `status` and `logs dns`)"),
        },
        AdminCommand::Dns {
            action: Some(DnsAction::Reload),
        } => match agent.reload_dns().await {
            Ok(done) => Reply::ok(done),
            Err(e) => Reply::error(crate::error_chain(&e)),
        },
        AdminCommand::Logs { unit: None, lines } => {
            Reply::ok(crate::supervise::log::logger().recent(lines).join("\n"))
        }
        AdminCommand::Logs {
            unit: Some(unit),
            lines,
        } => match agent.supervisor().output(&unit, lines) {
            Ok(lines) => Reply::ok(lines.join("\n")),
            Err(e) => Reply::error(e),
        },
        AdminCommand::Units => Reply::ok(status::units(agent)),
        AdminCommand::Restart { unit } => match agent.supervisor().restart(&unit) {
            Ok(()) => Reply::ok(format!("restarting unit {unit}")),
            Err(e) => Reply::error(e),
        },
        AdminCommand::Reboot => {
            agent.request_shutdown(Shutdown::Reboot, via);
            Reply::logout("rebooting")
        }
        AdminCommand::Poweroff => {
            agent.request_shutdown(Shutdown::PowerOff, via);
            Reply::logout("powering off")
        }
        AdminCommand::Exit => Reply::logout(""),
    }
}

async fn account(agent: &Arc<Agent>, action: AccountCommand, password: Option<String>) -> Reply {
    let done = match action {
        AccountCommand::Add { name, .. } => agent.add_account(&name, password).await,
        AccountCommand::Del { name, purge } => agent.delete_account(&name, purge).await,
        AccountCommand::List { json } => agent.list_accounts().map(|listings| {
            if json {
                serde_json::to_string_pretty(&listings).expect("listings serialize")
            } else {
                crate::accounts::render_table(&listings)
            }
        }),
    };
    match done {
        Ok(text) => Reply::ok(text),
        Err(e) => Reply::error(crate::error_chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The help text, as `help` prints it everywhere.
    fn help() -> String {
        match parse(&["help"]) {
            Parsed::Answer(reply) => reply.text,
            other => unreachable!("`help` is clap's own: {other:?}"),
        }
    }

    fn command(line: &str) -> AdminCommand {
        let words: Vec<&str> = line.split_whitespace().collect();
        match parse(&words) {
            Parsed::Command(c) => c,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn answer(line: &str) -> Reply {
        let words: Vec<&str> = line.split_whitespace().collect();
        match parse(&words) {
            Parsed::Answer(reply) => reply,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn parses_commands_and_arguments() {
        assert_eq!(command("status"), AdminCommand::Status);
        assert_eq!(
            command("logs dns -n 100"),
            AdminCommand::Logs {
                unit: Some("dns".into()),
                lines: 100
            }
        );
        assert_eq!(
            command("logs"),
            AdminCommand::Logs {
                unit: None,
                lines: 40
            }
        );
        assert_eq!(
            command("dns reload"),
            AdminCommand::Dns {
                action: Some(DnsAction::Reload)
            }
        );
        assert_eq!(command("dns"), AdminCommand::Dns { action: None });
        assert_eq!(
            command("restart dns"),
            AdminCommand::Restart { unit: "dns".into() }
        );
        assert_eq!(command("logout"), AdminCommand::Exit);
        assert!(matches!(parse::<&str>(&[]), Parsed::Empty));
    }

    #[test]
    fn unknown_commands_and_stray_arguments_say_what_was_expected() {
        let unknown = answer("stauts");
        assert!(!unknown.ok);
        assert!(
            unknown
                .text
                .starts_with("error: unrecognized subcommand 'stauts'"),
            "{}",
            unknown.text
        );
        assert!(
            unknown
                .text
                .contains("similar subcommands exist: 'restart', 'status'"),
            "{}",
            unknown.text
        );
        let stray = answer("reboot now");
        assert!(!stray.ok);
        assert!(
            stray.text.contains("unexpected argument 'now'"),
            "{}",
            stray.text
        );
        let missing = answer("restart");
        assert!(
            missing
                .text
                .contains("the following required arguments were not provided"),
            "{}",
            missing.text
        );
        assert!(missing.text.contains("<UNIT>"), "{}", missing.text);
    }

    #[test]
    fn help_lists_every_command_once_and_no_colours() {
        let help = help();
        for name in [
            "status", "net", "check", "dns", "logs", "units", "restart", "reboot", "poweroff",
            "exit", "help",
        ] {
            let listed = help
                .lines()
                .filter(|l| l.split_whitespace().next() == Some(name))
                .count();
            assert_eq!(listed, 1, "{name} in:\n{help}");
        }
        assert!(!help.contains('\u{1b}'), "{help:?}");
        println!("{help}");
        let restart = answer("restart --help");
        assert!(restart.ok);
        assert!(
            restart.text.contains("Stop a unit and start it again"),
            "{}",
            restart.text
        );
    }
}
