//! The agent's `webmail` unit: Roundcube, as two containers of the `letterbox-webmail`
//! image (`webmail-php`, PHP-FPM; `webmail-nginx`, HTTPS on 443 and the redirect on 80) in
//! a network namespace of their own that has only loopback. The agent carries the host's
//! 443 and 80 into it, and the front's IMAP (993) and submission (587) out of it
//! (`net::forward`), so the webmail reaches nothing else: no box, not the Internet.
//!
//! One unit for both containers: neither serves without the other, so when either exits
//! both are stopped and the supervisor restarts the pair.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinSet;

use super::containers_unit::{MailError, CONNECT_LIMIT};
use super::mail_container::{self, ContainerUnitError, Rendered, Site};
use super::Agent;
use crate::containers::spec::{self, WebmailFiles, WEBMAIL_NGINX, WEBMAIL_PHP};
use crate::containers::{self, task, Client, Imported};
use crate::net::boxes::ensure_loopback_netns;
use crate::net::forward::{self, Netns};
use crate::supervise::{StopSignal, TaskResult, Unit};
use crate::webmail::{self, WebmailPlan};

/// The unit's name.
const WEBMAIL: &str = "webmail";
/// Its network namespace's file name, beside the boxes' (named after their accounts): the
/// underscore keeps any account from taking it, as account names are DNS labels.
const NETNS: &str = "_webmail";
/// The ports carried into the namespace (host → nginx) and out of it (Roundcube → front).
const INTO: [u16; 2] = [443, 80];
const OUT_OF: [u16; 2] = [993, 587];

/// Everything the webmail unit needs, fixed when the agent starts its units.
#[derive(Debug, Clone)]
pub struct WebmailSetup {
    pub plan: WebmailPlan,
    pub site: Site,
    /// The `letterbox-webmail` OCI layout.
    pub image: PathBuf,
    pub netns_dir: PathBuf,
}

impl WebmailSetup {
    fn dir(&self) -> PathBuf {
        self.site.state_dir.join(WEBMAIL)
    }

    fn log(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}.log"))
    }
}

pub fn unit(agent: Arc<Agent>, setup: WebmailSetup) -> Unit {
    Unit::task(WEBMAIL, move |stop| run(agent.clone(), setup.clone(), stop))
        .logs_from(&[
            module_path!(),
            "letterbox::agent::mail_container",
            "letterbox::net::forward",
        ])
        .with_grace(mail_container::UNIT_GRACE)
}

async fn run(agent: Arc<Agent>, setup: WebmailSetup, mut stop: StopSignal) -> TaskResult {
    let image = tokio::select! {
        image = async {
            mail_container::clock_or_timeout(&agent, WEBMAIL).await;
            import(&setup).await
        } => image?,
        _ = stop.requested() => return Ok(()),
    };
    let (netns_path, changes) = ensure_loopback_netns(&setup.netns_dir, NETNS)
        .await
        .map_err(ContainerUnitError::from)?;
    for change in changes {
        log::info!("webmail: {change}");
    }
    let files = prepare(&setup, netns_path)?;
    let netns = Netns::open(&files.netns).map_err(|source| ContainerUnitError::Write {
        path: files.netns.clone(),
        source,
    })?;
    let _forwards = start_forwards(Arc::new(netns)).await?;

    let php_log = setup.log(WEBMAIL_PHP);
    let php_spec = spec::webmail_php_spec(&files).map_err(ContainerUnitError::from)?;
    let php = mail_container::start(&setup.site, &image, WEBMAIL_PHP, &php_log, php_spec).await?;
    let nginx_log = setup.log(WEBMAIL_NGINX);
    let nginx_spec = spec::webmail_nginx_spec(&files).map_err(ContainerUnitError::from)?;
    let nginx =
        match mail_container::start(&setup.site, &image, WEBMAIL_NGINX, &nginx_log, nginx_spec)
            .await
        {
            Ok(nginx) => nginx,
            Err(e) => {
                mail_container::stop_container(&php, WEBMAIL_PHP).await;
                return Err(e.into());
            }
        };
    log::info!(
        "webmail: https://{}/ and https://{}/ (Roundcube)",
        setup.plan.domain,
        web_host(&setup.plan)
    );
    let exited = tokio::select! {
        exit = task::wait_task(&php, WEBMAIL_PHP) => Some((WEBMAIL_PHP, exit, php_log)),
        exit = task::wait_task(&nginx, WEBMAIL_NGINX) => Some((WEBMAIL_NGINX, exit, nginx_log)),
        _ = stop.requested() => None,
    };
    mail_container::stop_container(&nginx, WEBMAIL_NGINX).await;
    mail_container::stop_container(&php, WEBMAIL_PHP).await;
    match exited {
        Some((id, exit, log)) => Err(mail_container::exit_error(id, exit?.status, &log).into()),
        None => {
            log::info!("webmail stopped");
            Ok(())
        }
    }
}

/// The webmail image into containerd (already there after the first boot: then nothing
/// is written).
async fn import(setup: &WebmailSetup) -> Result<Imported, ContainerUnitError> {
    let index = setup.image.join("index.json");
    if let Err(source) = tokio::fs::metadata(&index).await {
        return Err(MailError::ImageMissing {
            path: index,
            source,
        }
        .into());
    }
    let client = Client::connect(&setup.site.socket, CONNECT_LIMIT).await?;
    let imported =
        containers::import_oci_layout(&client, &setup.image, crate::image::webmail::REFERENCE)
            .await?;
    if imported.blobs_written > 0 || imported.layers_unpacked > 0 {
        log::info!(
            "webmail image {} imported from {}",
            imported.manifest,
            setup.image.display()
        );
    }
    Ok(imported)
}

/// The rendered files, Roundcube's data directory and des_key, the socket directory and
/// the TLS pair; where each is on the host.
fn prepare(setup: &WebmailSetup, netns: PathBuf) -> Result<WebmailFiles, ContainerUnitError> {
    let dir = setup.dir();
    let files = WebmailFiles {
        config_dir: dir.join("etc"),
        tls_dir: setup.site.state_dir.join("tls"),
        sockets: dir.join("sockets"),
        data: dir.join("data"),
        netns,
    };
    mail_container::ensure_tls(&files.tls_dir, &setup.plan.server_names)?;
    let rendered = webmail::render_files(&setup.plan).map(|(name, text)| Rendered {
        name: name.into(),
        text,
        readable_by: None,
    });
    mail_container::write_files(&files.config_dir, &rendered)?;
    mail_container::ensure_dir(&files.sockets, 0o755)?;
    for dir in [files.data.clone(), files.data.join("tmp")] {
        remove_symlink(&dir)?;
        mail_container::ensure_dir(&dir, 0o700)?;
        chown_www_data(&dir)?;
    }
    if webmail::ensure_des_key(&files.data, webmail::WWW_DATA_ID, webmail::WWW_DATA_ID)? {
        log::info!("webmail: made Roundcube's des_key");
    }
    Ok(files)
}

/// Removes `path` if it is a symbolic link. PHP's www-data owns the data directory and
/// could put one where a directory is expected, for the agent, which is root, to give
/// whatever it names to www-data. The containers are stopped while this runs.
fn remove_symlink(path: &Path) -> Result<(), ContainerUnitError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            log::warn!("webmail: removed the symbolic link {}", path.display());
            std::fs::remove_file(path).map_err(|source| ContainerUnitError::Write {
                path: path.to_path_buf(),
                source,
            })
        }
        _ => Ok(()),
    }
}

fn chown_www_data(path: &Path) -> Result<(), ContainerUnitError> {
    std::os::unix::fs::chown(path, Some(webmail::WWW_DATA_ID), Some(webmail::WWW_DATA_ID)).map_err(
        |source| ContainerUnitError::Write {
            path: path.to_path_buf(),
            source,
        },
    )
}

/// The forwarders, running until the set is dropped: the host's 443 and 80 into the
/// namespace, its 993 and 587 out to the front.
async fn start_forwards(netns: Arc<Netns>) -> Result<JoinSet<()>, ContainerUnitError> {
    let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut forwards = JoinSet::new();
    for port in INTO {
        let listener =
            forward::listen_on_host(port).map_err(|source| ContainerUnitError::Listen {
                what: format!("the host's port {port} for the webmail"),
                source,
            })?;
        let netns = netns.clone();
        forwards.spawn(async move {
            forward::forward_in(&format!("webmail :{port}"), listener, netns, loopback(port)).await
        });
    }
    for port in OUT_OF {
        let listener =
            netns
                .listen(loopback(port))
                .await
                .map_err(|source| ContainerUnitError::Listen {
                    what: format!("port {port} in the webmail's namespace"),
                    source,
                })?;
        forwards.spawn(async move {
            forward::forward_out(
                &format!("webmail → front :{port}"),
                listener,
                loopback(port),
            )
            .await
        });
    }
    Ok(forwards)
}

/// `mail.<domain>`, the webmail's own name (the host's when it is called `mail`).
fn web_host(plan: &WebmailPlan) -> String {
    format!("{}.{}", crate::config::WEBMAIL_LABEL, plan.domain)
}
