//! `account add`, `account del` and `account list` against the running agent: the file,
//! the zone, the front's routing and logins, and the boxes kept in step.
//!
//! One command at a time (`Agent::accounts`), so two adds, or an add and a delete, never
//! interleave. An add writes the file first (it is the source of truth), then routes the
//! account (the socketmap answers at once; mail for a box still starting is deferred, never
//! refused), gives the front its login, starts its box and waits until it answers, then
//! publishes its zone records and sends a welcome mail. A box that does not come up undoes
//! all of it: the old file back, no route, no login, no records. A delete archives the
//! account's mail (`backups/NAME-DATE.tar.zst`) unless told to purge it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{boxes_unit, front_unit, mail_container::Site, Agent};
use crate::accounts::{self, AccountError, BoxState, Listing, Target, TargetError};
use crate::config::Config;
use crate::mail::dovecot::BOX_IMAP_PORT;
use crate::mail::{archive, maildir, welcome, MailPlan};
use crate::supervise::UnitState;

/// Where deleted accounts' mail is archived, under the state directory.
const BACKUPS: &str = "backups";
/// How long a new box has to answer IMAP before the add is undone: its wait for a
/// synchronised clock (`mail_container`), then its start.
const BOX_READY_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LiveAccountError {
    #[error("the agent runs the embedded default configuration: there is no letterbox.toml to add an account to")]
    NoFile,
    #[error("the mail system is not running here (no mail image)")]
    NoMail,
    #[error("a password is needed: type it when asked, or give it on stdin with --password-stdin")]
    NoPassword,
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    File(#[from] TargetError),
    #[error("hashing the password")]
    Hash(#[source] crate::passwd::PasswdError),
    #[error("the box of {name} did not answer within {}s, so the account was not added (see `logs box-{name}`)", BOX_READY_LIMIT.as_secs())]
    BoxNotReady { name: String },
    #[error("the {0} task failed")]
    Task(&'static str, #[source] tokio::task::JoinError),
    #[error("re-reading letterbox.toml: {0}")]
    Reload(String),
    #[error(transparent)]
    Front(#[from] super::mail_container::ContainerUnitError),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
}

/// Where the mail units of the agent run: set once they are started.
#[derive(Debug, Clone)]
pub struct MailSite {
    pub site: Site,
    pub netns_dir: PathBuf,
}

impl Agent {
    /// What an account command edits and where the mail units run: the provisioning file,
    /// the mail site, the file's name for messages, and its text now.
    fn open_file(&self) -> Result<(Target, MailSite, String, String), LiveAccountError> {
        let path = self.settings.provisioning_file.clone();
        let target = Target::File(path.ok_or(LiveAccountError::NoFile)?);
        let site = self.mail_site.lock().expect("mail site").clone();
        let site = site.ok_or(LiveAccountError::NoMail)?;
        let (file, before) = (target.name(), target.read()?);
        Ok((target, site, file, before))
    }

    /// Adds account `name` with `password`, or changes nothing.
    pub async fn add_account(
        self: &Arc<Self>,
        name: &str,
        password: Option<String>,
    ) -> Result<String, LiveAccountError> {
        let _one_at_a_time = self.accounts.lock().await;
        let (target, site, file, before) = self.open_file()?;
        let old = accounts::check_new(&file, &before, name)?;
        let password = password
            .filter(|p| !p.is_empty())
            .ok_or(LiveAccountError::NoPassword)?;
        accounts::check_password(&password, &old.account_policy).map_err(AccountError::from)?;
        let hash = tokio::task::spawn_blocking(move || crate::passwd::hash(&password))
            .await
            .map_err(|e| LiveAccountError::Task("password hash", e))?
            .map_err(LiveAccountError::Hash)?;
        let edited = accounts::add(&file, &before, name, &hash)?;
        target.write(&edited.text)?;
        let plan = MailPlan::from(&edited.config);
        let account = plan
            .find(name)
            .expect("the added account is in the new plan")
            .clone();
        // From the write on, a failure puts everything back as it was.
        let started = async {
            self.reload_off_runtime()
                .await
                .map_err(|e| LiveAccountError::Reload(crate::error_chain(&e)))?;
            self.apply_accounts(&site, &plan)?;
            self.start_box(&site, &edited.config, &plan, &account);
            let address = SocketAddr::from((account.ipv4, BOX_IMAP_PORT));
            match answers(address, BOX_READY_LIMIT).await {
                true => Ok(()),
                false => Err(LiveAccountError::BoxNotReady { name: name.into() }),
            }
        }
        .await;
        if let Err(e) = started {
            self.undo_add(&target, &before, &site, &old, name).await;
            return Err(e);
        }
        let zone = match self.reload_dns().await {
            Ok(done) => done,
            Err(e) => format!("the zone was not reloaded: {}", crate::error_chain(&e)),
        };
        let welcome = match self.send_welcome(&plan, &account).await {
            Ok(()) => "a welcome mail is on its way".to_string(),
            Err(e) => format!("no welcome mail: {}", crate::error_chain(&e)),
        };
        log::info!("account {name} added: {}", account.address);
        Ok(format!(
            "account {name} added: mail to {} goes to its box, which is running; {welcome}\n{zone}",
            account.address
        ))
    }

    /// Deletes account `name`: refused at RCPT from now on, its box stopped, its records
    /// gone, its Maildir archived on the data partition (or, with `purge`, deleted).
    pub async fn delete_account(
        self: &Arc<Self>,
        name: &str,
        purge: bool,
    ) -> Result<String, LiveAccountError> {
        let _one_at_a_time = self.accounts.lock().await;
        let (target, site, file, before) = self.open_file()?;
        let edited = accounts::delete(&file, &before, name)?;
        target.write(&edited.text)?;
        self.reload_off_runtime()
            .await
            .map_err(|e| LiveAccountError::Reload(crate::error_chain(&e)))?;
        let old_plan = self.mail_plan();
        let plan = MailPlan::from(&edited.config);
        self.apply_accounts(&site, &plan)?;
        let unit = format!("box-{name}");
        if let Err(e) = self.supervisor.stop(&unit).await {
            log::warn!("{e}");
        }
        self.restart_moved_boxes(&site, &edited.config, old_plan.as_deref(), &plan)
            .await;
        let zone = match self.reload_dns().await {
            Ok(done) => done,
            Err(e) => format!("the zone was not reloaded: {}", crate::error_chain(&e)),
        };
        let kept = self.keep_or_purge(&site, name, purge).await?;
        log::info!("account {name} deleted");
        Ok(format!(
            "account {name} deleted: mail to it is refused from now on, its box is stopped, {kept}\n{zone}"
        ))
    }

    /// Each account of the configuration in force, with its box's state.
    pub fn list_accounts(&self) -> Result<Vec<Listing>, LiveAccountError> {
        let Some((config, _)) = self.provisioning().config else {
            return Err(LiveAccountError::NoFile);
        };
        let states = self.supervisor.states();
        let mail = self.state_dir().join("mail");
        Ok(accounts::list(&config)
            .into_iter()
            .map(|mut listing| {
                let unit = format!("box-{}", listing.name);
                listing.state = match states.iter().find(|(n, _)| *n == unit) {
                    Some((_, UnitState::Running { .. })) => BoxState::Running,
                    Some((_, UnitState::Restarting { .. })) => BoxState::Restarting,
                    _ => BoxState::Stopped,
                };
                if let Ok(stats) = maildir::mailbox_stats(&mail.join(&listing.name)) {
                    listing.mailbox_bytes = Some(stats.bytes);
                    listing.messages = Some(stats.messages);
                    listing.last_delivery = stats.last_delivery.map(crate::clock::utc);
                }
                listing
            })
            .collect())
    }

    /// Boxes whose slot moved when an account went (two names that wanted one slot: the
    /// later took the next, and the earlier is gone): each is started again at its new
    /// address and uid, where the routes and logins now point.
    async fn restart_moved_boxes(
        self: &Arc<Self>,
        site: &MailSite,
        config: &Config,
        old: Option<&MailPlan>,
        new: &MailPlan,
    ) {
        for account in &new.boxes {
            let before = old.and_then(|plan| plan.find(&account.name));
            if before.is_some_and(|b| b.ipv4 != account.ipv4 || b.id != account.id) {
                log::info!("box {} moves to {}", account.name, account.ipv4);
                let _ = self.supervisor.stop(&format!("box-{}", account.name)).await;
                self.start_box(site, config, new, account);
            }
        }
    }

    /// The welcome mail, through the front's port 25 on this machine.
    async fn send_welcome(
        &self,
        plan: &MailPlan,
        account: &crate::mail::BoxPlan,
    ) -> Result<(), crate::mail::welcome::WelcomeError> {
        let message = welcome::welcome_message(plan, account, std::time::SystemTime::now())?;
        welcome::send(message, SocketAddr::from(([127, 0, 0, 1], 25))).await
    }

    /// A deleted account's home: archived as `backups/NAME-DATE.tar.zst` on the data
    /// partition, then removed; or, with `purge`, removed only. What happened, as text.
    async fn keep_or_purge(
        &self,
        site: &MailSite,
        name: &str,
        purge: bool,
    ) -> Result<String, LiveAccountError> {
        let state = site.site.state_dir.clone();
        let home = state.join("mail").join(name);
        if !home.exists() {
            return Ok("it had no mail".into());
        }
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let kept = if purge {
                "its mail is deleted".to_string()
            } else {
                let today = time::OffsetDateTime::now_utc().date();
                let archive = archive::archive_home(&home, &state.join(BACKUPS), &name, today)?;
                format!("its mail is kept in {}", archive.display())
            };
            archive::remove_home(&home)?;
            Ok(kept)
        })
        .await
        .map_err(|e| LiveAccountError::Task("archive", e))?
    }

    /// The plan in force for the routing tables, and the front's logins to match.
    fn apply_accounts(&self, site: &MailSite, plan: &MailPlan) -> Result<(), LiveAccountError> {
        self.set_mail_plan(plan.clone());
        front_unit::write_logins(&site.site, plan)?;
        Ok(())
    }

    fn start_box(
        self: &Arc<Self>,
        site: &MailSite,
        config: &Config,
        plan: &MailPlan,
        account: &crate::mail::BoxPlan,
    ) {
        let setup = boxes_unit::BoxSetup {
            plan: plan.clone(),
            account: account.clone(),
            bridge: boxes_unit::bridge(plan, config.containers.ipv4),
            memory_limit: config.containers.memory_limit,
            netns_dir: site.netns_dir.clone(),
            site: site.site.clone(),
        };
        self.start_unit(boxes_unit::unit(self.clone(), setup));
    }

    async fn undo_add(
        self: &Arc<Self>,
        target: &Target,
        before: &str,
        site: &MailSite,
        old: &Config,
        name: &str,
    ) {
        let _ = self.supervisor.stop(&format!("box-{name}")).await;
        if let Err(e) = target.write(before) {
            log::error!("undoing the add of {name}: {}", crate::error_chain(&e));
        }
        let _ = self.reload_off_runtime().await;
        if let Err(e) = self.apply_accounts(site, &MailPlan::from(old)) {
            log::error!("undoing the add of {name}: {}", crate::error_chain(&e));
        }
        // A home the failed box made, still empty, would hold its uid against a later add.
        let home = site.site.state_dir.join("mail").join(name);
        if maildir::mailbox_stats(&home).is_ok_and(|stats| stats.messages == 0) {
            let _ = archive::remove_home(&home);
        }
        log::warn!("account {name} not added: its box did not answer");
    }
}

/// Whether a TCP connection to `address` succeeds within `limit`. Each attempt has its
/// own short limit: a SYN lost while the box's link comes up would be sent again only
/// after the kernel's initial retransmission timeout, a whole second.
async fn answers(address: SocketAddr, limit: Duration) -> bool {
    let attempt = Duration::from_millis(100);
    tokio::time::timeout(limit, async {
        loop {
            let connect = tokio::net::TcpStream::connect(address);
            if let Ok(Ok(_)) = tokio::time::timeout(attempt, connect).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}
