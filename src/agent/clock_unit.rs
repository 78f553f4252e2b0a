//! The clock as a supervised unit of the agent: on the appliance it sets the system clock
//! from the configured NTP servers and saves the time on the data partition; anywhere
//! else it only measures the host's clock (see [`crate::clock::owns_system_clock`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Agent;
use crate::clock::{self, ClockState, Correction, SystemClock};
use crate::supervise::{StopSignal, TaskResult, Unit};

/// How often a synchronised clock is checked again: the Pi's crystal drifts by seconds a
/// day, and a quarter of an hour of it is a few milliseconds, slewed away.
const POLL: Duration = Duration::from_secs(15 * 60);
/// How soon an unsynchronised clock tries again (the network may not be up yet).
const RETRY: Duration = Duration::from_secs(30);
/// How often the time is saved while the unit runs (also when it stops): a power cut
/// then loses at most this much.
const SAVE_EVERY: Duration = Duration::from_secs(15 * 60);

pub fn unit(agent: Arc<Agent>) -> Unit {
    Unit::task("clock", move |stop| keep(agent.clone(), stop))
        .logs_from(&["letterbox::clock", module_path!()])
}

/// Where the clock stands when the agent starts.
pub fn initial_state() -> ClockState {
    if clock::owns_system_clock() {
        ClockState::Unsynchronised {
            restored: clock::boot_restore(),
            problem: None,
        }
    } else {
        ClockState::KeptByHost {
            last: None,
            problem: None,
        }
    }
}

async fn keep(agent: Arc<Agent>, mut stop: StopSignal) -> TaskResult {
    let owner = clock::owns_system_clock();
    let mut last_saved: Option<Instant> = None;
    loop {
        // Read each round, so that a `check` with new servers takes effect.
        let servers = match agent.provisioning().config {
            Some((cfg, _)) => cfg.system.ntp,
            None => crate::config::DEFAULT_NTP.map(String::from).to_vec(),
        };
        let wait = if owner {
            set_from(&agent, &servers).await
        } else {
            measure(&agent, &servers).await
        };
        if owner && last_saved.is_none_or(|at| at.elapsed() >= SAVE_EVERY) {
            save(&agent);
            last_saved = Some(Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.requested() => break,
        }
    }
    if owner {
        save(&agent);
    }
    Ok(())
}

/// One round on the appliance; how long until the next.
async fn set_from(agent: &Agent, servers: &[String]) -> Duration {
    if servers.is_empty() {
        agent.clock.set(ClockState::SyncOff);
        return POLL;
    }
    let was_trusted = agent.clock.is_trusted();
    match clock::synchronise(servers, &SystemClock, clock::QUERY_TIMEOUT).await {
        Ok((synced, how)) => {
            if how == Correction::Stepped || !was_trusted {
                log::info!(
                    "clock: {} from {}",
                    match how {
                        Correction::Stepped => "stepped",
                        Correction::Slewed => "slewing",
                    },
                    synced
                );
            }
            agent.clock.set(ClockState::Synchronised(synced));
            POLL
        }
        Err(e) => {
            let problem = crate::error_chain(&e);
            log::warn!("clock: {problem}");
            // Once synchronised, the clock stays trusted through a server's outage.
            if let ClockState::Unsynchronised { restored, .. } = agent.clock.state() {
                agent.clock.set(ClockState::Unsynchronised {
                    restored,
                    problem: Some(problem),
                });
            }
            RETRY
        }
    }
}

/// One round on a host that keeps its own clock: the offset is shown, never applied.
async fn measure(agent: &Agent, servers: &[String]) -> Duration {
    if servers.is_empty() {
        agent.clock.set(ClockState::KeptByHost {
            last: None,
            problem: None,
        });
        return POLL;
    }
    let state = match clock::ask(servers, &SystemClock, clock::QUERY_TIMEOUT).await {
        Ok(synced) => ClockState::KeptByHost {
            last: Some(synced),
            problem: None,
        },
        Err(e) => ClockState::KeptByHost {
            last: None,
            problem: Some(crate::error_chain(&e)),
        },
    };
    let answered = matches!(state, ClockState::KeptByHost { last: Some(_), .. });
    agent.clock.set(state);
    if answered {
        POLL
    } else {
        RETRY
    }
}

fn save(agent: &Agent) {
    if let Err(e) = clock::saved::save(agent.state_dir(), std::time::SystemTime::now()) {
        log::warn!("clock: {}", crate::error_chain(&e));
    }
}
