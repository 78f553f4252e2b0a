//! The authoritative DNS server as a supervised unit of the agent.

use std::sync::Arc;

use super::{Agent, AgentError};
use crate::dns::{self, DnsServer};
use crate::supervise::{StopSignal, TaskResult, Unit};

/// UDP worker threads for each address: the Pi 3 and 4 have four cores,
/// shared with mail.
const UDP_WORKERS: usize = 2;

/// Serves the zone of the configuration in force. Without a valid configuration the unit
/// fails, and the supervisor's backoff retries it, so a file fixed at the console (`check`)
/// brings DNS up without a reboot.
pub fn unit(agent: Arc<Agent>) -> Unit {
    Unit::task("dns", move |stop| serve(agent.clone(), stop))
        .logs_from(&["letterbox::dns", module_path!()])
}

async fn serve(agent: Arc<Agent>, mut stop: StopSignal) -> TaskResult {
    let Some((cfg, _)) = agent.provisioning().config else {
        return Err(AgentError::NoConfig(None).into());
    };
    let listen = dns::listen_addrs(&cfg);
    let mut server =
        DnsServer::start(&cfg, agent.state_dir().to_path_buf(), &listen, UDP_WORKERS).await?;
    let started = server.handle().serial();
    log::info!("DNS serving serial {started}");
    agent.set_dns(Some(server.handle()));
    // A `dns reload` between reading the provisioning above and `set_dns` found no server
    // and was lost: serve what is in force now (when unchanged, only the serial file is
    // read).
    if let Some((now, _)) = agent.provisioning().config {
        let handle = server.handle();
        match tokio::task::spawn_blocking(move || handle.reload(&now)).await {
            Ok(Ok(serial)) if serial != started => log::info!("DNS serving serial {serial}"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!("DNS: reload after start: {}", crate::error_chain(&e)),
            Err(e) => log::warn!("DNS: reload after start failed: {e}"),
        }
    }
    let result = tokio::select! {
        r = server.run() => r.map_err(Into::into),
        _ = stop.requested() => Ok(()),
    };
    agent.set_dns(None);
    // Every socket closed before the unit returns: a restart binds the same addresses.
    server.shutdown().await;
    result
}
