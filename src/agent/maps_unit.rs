//! The `maps` unit: the front's Postfix asks it where each domain's mail goes and which
//! recipients exist (`mail::socketmap`), over a socket in the directory the front's
//! containers share, answered from the mail plan in force. Started before the front, so
//! it stops after it.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use super::Agent;
use crate::mail::socketmap;
use crate::supervise::{StopSignal, TaskResult, Unit};

/// The image's postfix user (overlays/mail/etc/passwd): only Postfix's processes may ask.
const POSTFIX_UID: u32 = 100;

#[derive(Debug, thiserror::Error)]
#[error("the routing socket {}", .path.display())]
pub struct MapsError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The `maps` task unit, serving `socket`.
pub fn unit(agent: Arc<Agent>, socket: PathBuf) -> Unit {
    Unit::task("maps", move |stop| {
        serve(agent.clone(), socket.clone(), stop)
    })
    .logs_from(&[module_path!()])
}

async fn serve(agent: Arc<Agent>, socket: PathBuf, mut stop: StopSignal) -> TaskResult {
    let listener = bind(&socket).map_err(|source| MapsError {
        path: socket.clone(),
        source,
    })?;
    log::info!("Postfix's routing tables served on {}", socket.display());
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    clients.spawn(answer_client(agent.clone(), stream));
                }
                Err(e) => log::warn!("routing socket: {e}"),
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            _ = stop.requested() => break,
        }
    }
    clients.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The socket, made afresh: mode 0600, owned by Postfix's uid (the milter's too).
pub(super) fn bind(path: &std::path::Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::os::unix::fs::chown(path, Some(POSTFIX_UID), Some(POSTFIX_UID))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers one Postfix process's requests until it hangs up; a malformed request ends
/// the connection (Postfix opens a new one).
async fn answer_client(agent: Arc<Agent>, mut stream: UnixStream) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match socketmap::take_netstring(&mut buffer) {
            Ok(Some(request)) => {
                let plan = agent.mail_plan();
                let reply = socketmap::answer(plan.as_deref(), &request);
                if stream
                    .write_all(&socketmap::netstring(&reply))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!("routing socket: {e}");
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}
