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
    let mut out = vec![clock(agent), disk(agent.state_dir()), memory()];
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

/// Fails only when mail is at risk now: Postfix refuses mail below 1.5 times its 10 MB
/// message limit, and a busy day of attachments takes a few hundred MB. A share of the card
/// only warns: 2 % of a 256 GB card is still 5 GB of mail.
fn disk_verdict(free: u64, total: u64) -> Check {
    const MB: u64 = 1 << 20;
    let found = format!(
        "{} MB free of {} MB on the data partition",
        free / MB,
        total / MB
    );
    let hint = "delete old backups (STATE/backups) or move to a larger card";
    if free < 512 * MB {
        Check::fail("disk", found, hint)
    } else if free < 2048 * MB || free * 10 < total {
        Check::warn("disk", found, hint)
    } else {
        Check::ok("disk", found)
    }
}

/// Memory the kernel can still give out (MemAvailable): the Pi 3 has 1 GB, and every box,
/// IMAP session and delivery takes some.
fn memory() -> Check {
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(meminfo) => match (
            meminfo_kb(&meminfo, "MemAvailable"),
            meminfo_kb(&meminfo, "MemTotal"),
        ) {
            (Some(available), Some(total)) => memory_verdict(available << 10, total << 10),
            _ => Check::fail(
                "memory",
                "/proc/meminfo has no MemAvailable",
                "a kernel of 3.14 or later",
            ),
        },
        Err(e) => Check::fail("memory", format!("/proc/meminfo: {e}"), "is /proc mounted?"),
    }
}

/// A `/proc/meminfo` field's value, in kB.
fn meminfo_kb(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

fn memory_verdict(available: u64, total: u64) -> Check {
    const MB: u64 = 1 << 20;
    let found = format!("{} MB available of {} MB", available / MB, total / MB);
    // 200 MB: the headroom the appliance keeps for bursts of deliveries and sessions with
    // 20 accounts on a 1 GB Pi 3.
    let hint = "fewer accounts, or the webmail off ([webmail] enabled = false)";
    if available < 50 * MB {
        Check::fail("memory", found, hint)
    } else if available < 200 * MB {
        Check::warn("memory", found, hint)
    } else {
        Check::ok("memory", found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_meminfo_and_warns_below_200_mb_available() {
        let meminfo = "MemTotal:         944892 kB\nMemFree:          411116 kB\n\
                       MemAvailable:     612340 kB\nBuffers:           10360 kB\n";
        assert_eq!(meminfo_kb(meminfo, "MemTotal"), Some(944_892));
        assert_eq!(meminfo_kb(meminfo, "MemAvailable"), Some(612_340));
        assert_eq!(meminfo_kb(meminfo, "Mem"), None);
        const MB: u64 = 1 << 20;
        let ok = memory_verdict(612_340 << 10, 944_892 << 10);
        assert_eq!(
            (ok.level, ok.found.as_str()),
            (Level::Ok, "597 MB available of 922 MB")
        );
        assert_eq!(memory_verdict(150 * MB, 922 * MB).level, Level::Warn);
        assert_eq!(memory_verdict(40 * MB, 922 * MB).level, Level::Fail);
        let here = memory();
        assert!(
            here.found.contains(" MB available of "),
            "this machine's: {here:?}"
        );
    }

    #[test]
    fn the_data_partition_warns_below_a_tenth_or_2_gb_free_and_fails_below_512_mb() {
        const MB: u64 = 1 << 20;
        const GB: u64 = 1 << 30;
        assert_eq!(disk_verdict(20 * GB, 60 * GB).level, Level::Ok);
        assert_eq!(disk_verdict(5 * GB, 60 * GB).level, Level::Warn);
        assert_eq!(disk_verdict(GB, 6 * GB).level, Level::Warn);
        // A big card nearly full by share still holds days of mail: CI's disk once had this.
        assert_eq!(disk_verdict(4750 * MB, 258019 * MB).level, Level::Warn);
        assert_eq!(disk_verdict(500 * MB, 60 * GB).level, Level::Fail);
        assert_eq!(disk_verdict(50 * MB, 400 * MB).level, Level::Fail);
    }
}
