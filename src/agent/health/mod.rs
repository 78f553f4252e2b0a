//! `status`'s health checks, one line each: ok, warn or fail, what was found, and a hint
//! of what to do (as Mail-in-a-Box's status checks). Each check asks the real thing: the
//! published zone over DNS, the front's port 25 as a stranger would, a probe mail through
//! the MX into a box.

mod dns;
mod mail;

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

use super::Agent;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    pub what: &'static str,
    pub found: String,
    /// What to do about a warning or a failure.
    pub hint: Option<String>,
}

impl Check {
    fn ok(what: &'static str, found: impl Into<String>) -> Check {
        Check {
            level: Level::Ok,
            what,
            found: found.into(),
            hint: None,
        }
    }

    fn warn(what: &'static str, found: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            level: Level::Warn,
            what,
            found: found.into(),
            hint: Some(hint.into()),
        }
    }

    fn fail(what: &'static str, found: impl Into<String>, hint: impl Into<String>) -> Check {
        Check {
            level: Level::Fail,
            what,
            found: found.into(),
            hint: Some(hint.into()),
        }
    }
}

/// Runs every check that applies to the configuration in force.
pub async fn checks(agent: &Arc<Agent>) -> Vec<Check> {
    let Some((config, _)) = agent.provisioning().config else {
        return vec![Check::fail(
            "config",
            "no configuration in force",
            "see `check`",
        )];
    };
    let mut out = vec![clock(agent), disk(agent.state_dir())];
    out.extend(dns::checks(agent, &config).await);
    if let Some(plan) = agent.mail_plan() {
        out.extend(mail::checks(agent, &plan, &config).await);
    }
    out
}

/// The checks as `status` shows them.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for check in checks {
        let level = match check.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        let _ = write!(out, "  {level} {:<12} {}", check.what, check.found);
        if let Some(hint) = &check.hint {
            let _ = write!(out, " (hint: {hint})");
        }
        out.push('\n');
    }
    out
}

fn clock(agent: &Agent) -> Check {
    let state = agent.clock().state();
    if agent.clock().is_trusted() {
        Check::ok("clock", state.to_string())
    } else {
        Check::warn(
            "clock",
            state.to_string(),
            "the appliance needs an NTP server it can reach ([system] ntp in letterbox.toml)",
        )
    }
}

/// Free space on the data partition: mail is refused when it is full.
fn disk(state: &Path) -> Check {
    let stat = match nix::sys::statvfs::statvfs(state) {
        Ok(stat) => stat,
        Err(e) => {
            return Check::fail(
                "disk",
                format!("{}: {e}", state.display()),
                "is the data partition mounted?",
            )
        }
    };
    let block = stat.fragment_size();
    let free = stat.blocks_available() * block;
    let total = stat.blocks() * block;
    disk_verdict(free, total)
}

fn disk_verdict(free: u64, total: u64) -> Check {
    const MB: u64 = 1 << 20;
    let found = format!(
        "{} MB free of {} MB on the data partition",
        free / MB,
        total / MB
    );
    let hint = "delete old backups (STATE/backups) or move to a larger card";
    if free < 100 * MB || free * 50 < total {
        Check::fail("disk", found, hint)
    } else if free * 10 < total {
        Check::warn("disk", found, hint)
    } else {
        Check::ok("disk", found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_partition_warns_below_a_tenth_free_and_fails_below_a_fiftieth() {
        const GB: u64 = 1 << 30;
        assert_eq!(disk_verdict(20 * GB, 60 * GB).level, Level::Ok);
        assert_eq!(disk_verdict(5 * GB, 60 * GB).level, Level::Warn);
        assert_eq!(disk_verdict(GB, 60 * GB).level, Level::Fail);
        assert_eq!(disk_verdict(50 << 20, 400 << 20).level, Level::Fail);
    }
}
