//! The reports behind `status`, `units` and `check`, as text.

use std::fmt::Write;
use std::sync::Arc;

use super::provisioning::{Provisioning, Source};
use super::Agent;

/// Host name, uptime, configuration, units, DNS and network.
pub async fn report(agent: &Arc<Agent>) -> String {
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
    let _ = writeln!(out, "clock:     {}", agent.clock().state());
    let _ = writeln!(out, "units:");
    out.push_str(&units(agent));
    if let Some(serial) = agent.dns_serial() {
        let _ = writeln!(out, "dns:       serving serial {serial}");
    }
    if let Some(mail) = &agent.settings.mail {
        out.push_str(&super::containers_unit::report(agent, mail).await);
    }
    let _ = writeln!(out, "checks:");
    out.push_str(&super::health::render(&super::health::checks(agent).await));
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
    out
}

/// One line a unit, in start order.
pub fn units(agent: &Agent) -> String {
    let mut out = String::new();
    for (name, state) in agent.supervisor().states() {
        let _ = writeln!(out, "  {name:<12} {state}");
    }
    out
}

/// What a re-read of the provisioning file found, and what is now in force (also offered
/// before login, so that a console without a valid configuration is never a dead end).
pub fn check_report(p: &Provisioning) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_like_a_person_would_write_it() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3600), "1h 0m 0s");
        assert_eq!(duration(2 * 86_400 + 3 * 3600 + 4 * 60 + 5), "2d 3h 4m 5s");
    }
}
