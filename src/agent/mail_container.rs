//! What the agent's mail container units share (the front's two, `front_unit`, and each
//! account's box, `boxes_unit`; the webmail's, `webmail_unit`, uses the parts for its pair
//! of containers): they wait for the `mail` unit's image, write their
//! rendered files, create and start their container from a runtime spec, and wait on its
//! task. A task that exits fails the unit, and the supervisor restarts it with backoff; on
//! stop the task gets SIGTERM (SIGKILL after [`STOP_LIMIT`]) and the container is deleted.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Spec;

use super::containers_unit::{find_program, MailImage, MailSettings, CONNECT_LIMIT};
use super::Agent;
use crate::containers::{task, Client, ContainersError, Imported, Placement};
use crate::mail::{maildir, tls};
use crate::net::boxes::BoxNetError;
use crate::supervise::{StopSignal, TaskResult};

/// The image's `dovecot` group (overlays/mail/etc/group): Dovecot's auth process reads a
/// passwd-file as it.
pub const DOVECOT_GID: u32 = 101;
/// How often a container waiting for the image looks again.
const IMAGE_POLL: Duration = Duration::from_millis(200);
/// How long a container waits for a synchronised clock before it starts on the restored
/// one (never earlier than the image's build time): mail must not wait for an NTP server
/// that cannot be reached, and the TLS pair has its own floor (`mail::tls`).
const CLOCK_WAIT: Duration = Duration::from_secs(30);
/// How long a container's program has to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How long the supervisor gives a container unit to stop: SIGTERM's limit, SIGKILL, and
/// deleting the container, so that it is never dropped with its container still there.
pub const UNIT_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ContainerUnitError {
    #[error(transparent)]
    Net(#[from] BoxNetError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Maildir(#[from] maildir::MaildirError),
    #[error("writing {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the smarthost's password file {}: {problem}", .path.display())]
    RelayPassword { path: PathBuf, problem: String },
    #[error(transparent)]
    Containers(#[from] ContainersError),
    #[error(transparent)]
    Image(#[from] super::containers_unit::MailError),
    #[error(transparent)]
    DesKey(#[from] crate::webmail::DesKeyError),
    #[error("cannot listen on {what}")]
    Listen {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("containerd has no runc in any of the --containerd-dir directories or PATH")]
    NoRunc,
    #[error("the {id} task exited with status {status}: {last_lines} (its log: {log})")]
    Exited {
        id: String,
        status: u32,
        last_lines: String,
        log: String,
    },
}

/// Where the agent's containers run: containerd's socket and the agent's state directory
/// (absolute paths: they are handed to containerd and runc).
#[derive(Debug, Clone)]
pub struct Site {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub settings: MailSettings,
}

/// One rendered file: its name in its directory, its text, and, for a file holding
/// password hashes, the group that may read it (root:GROUP 0640; others are 0644).
pub struct Rendered {
    pub name: String,
    pub text: String,
    pub readable_by: Option<u32>,
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerUnitError {
    let path = path.to_path_buf();
    move |source| ContainerUnitError::Write { path, source }
}

/// Writes `files` into `dir` (made 0755, so the container's programs can read it).
pub fn write_files(dir: &Path, files: &[Rendered]) -> Result<(), ContainerUnitError> {
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(write_error(dir))?;
    for file in files {
        let path = dir.join(&file.name);
        std::fs::write(&path, &file.text).map_err(write_error(&path))?;
        let mode = match file.readable_by {
            Some(gid) => {
                std::os::unix::fs::chown(&path, Some(0), Some(gid)).map_err(write_error(&path))?;
                0o640
            }
            None => 0o644,
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(write_error(&path))?;
    }
    Ok(())
}

/// The appliance's TLS pair in `dir` for `names` (the host's first), made or remade if
/// needed. One unit at a time: two making it at once could leave one's key beside the
/// other's certificate.
pub fn ensure_tls(dir: &Path, names: &[String]) -> Result<(), ContainerUnitError> {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tls::ensure_self_signed(dir, names, std::time::SystemTime::now())?;
    Ok(())
}

/// A directory the container writes to, made if missing, with `mode`.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), ContainerUnitError> {
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(write_error(dir))
}

/// Runs container `id` until its task exits (an error, so the unit restarts) or the unit is
/// stopped (then the container is stopped and deleted, and this returns Ok). `prepare`
/// makes what the container needs and returns its runtime spec; `log` takes the task's
/// output.
pub async fn run(
    agent: &Agent,
    site: &Site,
    id: &str,
    log: &Path,
    stop: &mut StopSignal,
    prepare: impl Future<Output = Result<Spec, ContainerUnitError>>,
) -> TaskResult {
    let image = tokio::select! {
        image = async {
            clock_or_timeout(agent, id).await;
            imported(agent, id).await
        } => image,
        _ = stop.requested() => return Ok(()),
    };
    // Not raced with a stop: a start cut short could leave a container containerd goes on
    // creating. It waits on containerd's answers; a stop meanwhile is seen below at once.
    let started = start(site, &image, id, log, prepare.await?).await?;
    let exited = tokio::select! {
        exit = task::wait_task(&started, id) => Some(exit),
        _ = stop.requested() => None,
    };
    match exited {
        Some(exit) => {
            let exit = exit?;
            task::delete_container(&started, id).await?;
            Err(exit_error(id, exit.status, log).into())
        }
        None => {
            stop_container(&started, id).await;
            log::info!("{id} stopped");
            Ok(())
        }
    }
}

/// The error of task `id` that exited with `status`, quoting its `log`.
pub(super) fn exit_error(id: &str, status: u32, log: &Path) -> ContainerUnitError {
    ContainerUnitError::Exited {
        id: id.into(),
        status,
        last_lines: last_log_lines(log),
        log: log.display().to_string(),
    }
}

/// The last two lines a task wrote to its log, so the console says why it ended without
/// opening the file (Dovecot's `Fatal:` line follows the error that caused it); at most 300
/// characters of each.
fn last_log_lines(log: &Path) -> String {
    const TAIL: u64 = 4096;
    let read_tail = || -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(log)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(TAIL)))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        Ok(tail)
    };
    match read_tail() {
        Ok(tail) => {
            let text = String::from_utf8_lossy(&tail);
            let mut last: Vec<String> = (text.lines().rev())
                .filter(|l| !l.trim().is_empty())
                .take(2)
                .map(|l| l.trim().chars().take(300).collect())
                .collect();
            last.reverse();
            if last.is_empty() {
                "its log is empty".into()
            } else {
                last.join(" / ")
            }
        }
        Err(e) => format!("its log cannot be read: {e}"),
    }
}

/// Returns once the clock is synchronised, or after [`CLOCK_WAIT`], saying which.
pub(super) async fn clock_or_timeout(agent: &Agent, id: &str) {
    if agent.clock().is_trusted() {
        return;
    }
    log::info!("{id} waits up to {CLOCK_WAIT:?} for the clock to be synchronised");
    if tokio::time::timeout(CLOCK_WAIT, agent.clock().trusted())
        .await
        .is_err()
    {
        log::warn!("{id} starts with the clock not synchronised (see `status`)");
    }
}

/// The image, once the `mail` unit has imported it; the wait is logged, so that a unit
/// shown running but not answering says why (`logs UNIT`).
async fn imported(agent: &Agent, id: &str) -> Imported {
    let mut logged = false;
    loop {
        if let MailImage::Imported(image) = agent.mail_image() {
            return image;
        }
        if !logged {
            log::info!("{id} waits for the mail unit to import the image");
            logged = true;
        }
        tokio::time::sleep(IMAGE_POLL).await;
    }
}

/// Creates container `id` from `runtime` and starts its task; the client that did.
pub(super) async fn start(
    site: &Site,
    image: &Imported,
    id: &str,
    log: &Path,
    runtime: Spec,
) -> Result<Client, ContainerUnitError> {
    let client = Client::connect(&site.socket, CONNECT_LIMIT).await?;
    let containerd = super::containers_unit::daemon(&site.state_dir, &site.settings);
    let placement = Placement {
        id: id.into(),
        image: image.name.clone(),
        chain_id: image.chain_id.clone(),
        runc: find_program("runc", &containerd.shim_dirs).ok_or(ContainerUnitError::NoRunc)?,
        runc_root: containerd.state.join("runc"),
    };
    // What a previous run left (the agent killed, containerd kept its state) goes first.
    stop_container(&client, id).await;
    task::create_container_with(&client, &placement, &runtime).await?;
    match task::start_task(&client, id, log).await {
        Ok(pid) => {
            log::info!("{id} started (pid {pid})");
            Ok(client)
        }
        Err(e) => {
            let _ = task::delete_container(&client, id).await;
            Err(e.into())
        }
    }
}

/// SIGTERM to the container's task, SIGKILL if it outlives [`STOP_LIMIT`], then the task,
/// container and snapshot deleted; what does not exist is skipped.
pub(super) async fn stop_container(client: &Client, id: &str) {
    let sigterm = nix::sys::signal::Signal::SIGTERM as u32;
    let sigkill = nix::sys::signal::Signal::SIGKILL as u32;
    if task::kill_task(client, id, sigterm, true).await.is_ok()
        && tokio::time::timeout(STOP_LIMIT, task::wait_task(client, id))
            .await
            .is_err()
    {
        log::warn!("{id} outlived SIGTERM by {STOP_LIMIT:?}: killing it");
        if task::kill_task(client, id, sigkill, true).await.is_ok() {
            let _ = task::wait_task(client, id).await;
        }
    }
    if let Err(e) = task::delete_container(client, id).await {
        log::error!("{}", crate::error_chain(&e));
    }
}

/// The file name of an absolute path inside a container (`/etc/dovecot/passwd` → `passwd`).
pub fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a config file's path has a file name")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::last_log_lines;

    #[test]
    fn an_exited_tasks_error_quotes_the_last_lines_of_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("front-dovecot.log");
        let mut text = "x".repeat(5000);
        text.push_str("\nInfo: starting\nError: Socket already exists\n\nFatal: Failed\n\n");
        std::fs::write(&log, text).unwrap();
        assert_eq!(
            last_log_lines(&log),
            "Error: Socket already exists / Fatal: Failed"
        );
        std::fs::write(&log, "Fatal: alone\n").unwrap();
        assert_eq!(last_log_lines(&log), "Fatal: alone");
        std::fs::write(&log, "").unwrap();
        assert_eq!(last_log_lines(&log), "its log is empty");
        assert!(last_log_lines(&dir.path().join("none")).starts_with("its log cannot be read"));
    }
}
