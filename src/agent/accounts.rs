//! `account add`, `account del` and `account list` against the running agent: the file,
//! the zone, the front's routing and logins, and the boxes kept in step.
//!
//! One command at a time (`Agent::accounts`), so two adds, or an add and a delete, never
//! interleave. An add writes the file first (it is the source of truth), then routes the
//! account (the socketmap answers at once; mail for a box still starting is deferred, never
//! refused), gives the front its login, starts its box and waits until it answers, then
//! publishes its zone records and sends a welcome mail. A box that does not come up undoes
//! all of it: the old file back, no route, no login, no records. An add is refused at once
//! when the data partition has less than `ADD_NEEDS` free. A delete stops the box and
//! archives the account's mail (`backups/NAME-DATE.tar.zst`) before it changes anything
//! else, unless told to purge it: an archive that cannot be written (a full data
//! partition) starts the box again and refuses the delete, so no mail is lost.

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
/// The free space on the data partition below which an add is refused: the box's
/// container, its Dovecot indexes and its first mail need a few MiB, and a box started
/// on a full partition could only defer its mail.
const ADD_NEEDS: u64 = 16 << 20;

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
    #[error(
        "the data partition {} is full ({} KiB free; adding an account needs at least {} \
         MiB): free some space on it (old {BACKUPS}/*.tar.zst, say) and try again; account \
         {name} was not added", filesystem.display(), free >> 10, ADD_NEEDS >> 20
    )]
    FullForAdd {
        name: String,
        filesystem: PathBuf,
        free: u64,
    },
    #[error(
        "account {name} was not deleted: its mail cannot be archived, the data partition {} \
         is full; free some space on it and try again, or delete it with --purge, which \
         discards its mail", filesystem.display()
    )]
    FullForArchive {
        name: String,
        filesystem: PathBuf,
        #[source]
        source: archive::ArchiveError,
    },
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
        if let Some(full) = full_for_add(&site, name) {
            return Err(full);
        }
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
            self.undo_add(&target, &before, &site, &old, name, &e).await;
            // A box that did not answer, or a write that failed, on a partition now full.
            let full =
                matches!(e, LiveAccountError::BoxNotReady { .. }) || accounts::full_in_chain(&e);
            return Err(full
                .then(|| full_for_add(&site, name))
                .flatten()
                .unwrap_or(e));
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
        let old = crate::config::parse(&file, &before).map_err(AccountError::Invalid)?;
        // As the file spells it: the command may give it in any case.
        let accounts::Change::Deleted { name } = &edited.change else {
            unreachable!("a delete deletes")
        };
        let unit = format!("box-{name}");
        // Stopped first, so its Maildir holds still while it is archived; mail for it is
        // deferred meanwhile, as for any box that is down.
        if let Err(e) = self.supervisor.stop(&unit).await {
            log::warn!("{e}");
        }
        let archive = if purge {
            None
        } else {
            match self.archive_home(&site, name).await {
                Ok(archive) => archive,
                Err(e) => {
                    self.restart_box(&site, &old, name);
                    return Err(e);
                }
            }
        };
        if let Err(e) = target.write(&edited.text) {
            if let Some(archive) = &archive {
                let _ = std::fs::remove_file(archive);
            }
            self.restart_box(&site, &old, name);
            return Err(e.into());
        }
        self.reload_off_runtime()
            .await
            .map_err(|e| LiveAccountError::Reload(crate::error_chain(&e)))?;
        let old_plan = self.mail_plan();
        let plan = MailPlan::from(&edited.config);
        self.apply_accounts(&site, &plan)?;
        self.restart_moved_boxes(&site, &edited.config, old_plan.as_deref(), &plan)
            .await;
        let zone = match self.reload_dns().await {
            Ok(done) => done,
            Err(e) => format!("the zone was not reloaded: {}", crate::error_chain(&e)),
        };
        let home = site.site.state_dir.join("mail").join(name);
        let kept = match (&archive, home.exists()) {
            (_, false) => "it had no mail".to_string(),
            (Some(archive), true) => format!("its mail is kept in {}", archive.display()),
            (None, true) => "its mail is deleted".to_string(),
        };
        if home.exists() {
            tokio::task::spawn_blocking(move || archive::remove_home(&home))
                .await
                .map_err(|e| LiveAccountError::Task("removing the home", e))??;
        }
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

    /// A deleted account's home archived as `backups/NAME-DATE.tar.zst` on the data
    /// partition; `None` when it has none.
    async fn archive_home(
        &self,
        site: &MailSite,
        name: &str,
    ) -> Result<Option<PathBuf>, LiveAccountError> {
        let state = site.site.state_dir.clone();
        let home = state.join("mail").join(name);
        if !home.exists() {
            return Ok(None);
        }
        let name = name.to_string();
        let backups = state.join(BACKUPS);
        tokio::task::spawn_blocking(move || {
            let today = time::OffsetDateTime::now_utc().date();
            match archive::archive_home(&home, &backups, &name, today) {
                Ok(archive) => Ok(Some(archive)),
                Err(source) if accounts::full_in_chain(&source) => {
                    Err(LiveAccountError::FullForArchive {
                        filesystem: accounts::filesystem_of(&backups),
                        name,
                        source,
                    })
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
        .map_err(|e| LiveAccountError::Task("archive", e))?
    }

    /// Starts the box of `name` in `config` again, after a delete that was refused.
    fn restart_box(self: &Arc<Self>, site: &MailSite, config: &Config, name: &str) {
        let plan = MailPlan::from(config);
        if let Some(account) = plan.find(name).cloned() {
            self.start_box(site, config, &plan, &account);
        }
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
        why: &LiveAccountError,
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
        log::warn!("account {name} not added: {}", crate::error_chain(why));
    }
}

/// The refusal of an add of `name` when the data partition has less than [`ADD_NEEDS`]
/// free, if it has.
fn full_for_add(site: &MailSite, name: &str) -> Option<LiveAccountError> {
    let state = &site.site.state_dir;
    let free = accounts::free_bytes(state).ok()?;
    (free < ADD_NEEDS).then(|| LiveAccountError::FullForAdd {
        name: name.to_string(),
        filesystem: accounts::filesystem_of(state),
        free,
    })
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
