//! The `letterbox-init` command line. As PID 1 it is parsed leniently: the kernel hands
//! init the boot parameters it does not know (`quiet`, `splash`) as arguments, and a
//! stray word must not stop the appliance from booting.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser};

use crate::paths;

/// `letterbox-init` (and `/init`) command line; the defaults are the appliance's paths.
#[derive(Debug, clap::Parser)]
#[command(
    name = "letterbox-init",
    version,
    about = "letterbox's init agent (PID 1)"
)]
pub struct InitArgs {
    /// Where the boot partition (with letterbox.toml) is mounted.
    #[arg(long, default_value = paths::BOOT_DIR)]
    pub boot_dir: PathBuf,
    /// Persistent state (the last good configuration); on the data partition.
    #[arg(long, default_value = paths::STATE_DIR)]
    pub state_dir: PathBuf,
    /// Console device; overrides `[console] device` (serial0, ttyAMA0 or a /dev path).
    #[arg(long)]
    pub console: Option<String>,
    /// Root under which /etc/hostname, /etc/hosts, /etc/resolv.conf are written.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The control socket for `letterbox ctl`.
    #[arg(long, default_value = paths::CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// As PID 1: what was wrong with the command line, logged once the logger is up.
    #[arg(skip)]
    pub command_line_problem: Option<String>,
}

impl InitArgs {
    /// The command line of `letterbox-init`: leniently as PID 1, strictly otherwise.
    pub fn from_command_line() -> InitArgs {
        if std::process::id() == 1 {
            InitArgs::parse_lenient(std::env::args_os())
        } else {
            InitArgs::parse()
        }
    }

    /// Keeps the options it knows and drops every other word; what it could not use is
    /// kept in `command_line_problem`.
    pub fn parse_lenient(args: impl IntoIterator<Item = OsString>) -> InitArgs {
        let command = InitArgs::command();
        let known: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long().map(|long| format!("--{long}")))
            .collect();
        let mut args = args.into_iter();
        let mut kept: Vec<OsString> = args.next().into_iter().collect();
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
        assert_eq!(parsed.socket, PathBuf::from("/run/letterbox/control.sock"));
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
}
