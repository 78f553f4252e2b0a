//! The control socket: admin commands from other processes (`letterbox ctl`), as JSON
//! lines. A request is `{"command": ["restart", "dns"]}`, the reply
//! `{"ok": true, "output": "..."}`; one request per connection.
//!
//! Only root may use it: the socket is mode 0600 and a peer whose SO_PEERCRED uid is not
//! root (or the agent's own, for `letterbox run` as a user) is refused. No client can
//! hold up the agent: a request must arrive whole within [`REQUEST_TIMEOUT`] and fit in
//! [`MAX_REQUEST`] bytes, at most [`MAX_CLIENTS`] are served at once (the rest are told
//! the agent is busy), and each runs in its own task.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::commands::{self, Via};
use super::Agent;
use crate::supervise::{StopSignal, TaskResult, Unit};

/// The longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more are answered "busy" and closed.
pub const MAX_CLIENTS: usize = 32;
/// How long a reply may take to be taken by its client.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// At a stop, how long the commands under way get to finish and answer; after a reply,
/// how long a client's unread bytes are waited for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `letterbox ctl` waits for an answer: `net` may wait for links.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// The command's words, the first being its name: `["logs", "dns"]`.
    pub command: Vec<String>,
    /// The password of `account add`, kept out of the words (and so out of the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response {
    pub ok: bool,
    pub output: String,
}

impl Response {
    fn refused(why: impl std::fmt::Display) -> Response {
        Response {
            ok: false,
            output: format!("error: {why}\n"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot bind the control socket {path}")]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; expected a control socket or nothing there")]
    NotASocket { path: String },
    #[error(
        "cannot reach the agent at {path} (is `letterbox run --socket` or the appliance running?)"
    )]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the conversation with the agent at {path} failed")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {path} answered something that is not a reply: {line:?}")]
    BadReply { path: String, line: String },
}

/// The control socket as a unit of the agent.
pub fn unit(agent: Arc<Agent>, path: PathBuf) -> Unit {
    Unit::task("control", move |stop| {
        serve(agent.clone(), path.clone(), stop)
    })
    .logs_from(&[module_path!()])
}

async fn serve(agent: Arc<Agent>, path: PathBuf, mut stop: StopSignal) -> TaskResult {
    let listener = bind(&path)?;
    log::info!("control socket on {}", path.display());
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut clients = JoinSet::new();
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => drop(clients.spawn(serve_client(agent.clone(), stream, slot))),
                    Err(_) => drop(clients.spawn(answer_busy(stream))),
                },
                Err(e) => break Err(e.into()),
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            _ = stop.requested() => break Ok(()),
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(&path);
    // A `restart control` or `reboot` sent here still gets its answer.
    let drain = async { while clients.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        clients.shutdown().await;
    }
    result
}

/// Binds the socket, mode 0600, replacing a stale one left by an earlier run.
fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let display = || path.display().to_string();
    let bind_error = |source| ControlError::Bind {
        path: display(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(bind_error)?
        }
        Ok(_) => return Err(ControlError::NotASocket { path: display() }),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_error)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

async fn serve_client(agent: Arc<Agent>, mut stream: UnixStream, _slot: OwnedSemaphorePermit) {
    let response = match admit(&stream) {
        Err(why) => Response::refused(why),
        Ok(()) => match read_request(&mut stream).await {
            Ok(request) => {
                let name = request.command.first().map_or("", String::as_str);
                log::info!("control: `{name}`");
                let reply = commands::run_with_password(
                    &agent,
                    &request.command,
                    Via::ControlSocket,
                    request.password,
                )
                .await;
                Response {
                    ok: reply.ok,
                    output: reply.text,
                }
            }
            Err(RequestError::Gone) => return,
            Err(why) => Response::refused(why),
        },
    };
    send(&mut stream, &response).await;
}

async fn answer_busy(mut stream: UnixStream) {
    let busy = Response::refused(format!(
        "the agent is busy with {MAX_CLIENTS} other clients; try again"
    ));
    send(&mut stream, &busy).await;
}

/// Root only: the socket's mode already says so, SO_PEERCRED makes sure.
fn admit(stream: &UnixStream) -> Result<(), String> {
    let uid = stream
        .peer_cred()
        .map_err(|e| format!("cannot tell who is asking: {e}"))?
        .uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    log::warn!("control: refused a client with uid {uid}");
    Err(format!(
        "refused: the control socket takes commands from root only (you are uid {uid})"
    ))
}

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("no complete request within {}s; expected one JSON line", REQUEST_TIMEOUT.as_secs())]
    Slow,
    #[error("request over {MAX_REQUEST} bytes; expected one short JSON line")]
    TooLong,
    #[error("malformed request ({0}); expected a JSON line like {{\"command\": [\"status\"]}}")]
    Malformed(String),
    /// The client left before its request was whole: nobody to answer.
    #[error("the client left")]
    Gone,
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, RequestError> {
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new(stream).take(MAX_REQUEST as u64);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line));
    match read.await {
        Err(_) => return Err(RequestError::Slow),
        Ok(Err(_)) => return Err(RequestError::Gone),
        Ok(Ok(_)) => {}
    }
    if line.last() != Some(&b'\n') {
        return Err(match line.len() {
            MAX_REQUEST => RequestError::TooLong,
            _ => RequestError::Gone,
        });
    }
    serde_json::from_slice(&line).map_err(|e| RequestError::Malformed(e.to_string()))
}

/// Writes the reply, then takes what the client still sends (a request not read, when
/// it was refused or the agent is busy) until it hangs up: closing on unread bytes
/// would reset the connection, and the client would lose the reply.
async fn send(stream: &mut UnixStream, response: &Response) {
    let mut line = serde_json::to_vec(response).expect("a response serializes");
    line.push(b'\n');
    let write = async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    };
    if let Ok(Ok(())) = tokio::time::timeout(REPLY_TIMEOUT, write).await {
        let (mut unread, mut sink) = ((&mut *stream).take(MAX_REQUEST as u64), tokio::io::sink());
        let drain = tokio::io::copy(&mut unread, &mut sink);
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    }
}

/// Sends one command to the agent at `path` and returns its answer (`letterbox ctl`).
pub fn request(
    path: &Path,
    command: &[String],
    password: Option<String>,
) -> Result<Response, ControlError> {
    let display = || path.display().to_string();
    let io = |source| ControlError::Io {
        path: display(),
        source,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: display(),
            source,
        })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(&Request {
        command: command.to_vec(),
        password,
    })
    .expect("a request serializes");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|_| ControlError::BadReply {
        path: display(),
        line: answer,
    })
}
