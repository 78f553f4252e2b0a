//! The agent's front units: `front-postfix` (port 25, the queue, LMTP to the boxes) and
//! `front-dovecot` (the IMAP proxy behind the agent's TLS on 143 and 993), two containers in the agent's network
//! namespace, so that both see every client's real address (`containers::spec` says why
//! two). Each renders its files from the configuration in force, then runs its container
//! (`mail_container::run`). The queue and Postfix's state are on the data partition, so
//! mail accepted survives the container, the agent and a reboot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oci_spec::runtime::Spec;

use super::mail_container::{self, ContainerUnitError, Rendered, Site, DOVECOT_GID};
use super::Agent;
use crate::config::Relayhost;
use crate::containers::spec::{self, FRONT_DOVECOT, FRONT_POSTFIX};
use crate::containers::FrontFiles;
use crate::mail::{dovecot, paths, postfix, MailPlan};
use crate::supervise::{StopSignal, TaskResult, Unit};

/// The front's shared socket directory, under the state directory.
pub const SOCKETS: &str = "front/sockets";
/// How long after a start of `front-postfix` a silent port 25 is worth a warning (the
/// unit may still be waiting for the clock or the mail image's import: minutes on a slow
/// first boot).
const BANNER_WARNING: Duration = Duration::from_secs(600);
/// The image's postfix user and group (overlays/mail/etc/passwd), owner of its state.
const POSTFIX_ID: u32 = 100;
/// The directory of the smarthost's login, beside (not in) the postfix directory: root's
/// only.
const RELAY_DIR: &str = "relay";

/// Everything the front's units need, fixed when the agent starts its units.
#[derive(Debug, Clone)]
pub struct FrontSetup {
    pub plan: MailPlan,
    pub site: Site,
}

impl FrontSetup {
    fn dir(&self) -> PathBuf {
        self.site.state_dir.join("front")
    }

    /// Where everything the front's containers mount is on the host.
    fn files(&self) -> FrontFiles {
        let postfix = self.site.state_dir.join("postfix");
        FrontFiles {
            postfix_dir: self.dir().join("postfix"),
            dovecot_dir: self.dir().join("dovecot"),
            tls_dir: self.site.state_dir.join("tls"),
            postfix_queue: postfix.join("spool"),
            postfix_data: postfix.join("lib"),
            sockets: self.site.state_dir.join(SOCKETS),
            relay_dir: self
                .plan
                .relayhost
                .as_ref()
                .map(|_| self.dir().join(RELAY_DIR)),
        }
    }

    fn log(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}.log"))
    }
}

/// The `front-postfix` and `front-dovecot` task units.
pub fn units(agent: Arc<Agent>, setup: FrontSetup) -> [Unit; 2] {
    let logs = [module_path!(), "letterbox::agent::mail_container"];
    let (postfix_agent, postfix_setup) = (agent.clone(), setup.clone());
    let postfix = Unit::task(FRONT_POSTFIX, move |stop| {
        run_postfix(postfix_agent.clone(), postfix_setup.clone(), stop)
    })
    .logs_from(&logs)
    .with_grace(mail_container::UNIT_GRACE);
    let dovecot = Unit::task(FRONT_DOVECOT, move |stop| {
        run_dovecot(agent.clone(), setup.clone(), stop)
    })
    .logs_from(&logs)
    .with_grace(mail_container::UNIT_GRACE);
    [postfix, dovecot]
}

async fn run_postfix(agent: Arc<Agent>, setup: FrontSetup, mut stop: StopSignal) -> TaskResult {
    let log = setup.log(FRONT_POSTFIX);
    let prepare = async {
        let files = prepare_common(&setup)?;
        mail_container::write_files(
            &files.postfix_dir,
            &[
                Rendered {
                    name: "main.cf".into(),
                    text: postfix::main_cf(&setup.plan),
                    readable_by: None,
                },
                Rendered {
                    name: "master.cf".into(),
                    text: postfix::master_cf(),
                    readable_by: None,
                },
                Rendered {
                    name: mail_container::file_name(paths::RESOLV_CONF),
                    text: postfix::resolv_conf(&setup.plan),
                    readable_by: None,
                },
            ],
        )?;
        match (&setup.plan.relayhost, &files.relay_dir) {
            (Some(relay), Some(dir)) => write_relay_password(&setup.site, relay, dir)?,
            // A relayhost taken out of the file leaves no copy of its password behind.
            _ => {
                let dir = setup.dir().join(RELAY_DIR);
                match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(ContainerUnitError::Write {
                            path: dir,
                            source: e,
                        });
                    }
                    _ => {}
                }
            }
        }
        // The queue's top is root's; Postfix makes and owns what is inside at start.
        mail_container::ensure_dir(&files.postfix_queue, 0o755)?;
        mail_container::ensure_dir(&files.postfix_data, 0o700)?;
        std::os::unix::fs::chown(&files.postfix_data, Some(POSTFIX_ID), Some(POSTFIX_ID)).map_err(
            |source| ContainerUnitError::Write {
                path: files.postfix_data.clone(),
                source,
            },
        )?;
        log::info!(
            "front-postfix: port 25 for {} account domain(s), LMTP to their boxes",
            setup.plan.boxes.len()
        );
        Ok::<Spec, ContainerUnitError>(spec::front_postfix_spec(&files)?)
    };
    let announce = tokio::spawn(announce_port_25(agent.clone()));
    let result =
        mail_container::run(&agent, &setup.site, FRONT_POSTFIX, &log, &mut stop, prepare).await;
    announce.abort();
    result
}

/// Logs once port 25 answers with Postfix's banner: on the console, the sign that mail is
/// accepted (a started container may still be loading), with the time it took.
async fn announce_port_25(agent: Arc<Agent>) {
    // Postfix listens on every address.
    wait_for_banner(SocketAddr::from(([127, 0, 0, 1], 25)), BANNER_WARNING).await;
    log::info!(
        "front-postfix: mail accepted on port 25 ({:.1} s after the agent started)",
        agent.uptime().as_secs_f64()
    );
}

/// Returns once `addr` greets with an SMTP banner, looking every second for as long as the
/// unit runs (its task is aborted when the unit ends): a slow start is announced late,
/// never dropped. Warns once when none has come after `warn_after`.
async fn wait_for_banner(addr: SocketAddr, warn_after: Duration) {
    let start = tokio::time::Instant::now();
    let mut warned = false;
    while !smtp_banner(addr).await {
        if !warned && start.elapsed() >= warn_after {
            log::warn!(
                "front-postfix: no banner on port 25 {} s after the unit started; still \
                 looking (`logs front-postfix` says what it is doing)",
                warn_after.as_secs()
            );
            warned = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether `addr` greets with "220 ", then QUIT.
async fn smtp_banner(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limit = Duration::from_secs(10);
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let mut greeting = [0u8; 4];
    let greeted = matches!(
        tokio::time::timeout(limit, stream.read_exact(&mut greeting)).await,
        Ok(Ok(_))
    ) && &greeting == b"220 ";
    let _ = stream.write_all(b"QUIT\r\n").await;
    greeted
}

async fn run_dovecot(agent: Arc<Agent>, setup: FrontSetup, mut stop: StopSignal) -> TaskResult {
    let log = setup.log(FRONT_DOVECOT);
    let prepare = async {
        let files = prepare_common(&setup)?;
        remove_stale_auth_socket(&files.sockets)?;
        mail_container::write_files(
            &files.dovecot_dir,
            &[Rendered {
                name: mail_container::file_name(paths::DOVECOT_CONFIG),
                text: dovecot::front_conf(),
                readable_by: None,
            }],
        )?;
        // The logins of the accounts in force now, which accounts added or deleted since
        // the agent started have changed.
        let plan = agent.mail_plan();
        write_logins(&setup.site, plan.as_deref().unwrap_or(&setup.plan))?;
        log::info!("front-dovecot: IMAP proxy behind the agent's 143 and 993 to the boxes");
        Ok::<Spec, ContainerUnitError>(spec::front_dovecot_spec(&files)?)
    };
    mail_container::run(&agent, &setup.site, FRONT_DOVECOT, &log, &mut stop, prepare).await
}

/// Removes the auth socket an earlier front Dovecot left, killed before it could (a power
/// cut, a killed agent). Dovecot would take it for a live one and refuse to start: it tells
/// a stale socket by connecting to it, which Postfix's 0600 socket refuses to a root
/// without CAP_DAC_OVERRIDE. A front Dovecot an earlier agent left running is stopped
/// right after this, before the new one starts.
fn remove_stale_auth_socket(sockets: &Path) -> Result<(), ContainerUnitError> {
    let path = sockets.join(paths::AUTH_SOCKET);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ContainerUnitError::Write { path, source: e })
        }
        _ => Ok(()),
    }
}

/// The front's IMAP logins for `plan`, a passwd-file per login name (`mail::dovecot`
/// says why): a new or changed one is replaced atomically, one no longer in force is
/// removed. Dovecot reads them at the next login, with no reload.
pub fn write_logins(site: &Site, plan: &MailPlan) -> Result<(), ContainerUnitError> {
    let dir = site
        .state_dir
        .join("front/dovecot")
        .join(mail_container::file_name(paths::DOVECOT_LOGINS));
    let error = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ContainerUnitError::Write { path, source }
    };
    mail_container::ensure_dir(&dir, 0o750)?;
    std::os::unix::fs::chown(&dir, Some(0), Some(DOVECOT_GID)).map_err(error(&dir))?;
    let logins = dovecot::front_logins(plan);
    for (login, text) in &logins {
        let path = dir.join(login);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == *text) {
            continue;
        }
        let previous = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let modified = later_second(SystemTime::now(), previous);
        // Owned before the rename, so Dovecot never finds a file it may not read.
        crate::atomic_file::replace_with(&path, 0o640, |file| {
            std::os::unix::fs::fchown(&*file, Some(0), Some(DOVECOT_GID))?;
            std::io::Write::write_all(file, text.as_bytes())?;
            file.set_modified(modified)
        })
        .map_err(error(&path))?;
    }
    for entry in std::fs::read_dir(&dir).map_err(error(&dir))? {
        let entry = entry.map_err(error(&dir))?;
        let name = entry.file_name();
        let wanted = logins.iter().any(|(login, _)| name == login.as_str());
        // Temporary files (".letterbox-…") are atomic_file's own.
        if !wanted && !name.to_string_lossy().starts_with('.') {
            std::fs::remove_file(entry.path()).map_err(error(&entry.path()))?;
        }
    }
    Ok(())
}

/// The modification time for a changed login's file: `now`, or else the second after the
/// old file's. Dovecot reloads a passwd-file only when its mtime, in whole seconds, or its
/// size differs from the copy it loaded; a login whose box moved to an address as long
/// within that second would otherwise still be sent to the old one.
fn later_second(now: SystemTime, previous: Option<SystemTime>) -> SystemTime {
    let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    match previous {
        Some(old) if seconds(now) <= seconds(old) => {
            UNIX_EPOCH + Duration::from_secs(seconds(old) + 1)
        }
        _ => now,
    }
}

/// The smarthost's login in `dir` (root's, 0700), root's and mode 0600 from the start
/// (Postfix opens it as root), its password read now from the file `[mail] relayhost`
/// names.
fn write_relay_password(
    site: &Site,
    relay: &Relayhost,
    dir: &Path,
) -> Result<(), ContainerUnitError> {
    mail_container::ensure_dir(dir, 0o700)?;
    let path = &dir.join(mail_container::file_name(paths::RELAY_PASSWORD));
    let source = site.state_dir.join(&relay.password_file);
    let password =
        read_relay_password(&source).map_err(|problem| ContainerUnitError::RelayPassword {
            path: source.clone(),
            problem,
        })?;
    let text = postfix::relay_password(relay, &password);
    crate::atomic_file::replace_with(path, 0o600, |file| {
        std::os::unix::fs::fchown(&*file, Some(0), Some(0))?;
        std::io::Write::write_all(file, text.as_bytes())
    })
    .map_err(|source| ContainerUnitError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The password in `path`: its one line, without the line end. What is wrong with it
/// never quotes it.
fn read_relay_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err("it is empty; expected the smarthost's password on one line".into());
    }
    if password.chars().any(char::is_control) {
        return Err(
            "it has more than one line or a control character; expected the \
                    smarthost's password alone on one line"
                .into(),
        );
    }
    Ok(password.to_string())
}

/// What both front containers need: the TLS pair and their shared socket directory.
fn prepare_common(setup: &FrontSetup) -> Result<FrontFiles, ContainerUnitError> {
    let files = setup.files();
    mail_container::ensure_tls(&files.tls_dir, &setup.plan.certificate_names)?;
    mail_container::ensure_dir(&files.sockets, 0o755)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(seconds * 1000 + millis)
    }

    /// A first boot under emulation once took over ten minutes from the unit's start to
    /// Postfix's banner: the banner must still be announced, after the warning.
    #[tokio::test]
    async fn a_banner_that_comes_after_the_warning_time_is_still_found() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            free.local_addr().unwrap().port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let late = Duration::from_millis(2500);
        let server = tokio::spawn(async move {
            tokio::time::sleep(late).await;
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            let (mut client, _) = listener.accept().await.unwrap();
            client.write_all(b"220 mail ESMTP\r\n").await.unwrap();
            let mut quit = [0u8; 6];
            client.read_exact(&mut quit).await.unwrap();
            quit
        });
        let start = std::time::Instant::now();
        tokio::time::timeout(
            Duration::from_secs(30),
            wait_for_banner(addr, Duration::from_secs(1)),
        )
        .await
        .expect("the banner was not found within 30 s");
        assert!(start.elapsed() >= late, "found before the server listened");
        assert_eq!(&server.await.unwrap(), b"QUIT\r\n");
    }

    #[test]
    fn a_logins_file_written_within_its_predecessors_second_is_dated_the_next_second() {
        assert_eq!(later_second(at(100, 700), Some(at(100, 200))), at(101, 0));
        // A clock stepped back still moves the file's date forward.
        assert_eq!(later_second(at(90, 0), Some(at(100, 200))), at(101, 0));
        assert_eq!(later_second(at(101, 300), Some(at(100, 900))), at(101, 300));
        assert_eq!(later_second(at(5, 0), None), at(5, 0));
    }

    #[test]
    fn the_relay_password_is_its_files_one_line_and_a_refusal_never_quotes_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        for (text, password) in [("s3cret\n", "s3cret"), ("a b:c\r\n", "a b:c"), ("x", "x")] {
            std::fs::write(&file, text).unwrap();
            assert_eq!(read_relay_password(&file).as_deref(), Ok(password));
        }
        for bad in ["", "\n", "quokka\nzebra\n", "quokka\tzebra"] {
            std::fs::write(&file, bad).unwrap();
            let problem = read_relay_password(&file).unwrap_err();
            assert!(problem.contains("expected"), "{problem}");
            assert!(
                !problem.contains("quokka") && !problem.contains("zebra"),
                "{problem}"
            );
        }
        assert!(read_relay_password(&dir.path().join("missing")).is_err());
    }
}
