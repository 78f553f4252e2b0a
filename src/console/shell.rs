//! The admin shell behind the console login: the agent's own commands, not a Unix shell.
//! Adding a command is one entry in [`COMMANDS`] plus its function.

use std::fmt::Write;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::init::provisioning::Source;
use crate::init::{Agent, Shutdown};

/// What the shell does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Logout,
}

pub struct Reply {
    pub text: String,
    pub flow: Flow,
}

impl Reply {
    fn text(text: impl Into<String>) -> Reply {
        Reply {
            text: text.into(),
            flow: Flow::Continue,
        }
    }
}

type Run = fn(Arc<Agent>, Vec<String>) -> BoxFuture<'static, Reply>;

pub struct Command {
    pub name: &'static str,
    /// Arguments as shown in `help`; empty when the command takes none.
    pub args: &'static str,
    pub help: &'static str,
    run: Run,
}

pub const COMMANDS: &[Command] = &[
    Command {
        name: "status",
        args: "",
        help: "host name, uptime, configuration, units and network",
        run: status,
    },
    Command {
        name: "net",
        args: "",
        help: "apply the network configuration again and show what changed",
        run: net,
    },
    Command {
        name: "check",
        args: "",
        help: "re-read letterbox.toml from the boot partition and show its errors",
        run: check,
    },
    Command {
        name: "dns",
        args: "[reload]",
        help: "the zone's serial; `dns reload` re-reads letterbox.toml and serves its zone",
        run: dns,
    },
    Command {
        name: "logs",
        args: "[LINES]",
        help: "recent log lines (default 40)",
        run: logs,
    },
    Command {
        name: "reboot",
        args: "",
        help: "stop the services and reboot",
        run: reboot,
    },
    Command {
        name: "poweroff",
        args: "",
        help: "stop the services and power off",
        run: poweroff,
    },
    Command {
        name: "help",
        args: "",
        help: "this list",
        run: help,
    },
    Command {
        name: "exit",
        args: "",
        help: "log out (also: logout, ^D)",
        run: logout,
    },
    Command {
        name: "logout",
        args: "",
        help: "log out",
        run: logout,
    },
];

/// A parsed input line.
pub enum Parsed {
    Empty,
    Run(&'static Command, Vec<String>),
    /// Not runnable; the text says why and what was expected.
    Invalid(String),
}

pub fn parse(line: &str) -> Parsed {
    let mut words = line.split_whitespace();
    let Some(name) = words.next() else {
        return Parsed::Empty;
    };
    let args: Vec<String> = words.map(str::to_string).collect();
    let Some(command) = COMMANDS.iter().find(|c| c.name == name) else {
        return Parsed::Invalid(format!(
            "unknown command `{name}`; expected one of: {} (type `help`)",
            COMMANDS
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    if command.args.is_empty() && !args.is_empty() {
        return Parsed::Invalid(format!(
            "`{name}` takes no arguments; expected just `{name}`"
        ));
    }
    Parsed::Run(command, args)
}

/// Runs one input line.
pub async fn execute(agent: &Arc<Agent>, line: &str) -> Reply {
    match parse(line) {
        Parsed::Empty => Reply::text(""),
        Parsed::Invalid(why) => Reply::text(format!("error: {why}\n")),
        Parsed::Run(command, args) => (command.run)(agent.clone(), args).await,
    }
}

fn status(agent: Arc<Agent>, _: Vec<String>) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let p = agent.provisioning();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "hostname:  {}",
            p.config
                .as_ref()
                .map_or("(unconfigured)".into(), |(c, _)| c.system.fqdn())
        );
        let _ = writeln!(out, "uptime:    {}", duration(agent.uptime().as_secs()));
        let source = match &p.config {
            Some((_, source @ Source::LastGood(_))) => {
                format!("{source} (letterbox.toml has errors; see `check`)")
            }
            Some((_, source)) => source.to_string(),
            None => "none (letterbox.toml has errors; see `check`)".into(),
        };
        let _ = writeln!(out, "config:    {source}");
        let _ = writeln!(out, "units:");
        for (name, state) in agent.units() {
            let _ = writeln!(out, "  {name:<12} {state}");
        }
        if let Some(serial) = agent.dns_serial() {
            let _ = writeln!(out, "dns:       serving serial {serial}");
        }
        let _ = writeln!(out, "interfaces:");
        match crate::net::snapshot().await {
            Ok(links) => {
                for link in links {
                    let _ = writeln!(out, "  {}", link.to_string().replace('\n', "\n  "));
                }
            }
            Err(e) => {
                let _ = writeln!(out, "  error: {}", crate::error_chain(&e));
            }
        }
        Reply::text(out)
    })
}

/// `3d 4h 5m 6s`, leaving out leading zero units.
fn duration(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
    ];
    let mut out: String = parts
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .map(|(n, unit)| format!("{n}{unit} "))
        .collect();
    out.push_str(&format!("{}s", secs % 60));
    out
}

fn net(agent: Arc<Agent>, _: Vec<String>) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        match agent.apply_network().await {
            Ok(report) => Reply::text(format!("{report}\n")),
            Err(e) => Reply::text(format!("error: {e}\n")),
        }
    })
}

fn dns(agent: Arc<Agent>, args: Vec<String>) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let text = match args.first().map(String::as_str) {
            None => match agent.dns_serial() {
                Some(serial) => format!("DNS serving serial {serial}\n"),
                None => "DNS is not running (see `status` and `logs`)\n".into(),
            },
            Some("reload") => match agent.reload_dns().await {
                Ok(done) => format!("{done}\n"),
                Err(e) => format!("error: {e}\n"),
            },
            Some(other) => format!("unknown `dns {other}`; expected `dns` or `dns reload`\n"),
        };
        Reply::text(text)
    })
}

fn check(agent: Arc<Agent>, _: Vec<String>) -> BoxFuture<'static, Reply> {
    Box::pin(async move { Reply::text(check_report(&agent)) })
}

/// Re-reads the provisioning file and says what is now in force (also offered before
/// login, so that a console without a valid configuration is never a dead end).
pub fn check_report(agent: &Agent) -> String {
    let p = agent.reload();
    let mut out = String::new();
    if let Some(problem) = &p.problem {
        let _ = writeln!(out, "{problem}");
    }
    match &p.config {
        Some((cfg, Source::LastGood(_))) => {
            let _ = writeln!(
                out,
                "still running the last good configuration ({})",
                cfg.system.fqdn()
            );
        }
        Some((cfg, source)) => {
            let _ = writeln!(
                out,
                "ok: {} from {source}; type `net` to apply its network",
                cfg.system.fqdn()
            );
        }
        None => {
            let _ = writeln!(out, "no valid configuration yet");
        }
    }
    out
}

fn logs(_: Arc<Agent>, args: Vec<String>) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let count = match args.as_slice() {
            [] => 40,
            [n] => match n.parse::<usize>() {
                Ok(n) => n,
                Err(_) => {
                    return Reply::text(format!(
                        "error: `{n}` is not a number; expected `logs [LINES]`, e.g. `logs 100`\n"
                    ))
                }
            },
            _ => return Reply::text("error: too many arguments; expected `logs [LINES]`\n"),
        };
        let mut out = crate::init::log::logger().recent(count).join("\n");
        out.push('\n');
        Reply::text(out)
    })
}

fn reboot(agent: Arc<Agent>, _: Vec<String>) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        agent.request_shutdown(Shutdown::Reboot);
        Reply {
            text: "rebooting\n".into(),
            flow: Flow::Logout,
        }
    })
}

fn poweroff(agent: Arc<Agent>, _: Vec<String>) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        agent.request_shutdown(Shutdown::PowerOff);
        Reply {
            text: "powering off\n".into(),
            flow: Flow::Logout,
        }
    })
}

fn help(_: Arc<Agent>, _: Vec<String>) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        let mut out = String::from("commands:\n");
        for c in COMMANDS {
            let usage = format!("{} {}", c.name, c.args);
            let _ = writeln!(out, "  {:<16} {}", usage.trim_end(), c.help);
        }
        Reply::text(out)
    })
}

fn logout(_: Arc<Agent>, _: Vec<String>) -> BoxFuture<'static, Reply> {
    Box::pin(async move {
        Reply {
            text: String::new(),
            flow: Flow::Logout,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_and_args(line: &str) -> Result<(&'static str, Vec<String>), String> {
        match parse(line) {
            Parsed::Run(c, args) => Ok((c.name, args)),
            Parsed::Empty => Err("empty".into()),
            Parsed::Invalid(why) => Err(why),
        }
    }

    #[test]
    fn parses_commands_and_arguments() {
        assert_eq!(name_and_args("  status \t").unwrap(), ("status", vec![]));
        assert_eq!(
            name_and_args("logs 100").unwrap(),
            ("logs", vec!["100".to_string()])
        );
        assert_eq!(name_and_args("logout").unwrap().0, "logout");
        assert_eq!(name_and_args("   ").unwrap_err(), "empty");
    }

    #[test]
    fn unknown_commands_and_stray_arguments_say_what_was_expected() {
        let unknown = name_and_args("stauts").unwrap_err();
        assert!(
            unknown.starts_with("unknown command `stauts`; expected one of: status, net"),
            "{unknown}"
        );
        assert_eq!(
            name_and_args("reboot now").unwrap_err(),
            "`reboot` takes no arguments; expected just `reboot`"
        );
    }

    #[test]
    fn uptime_reads_like_a_person_would_write_it() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3600), "1h 0m 0s");
        assert_eq!(duration(2 * 86_400 + 3 * 3600 + 4 * 60 + 5), "2d 3h 4m 5s");
    }

    #[test]
    fn every_command_is_listed_once() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), COMMANDS.len());
    }
}
