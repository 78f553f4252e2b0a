//! The `imap-tls` unit: the host's 993 (TLS) and 143 (STARTTLS), each session's TLS ended
//! in the agent and the session passed on to the front's Dovecot (`mail::imap_tls` says
//! why). Started before the front's units, so it stops after them.

use std::path::PathBuf;
use std::sync::Arc;

use crate::mail::dovecot::FRONT_IMAP_BEHIND_TLS;
use crate::mail::imap_tls::ImapTls;
use crate::net::forward;
use crate::supervise::{StopSignal, TaskResult, Unit};

#[derive(Debug, thiserror::Error)]
#[error("listening on the host's port {port} for IMAP")]
pub struct ListenError {
    port: u16,
    #[source]
    source: std::io::Error,
}

/// The `imap-tls` task unit, serving the TLS pair in `tls_dir`.
pub fn unit(tls_dir: PathBuf) -> Unit {
    Unit::task("imap-tls", move |stop| serve(tls_dir.clone(), stop)).logs_from(&[
        module_path!(),
        "letterbox::mail::imap_tls",
        "letterbox::net::forward",
    ])
}

async fn serve(tls_dir: PathBuf, mut stop: StopSignal) -> TaskResult {
    let listen =
        |port| forward::listen_on_host(port).map_err(|source| ListenError { port, source });
    let (implicit, starttls) = (listen(993)?, listen(143)?);
    let edge = Arc::new(ImapTls::new(&tls_dir, FRONT_IMAP_BEHIND_TLS));
    log::info!(
        "imap-tls: 993 (TLS) and 143 (STARTTLS) for the front's Dovecot on {FRONT_IMAP_BEHIND_TLS}"
    );
    // Each server runs until dropped, its sessions with it.
    tokio::select! {
        _ = edge.clone().serve_implicit(implicit) => {}
        _ = edge.serve_starttls(starttls) => {}
        _ = stop.requested() => {}
    }
    Ok(())
}
