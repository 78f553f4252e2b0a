//! The agent's front units: `front-postfix` (port 25, the queue, LMTP to the boxes) and
//! `front-dovecot` (the IMAP proxy on 143 and 993), two containers in the agent's network
//! namespace, so that both see every client's real address (`containers::spec` says why
//! two). Each renders its files from the configuration in force, then runs its container
//! (`mail_container::run`). The queue and Postfix's state are on the data partition, so
//! mail accepted survives the container, the agent and a reboot.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::Spec;

use super::mail_container::{self, ContainerUnitError, Rendered, Site, DOVECOT_GID};
use super::Agent;
use crate::containers::spec::{self, FRONT_DOVECOT, FRONT_POSTFIX};
use crate::containers::FrontFiles;
use crate::mail::{dovecot, paths, postfix, MailPlan};
use crate::supervise::{StopSignal, TaskResult, Unit};

/// The front's shared socket directory, under the state directory.
pub const SOCKETS: &str = "front/sockets";
/// How long a start of `front-postfix` looks for its banner on port 25 before giving up.
const BANNER_LIMIT: Duration = Duration::from_secs(600);
/// The image's postfix user and group (overlays/mail/etc/passwd), owner of its state.
const POSTFIX_ID: u32 = 100;

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
            ],
        )?;
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
    let start = tokio::time::Instant::now();
    while start.elapsed() < BANNER_LIMIT {
        if smtp_banner().await {
            log::info!(
                "front-postfix: mail accepted on port 25 ({:.1} s after the agent started)",
                agent.uptime().as_secs_f64()
            );
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether 127.0.0.1:25 greets with "220 " (Postfix listens on every address), then QUIT.
async fn smtp_banner() -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limit = Duration::from_secs(10);
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(limit, tokio::net::TcpStream::connect(("127.0.0.1", 25))).await
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
        mail_container::write_files(
            &files.dovecot_dir,
            &[Rendered {
                name: mail_container::file_name(paths::DOVECOT_CONFIG),
                text: dovecot::front_conf(&setup.plan),
                readable_by: None,
            }],
        )?;
        // The logins of the accounts in force now, which accounts added or deleted since
        // the agent started have changed.
        let plan = agent.mail_plan();
        write_logins(&setup.site, plan.as_deref().unwrap_or(&setup.plan))?;
        log::info!("front-dovecot: IMAP proxy on 143 (STARTTLS) and 993 to the boxes");
        Ok::<Spec, ContainerUnitError>(spec::front_dovecot_spec(&files)?)
    };
    mail_container::run(&agent, &setup.site, FRONT_DOVECOT, &log, &mut stop, prepare).await
}

/// The front's IMAP logins for `plan`, replaced atomically: Dovecot reads a changed
/// passwd-file at the next login, with no reload.
pub fn write_logins(site: &Site, plan: &MailPlan) -> Result<(), ContainerUnitError> {
    let dir = site.state_dir.join("front/dovecot");
    let path = dir.join(mail_container::file_name(paths::DOVECOT_PASSWD));
    let text = dovecot::front_passwd(plan);
    // Owned before the rename, so Dovecot never finds a file it may not read.
    crate::atomic_file::replace_with(&path, 0o640, |file| {
        std::os::unix::fs::fchown(&*file, Some(0), Some(DOVECOT_GID))?;
        std::io::Write::write_all(file, text.as_bytes())
    })
    .map_err(|source| ContainerUnitError::Write { path, source })
}

/// What both front containers need: the TLS pair and their shared socket directory.
fn prepare_common(setup: &FrontSetup) -> Result<FrontFiles, ContainerUnitError> {
    let files = setup.files();
    mail_container::ensure_tls(&files.tls_dir, &setup.plan.hostname)?;
    mail_container::ensure_dir(&files.sockets, 0o755)?;
    Ok(files)
}
