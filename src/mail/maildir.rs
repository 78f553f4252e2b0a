//! Each account's home on the data partition, `<root>/<name>/Maildir/{cur,new,tmp}`:
//! bind-mounted into that account's box only, and owned by that box's uid and gid.
//!
//! The uid is given by the plan (`mail::plan::BoxPlan::id`), not chosen here: one fact
//! in one place. The account's slot gives its box's IPv4, IPv6 and uid together, and the
//! box's Dovecot config is rendered with that uid, so the home must be owned by it too.
//! A slot moves only when an earlier account is deleted (see `config::containers`); the
//! home then still has the old uid as its owner and is handed over to the new one.
//! Two homes are never owned by one uid: that box could read the other's mail. The
//! range is above the login users of a host (1000–) and below systemd's dynamic users
//! (61184–) and the subordinate ids of rootless containers (100000–).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::plan::BOX_ID_BASE;

/// The box uids (and gids, which equal them).
pub const FIRST_UID: u32 = BOX_ID_BASE;
pub const LAST_UID: u32 = BOX_ID_BASE + crate::config::MAX_BOXES - 1;

/// Readable by the box's own uid only, as Dovecot wants a Maildir.
const MODE: u32 = 0o700;
/// Serialises callers, so that the check that no other home has a uid holds until that
/// uid owns its home.
const LOCK_FILE: &str = ".lock";
/// A home is made under this prefix and renamed into place with its owner set, so a
/// home under its own name always has its final uid.
const NEW_PREFIX: &str = ".new-";

/// An account's home directory and the uid and gid its box runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxHome {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// The box uid that owned the home before it was handed over to `uid`, because the
    /// account's slot moved.
    pub reowned_from: Option<u32>,
}

impl BoxHome {
    /// The Maildir inside the home, where Dovecot delivers.
    pub fn maildir(&self) -> PathBuf {
        self.path.join("Maildir")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    #[error("{name:?} is not an account name: expected a lowercase DNS label (a-z, 0-9 and '-', not first, at most 63)")]
    InvalidName { name: String },
    #[error("uid {uid} for account {name:?} is not a box uid: expected {FIRST_UID}-{LAST_UID}")]
    UidOutOfRange { name: String, uid: u32 },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is owned by uid {uid}, not a box uid ({FIRST_UID}-{LAST_UID}): if it is this account's mail, give it to the box with chown -R {box_uid}:{box_uid}; otherwise move it away")]
    ForeignOwner {
        path: PathBuf,
        uid: u32,
        box_uid: u32,
    },
    #[error("{path} cannot be owned by uid {uid}: {other} is owned by it, and each box needs a uid of its own; if {other} belongs to a deleted account, move it away")]
    SharedUid {
        path: PathBuf,
        other: PathBuf,
        uid: u32,
    },
}

/// Makes `<root>/<name>/Maildir/{cur,new,tmp}`, each mode 0700 and owned by `uid` (and
/// the gid equal to it), handing an existing home over from another box uid. Changes
/// nothing that is already right.
pub fn ensure_maildir(root: &Path, name: &str, uid: u32) -> Result<BoxHome, MaildirError> {
    check_name(name)?;
    if !(FIRST_UID..=LAST_UID).contains(&uid) {
        return Err(MaildirError::UidOutOfRange {
            name: name.to_string(),
            uid,
        });
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(MODE)
        .create(root)
        .map_err(io("creating", root))?;
    let _lock = lock(root)?;
    let path = root.join(name);
    let homes = homes_and_owners(root)?;
    let owner = match homes.iter().find(|(home, _)| *home == path) {
        Some(&(_, owner)) => Some(owner),
        // A symbolic link could lead the box to another's mail.
        None if std::fs::symlink_metadata(&path).is_ok() => {
            return Err(MaildirError::NotADirectory { path })
        }
        None => None,
    };
    if let Some(owner) = owner.filter(|owner| !(FIRST_UID..=LAST_UID).contains(owner)) {
        return Err(MaildirError::ForeignOwner {
            path,
            uid: owner,
            box_uid: uid,
        });
    }
    if let Some((other, _)) = homes
        .iter()
        .find(|(home, owner)| *owner == uid && *home != path)
    {
        return Err(MaildirError::SharedUid {
            path,
            other: other.clone(),
            uid,
        });
    }
    let reowned_from = match owner {
        None => {
            create_home(root, name, uid)?;
            None
        }
        Some(owner) if owner == uid => None,
        Some(owner) => {
            hand_over(&path, owner, uid)?;
            Some(owner)
        }
    };
    let home = BoxHome {
        path,
        uid,
        gid: uid,
        reowned_from,
    };
    let maildir = home.maildir();
    for dir in [
        home.path.clone(),
        maildir.clone(),
        maildir.join("cur"),
        maildir.join("new"),
        maildir.join("tmp"),
    ] {
        ensure_dir(&dir, uid)?;
    }
    Ok(home)
}

fn check_name(name: &str) -> Result<(), MaildirError> {
    let valid = (1..=63).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(MaildirError::InvalidName {
            name: name.to_string(),
        })
    }
}

fn lock(root: &Path) -> Result<Flock<std::fs::File>, MaildirError> {
    let path = root.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("opening", &path))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io("locking", &path)(std::io::Error::from(errno)))
}

/// Every home directory under `root` with its owner's uid.
fn homes_and_owners(root: &Path) -> Result<Vec<(PathBuf, u32)>, MaildirError> {
    let mut homes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io("reading", root))? {
        let entry = entry.map_err(io("reading", root))?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io("inspecting", &path))?;
        if meta.is_dir() {
            homes.push((path, meta.uid()));
        }
    }
    Ok(homes)
}

/// Makes the home under a temporary name, owned by `uid`, then renames it into place.
fn create_home(root: &Path, name: &str, uid: u32) -> Result<(), MaildirError> {
    let new = root.join(format!("{NEW_PREFIX}{name}"));
    // Left by a power cut before its rename; it held nothing yet.
    if std::fs::symlink_metadata(&new).is_ok() {
        std::fs::remove_dir_all(&new).map_err(io("removing", &new))?;
    }
    ensure_dir(&new, uid)?;
    let path = root.join(name);
    std::fs::rename(&new, &path).map_err(io("renaming into place", &path))?;
    sync_dir(root)
}

/// Gives what box uid `from` owns in the home to `to` (the gid likewise), the home itself
/// last: if a power cut stops it halfway, the home still shows `from` and the next run
/// finishes. Only what `from` owned: a hard link the old box made to another's file must
/// not be given away.
fn hand_over(home: &Path, from: u32, to: u32) -> Result<(), MaildirError> {
    reown_tree(home, from, to)?;
    // One fsync commits the journal, and with it every chown before it.
    sync_dir(home)
}

fn reown_tree(path: &Path, from: u32, to: u32) -> Result<(), MaildirError> {
    let meta = std::fs::symlink_metadata(path).map_err(io("inspecting", path))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io("reading", path))? {
            let entry = entry.map_err(io("reading", path))?;
            reown_tree(&entry.path(), from, to)?;
        }
    }
    let uid = (meta.uid() == from).then_some(to);
    let gid = (meta.gid() == from).then_some(to);
    if uid.is_some() || gid.is_some() {
        // lchown: a symbolic link is re-owned itself, never what it points to.
        std::os::unix::fs::lchown(path, uid, gid).map_err(io("chown", path))?;
    }
    Ok(())
}

/// Creates `path` if it is missing, then sets its owner, group and mode where they differ.
fn ensure_dir(path: &Path, uid: u32) -> Result<(), MaildirError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(MODE)
                .create(path)
                .map_err(io("creating", path))?;
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
            std::fs::symlink_metadata(path).map_err(io("inspecting", path))?
        }
        Err(e) => return Err(io("inspecting", path)(e)),
    };
    if !meta.is_dir() {
        return Err(MaildirError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != uid || meta.gid() != uid {
        std::os::unix::fs::lchown(path, Some(uid), Some(uid)).map_err(io("chown", path))?;
    }
    if meta.mode() & 0o7777 != MODE {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(MODE))
            .map_err(io("chmod", path))?;
    }
    Ok(())
}

/// Makes a directory's new or renamed entries survive a power cut.
fn sync_dir(dir: &Path) -> Result<(), MaildirError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MaildirError {
    let path = path.to_path_buf();
    move |source| MaildirError::Io {
        action,
        path,
        source,
    }
}

/// What a box's Maildir holds, as `letterbox account list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxStats {
    /// The size of every message, in every folder.
    pub bytes: u64,
    /// The messages in every folder.
    pub messages: u64,
    /// The newest mtime of a message in the inbox, where mail is delivered; Dovecot gives
    /// a message file the time it was received. Other folders are left out: a client's
    /// APPEND (a copy of a sent mail) is not a delivery.
    pub last_delivery: Option<std::time::SystemTime>,
}

/// Counts the messages (files in `new/` and `cur/`) of the Maildir of `home` and of its
/// Maildir++ folders (`Maildir/.NAME/`). A folder without `new/` or `cur/` has no
/// messages there: Dovecot makes them when it first needs them.
pub fn mailbox_stats(home: &Path) -> Result<MailboxStats, MaildirError> {
    let maildir = home.join("Maildir");
    let mut stats = MailboxStats {
        bytes: 0,
        messages: 0,
        last_delivery: None,
    };
    add_folder(&maildir, &mut stats, true)?;
    for entry in std::fs::read_dir(&maildir).map_err(io("reading", &maildir))? {
        let entry = entry.map_err(io("reading", &maildir))?;
        let is_folder = entry.file_name().as_encoded_bytes().starts_with(b".")
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if is_folder {
            add_folder(&entry.path(), &mut stats, false)?;
        }
    }
    Ok(stats)
}

/// `new/` before `cur/`: Dovecot moves messages from new to cur, so one moved while they
/// are read is still counted, in cur.
fn add_folder(folder: &Path, stats: &mut MailboxStats, inbox: bool) -> Result<(), MaildirError> {
    for sub in ["new", "cur"] {
        let dir = folder.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("reading", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("reading", &dir))?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Moved to cur, or expunged, since the directory was read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("inspecting", &entry.path())(e)),
            };
            if !meta.is_file() {
                continue;
            }
            stats.bytes += meta.len();
            stats.messages += 1;
            if inbox {
                let mtime = meta.modified().map_err(io("inspecting", &entry.path()))?;
                stats.last_delivery = stats.last_delivery.max(Some(mtime));
            }
        }
    }
    Ok(())
}

/// The message in the Maildir directory `dir` (`new/` or `cur/`), made at `since` or
/// later, whose Message-ID is `<ID@…>`, looked for in each such file's first 8 KiB (its
/// header).
pub fn find_by_message_id(dir: &Path, id: &str, since: std::time::SystemTime) -> Option<PathBuf> {
    use std::io::Read;
    let wanted = format!("<{id}@").to_ascii_lowercase();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let recent = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified >= since);
        if !recent {
            continue;
        }
        let mut head = Vec::with_capacity(8192);
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        if file.take(8192).read_to_end(&mut head).is_err() {
            continue;
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if head
            .lines()
            .any(|l| l.starts_with("message-id:") && l.contains(&wanted))
        {
            return Some(entry.path());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn message(path: &Path, len: usize, mtime: u64) {
        std::fs::write(path, vec![b'x'; len]).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
            .unwrap();
    }

    #[test]
    fn counts_messages_of_every_folder_and_the_newest_inbox_delivery() {
        let home = tempfile::tempdir().unwrap();
        let maildir = home.path().join("Maildir");
        for dir in ["new", "cur", "tmp", ".Sent/cur", ".Trash/new"] {
            std::fs::create_dir_all(maildir.join(dir)).unwrap();
        }
        message(&maildir.join("new/1"), 100, 1_700_000_300);
        message(&maildir.join("cur/2:2,S"), 20, 1_700_000_500);
        message(&maildir.join("cur/3:2,S"), 3, 1_700_000_100);
        // Sent later than any delivery, and not a delivery.
        message(&maildir.join(".Sent/cur/4:2,S"), 4000, 1_800_000_000);
        message(&maildir.join(".Trash/new/5"), 5, 1_700_000_000);
        // Not messages: a delivery being written, Dovecot's own files, a directory.
        message(&maildir.join("tmp/6"), 70_000, 1_900_000_000);
        message(&maildir.join("dovecot-uidlist"), 60_000, 1_900_000_000);
        message(&maildir.join(".Sent/dovecot.index"), 50_000, 1_900_000_000);
        std::fs::create_dir(maildir.join("cur/not-a-message")).unwrap();

        let stats = mailbox_stats(home.path()).unwrap();
        assert_eq!(
            stats,
            MailboxStats {
                bytes: 100 + 20 + 3 + 4000 + 5,
                messages: 5,
                last_delivery: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_500)),
            }
        );
    }

    #[test]
    fn an_empty_maildir_has_no_messages_and_no_delivery() {
        let home = tempfile::tempdir().unwrap();
        for dir in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(home.path().join("Maildir").join(dir)).unwrap();
        }
        let stats = mailbox_stats(home.path()).unwrap();
        assert_eq!(
            (stats.bytes, stats.messages, stats.last_delivery),
            (0, 0, None)
        );
    }

    #[test]
    fn a_home_without_a_maildir_is_an_error_naming_it() {
        let home = tempfile::tempdir().unwrap();
        let error = mailbox_stats(home.path()).unwrap_err();
        let maildir = home.path().join("Maildir");
        assert!(
            matches!(&error, MaildirError::Io { action: "reading", path, source }
                if *path == maildir && source.kind() == std::io::ErrorKind::NotFound),
            "{error:?}"
        );
    }
}
