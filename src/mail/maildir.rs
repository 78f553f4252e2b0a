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
