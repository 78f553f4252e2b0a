//! The agent's containers units: `containerd`, a supervised child with its root, state and
//! socket in the agent's state directory, and `mail`, which imports the `letterbox-mail`
//! image into it and then holds the mail containers (the front's are `front_unit`'s, the
//! boxes `boxes_unit`'s).
//!
//! They start after DNS, so they stop before it; `mail` stops before `containerd`. A
//! missing image or a containerd that does not answer fails the `mail` unit with the
//! reason, and the supervisor's backoff retries it; DNS and the console carry on.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Agent;
use crate::containers::{self, Client, Containerd, ContainersError, Imported};
use crate::supervise::{StopSignal, TaskResult, Unit, UnitState};

/// Where the agent finds containerd and the mail image.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// The `letterbox-mail` OCI image layout.
    pub image: PathBuf,
    /// The `letterbox-webmail` OCI image layout; `None`: no webmail, whatever the
    /// configuration says (`letterbox run` without `--webmail-image`).
    pub webmail_image: Option<PathBuf>,
    /// Searched before PATH for `containerd`, `containerd-shim-runc-v2` and `runc`.
    pub binary_dirs: Vec<PathBuf>,
    /// Where the boxes' network namespace files are bind-mounted.
    pub netns_dir: PathBuf,
    /// Where containerd keeps its runtime state (tasks, shims' sockets), which must not
    /// outlive a boot: after a power cut, a task directory left on the data partition
    /// stops every container from starting ("mkdir …: file exists"). `None`: beside its
    /// root, under `STATE/containerd` (`letterbox run`, where the host's processes and
    /// that directory end together).
    pub containerd_state: Option<PathBuf>,
}

impl MailSettings {
    /// The appliance's: the image and the binaries on the read-only root.
    pub fn appliance() -> MailSettings {
        MailSettings {
            image: crate::paths::MAIL_IMAGE_DIR.into(),
            // Where the root filesystem carries it; whether it does (an image built with
            // the webmail off carries none) is only known once boot is in that root.
            webmail_image: Some(crate::paths::WEBMAIL_IMAGE_DIR.into()),
            binary_dirs: crate::paths::CONTAINERD_BIN_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            netns_dir: APPLIANCE_NETNS_DIR.into(),
            containerd_state: Some(APPLIANCE_CONTAINERD_STATE.into()),
        }
    }
}

/// Where the `mail` unit stands with the image, for `status`.
#[derive(Debug, Clone)]
pub enum MailImage {
    WaitingForContainerd,
    Importing,
    Imported(Imported),
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the mail image is missing: {}", .path.display())]
    ImageMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Containers(#[from] ContainersError),
}

/// The boxes' network namespace files on the appliance (tmpfs: they are remade at boot).
const APPLIANCE_NETNS_DIR: &str = "/run/letterbox/netns";
/// containerd's runtime state on the appliance (tmpfs, as containerd expects of it).
const APPLIANCE_CONTAINERD_STATE: &str = "/run/letterbox/containerd/state";
/// The log target of what the agent says about the containerd unit (kept in its ring).
const CONTAINERD_LOG: &str = "letterbox::agent::containerd";
/// How long `mail` waits for containerd to answer before it fails (and is retried).
pub(super) const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// How long `status` waits for containerd's version.
const STATUS_LIMIT: Duration = Duration::from_secs(1);
/// Where the cgroup hierarchy is mounted (cgroup2 by early boot on the appliance).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// containerd with everything under `STATE/containerd`, as absolute paths (containerd's
/// configuration wants them; `letterbox run --state` may be relative).
pub fn daemon(state_dir: &Path, settings: &MailSettings) -> Containerd {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let dirs: Vec<PathBuf> = settings.binary_dirs.iter().map(|d| absolute(d)).collect();
    let binary = find_program("containerd", &dirs).unwrap_or_else(|| "containerd".into());
    let mut daemon = Containerd::under(
        &absolute(&state_dir.join(crate::paths::CONTAINERD_DIR)),
        binary,
        dirs,
    );
    if let Some(state) = &settings.containerd_state {
        daemon.state = absolute(state);
    }
    daemon
}

/// The `containerd` process unit. Its binary is looked up and its configuration rendered
/// before every start.
pub fn containerd_unit(state_dir: PathBuf, settings: MailSettings) -> Unit {
    Unit::process("containerd", move || {
        let daemon = daemon(&state_dir, &settings);
        if find_program("containerd", &daemon.shim_dirs).is_none() {
            let searched: Vec<String> = (daemon.shim_dirs.iter())
                .map(|d| d.display().to_string())
                .chain(["PATH".to_string()])
                .collect();
            log::error!(
                target: CONTAINERD_LOG,
                "containerd is in none of: {}",
                searched.join(", ")
            );
        }
        for pid in daemon.kill_leftover() {
            log::warn!(target: CONTAINERD_LOG, "killed containerd {pid}, left by an earlier agent");
        }
        if let Err(e) = daemon.prepare() {
            log::error!(target: CONTAINERD_LOG, "{}", crate::error_chain(&e));
        }
        daemon.command()
    })
    .logs_from(&[CONTAINERD_LOG])
}

/// The `mail` task unit: imports the image once containerd answers, then idles until it
/// is stopped.
pub fn mail_unit(agent: Arc<Agent>, socket: PathBuf, image: PathBuf) -> Unit {
    Unit::task("mail", move |stop| {
        run_mail(agent.clone(), socket.clone(), image.clone(), stop)
    })
    .logs_from(&[module_path!(), "letterbox::containers"])
}

async fn run_mail(
    agent: Arc<Agent>,
    socket: PathBuf,
    image: PathBuf,
    mut stop: StopSignal,
) -> TaskResult {
    let imported = tokio::select! {
        imported = import(&agent, &socket, &image) => imported,
        _ = stop.requested() => return Ok(()),
    };
    match imported {
        Ok(imported) => {
            if imported.blobs_written == 0 && imported.layers_unpacked == 0 {
                log::info!(
                    "mail image {} {} already in containerd, unpacked",
                    imported.name,
                    imported.manifest
                );
            } else {
                log::info!(
                    "mail image {} {} imported from {}: {} blobs written, {} layers unpacked",
                    imported.name,
                    imported.manifest,
                    image.display(),
                    imported.blobs_written,
                    imported.layers_unpacked
                );
            }
            agent.set_mail_image(MailImage::Imported(imported));
        }
        Err(e) => {
            agent.set_mail_image(MailImage::Failed(crate::error_chain(&e)));
            return Err(e.into());
        }
    }
    stop.requested().await;
    Ok(())
}

/// The image into containerd: checked first (a missing image needs no containerd to say
/// so), then imported as soon as containerd answers.
async fn import(agent: &Agent, socket: &Path, image: &Path) -> Result<Imported, MailError> {
    let index = image.join("index.json");
    if let Err(source) = tokio::fs::metadata(&index).await {
        return Err(MailError::ImageMissing {
            path: index,
            source,
        });
    }
    agent.set_mail_image(MailImage::WaitingForContainerd);
    let client = Client::connect(socket, CONNECT_LIMIT).await?;
    agent.set_mail_image(MailImage::Importing);
    Ok(containers::import_oci_layout(&client, image, crate::image::mail::REFERENCE).await?)
}

/// The `status` lines: containerd's version (asked now), and the mail image's digest, or
/// why there is none.
pub async fn report(agent: &Agent, settings: &MailSettings) -> String {
    let mut out = String::new();
    let socket = daemon(agent.state_dir(), settings).socket;
    let containerd_state = agent
        .supervisor()
        .states()
        .into_iter()
        .find_map(|(name, state)| (name == "containerd").then_some(state));
    let containerd = match containerd_state {
        Some(UnitState::Running { .. }) => match Client::connect(&socket, STATUS_LIMIT).await {
            Ok(client) => match client.version().await {
                Ok(version) => format!("{version} on {}", socket.display()),
                Err(e) => format!("not answering: {}", crate::error_chain(&e)),
            },
            Err(e) => format!("not answering: {}", crate::error_chain(&e)),
        },
        Some(state) => format!("not running: {state}"),
        None => "not started".into(),
    };
    let _ = writeln!(out, "containerd: {containerd}");
    let image = match agent.mail_image() {
        MailImage::WaitingForContainerd => format!(
            "{} waiting for containerd to import it",
            settings.image.display()
        ),
        MailImage::Importing => format!("importing {}", settings.image.display()),
        MailImage::Imported(i) => format!("{} {} (unpacked)", i.name, i.manifest),
        MailImage::Failed(why) => format!("not imported: {why}"),
    };
    let _ = writeln!(out, "mail image: {image}");
    let used = containers::memory_in_use(Path::new(CGROUP_ROOT));
    if !used.is_empty() {
        let _ = writeln!(out, "containers' memory (in use, page cache included):");
        let mb = |bytes: u64| bytes as f64 / 1e6;
        for (id, bytes) in &used {
            let _ = writeln!(out, "  {id:<16} {:6.1} MB", mb(*bytes));
        }
        let total: u64 = used.iter().map(|(_, bytes)| bytes).sum();
        let _ = writeln!(out, "  {:<16} {:6.1} MB", "total", mb(total));
    }
    out
}

/// The first of `dirs`, then PATH, that has an executable `name`.
pub(super) fn find_program(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    dirs.iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_the_given_dirs_before_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("sh");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(find_program("sh", &[dir.path().into()]), Some(exe));
        // Not executable: skipped, and PATH's `sh` found instead.
        let plain = tempfile::tempdir().unwrap();
        std::fs::write(plain.path().join("sh"), "").unwrap();
        let found = find_program("sh", &[plain.path().into()]).unwrap();
        assert_ne!(found.parent(), Some(plain.path()));
        assert_eq!(find_program("no-such-program-here", &[]), None);
    }

    #[test]
    fn containerd_lives_under_the_state_directory() {
        let settings = MailSettings {
            image: "/img".into(),
            webmail_image: None,
            binary_dirs: vec![],
            netns_dir: "/run/letterbox/netns".into(),
            containerd_state: None,
        };
        let d = daemon(Path::new("/data/letterbox"), &settings);
        assert_eq!(d.root, Path::new("/data/letterbox/containerd/root"));
        let relative = daemon(Path::new("state"), &settings);
        assert!(relative.root.is_absolute() && relative.socket.is_absolute());
        assert_eq!(d.state, Path::new("/data/letterbox/containerd/state"));
        assert_eq!(
            d.socket,
            Path::new("/data/letterbox/containerd/containerd.sock")
        );
        // The appliance's runtime state is on tmpfs: a reboot clears it.
        let appliance = daemon(Path::new("/data/letterbox"), &MailSettings::appliance());
        assert_eq!(
            appliance.state,
            Path::new("/run/letterbox/containerd/state")
        );
        assert_eq!(appliance.root, d.root);
    }
}
