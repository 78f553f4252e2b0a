//! Each account's home on the data partition, `<root>/<name>/Maildir/{cur,new,tmp}`:
//! bind-mounted into that account's box only, and owned by a uid and gid of its own.
//!
//! The home directory's owner is the record of its uid: a new account takes the lowest
//! free uid in 20000–29999, and keeps it as long as its home exists. Not a hash of the
//! name: with 10 000 uids, 20 accounts collide about once in 50 installations, and two
//! boxes sharing a uid could read each other's mail; resolving collisions makes the uid
//! depend on the order of creation, which is state anyway. Not a separate state file:
//! it could be lost or disagree with the owners of the files it describes. The range is
//! above the login users of a host (1000–) and below systemd's dynamic users (61184–)
//! and the subordinate ids of rootless containers (100000–).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The box uids (and gids, which equal them).
pub const FIRST_UID: u32 = 20000;
pub const LAST_UID: u32 = 29999;

/// Readable by the box's own uid only, as Dovecot wants a Maildir.
const MODE: u32 = 0o700;
/// Serialises allocation between concurrent callers.
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
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is owned by uid {uid}, not a box uid ({FIRST_UID}-{LAST_UID}): give it its own box uid with chown -R, or move it away")]
    ForeignOwner { path: PathBuf, uid: u32 },
    #[error("{path} and {other} are both owned by uid {uid}: each box needs a uid of its own")]
    SharedUid {
        path: PathBuf,
        other: PathBuf,
        uid: u32,
    },
    #[error("every box uid from {FIRST_UID} to {LAST_UID} is taken in {root}")]
    NoFreeUid { root: PathBuf },
}

/// Makes `<root>/<account>/Maildir/{cur,new,tmp}`, each mode 0700 and owned by the
/// account's uid and gid, choosing that uid if the account has no home yet. Changes
/// nothing that is already right.
pub fn ensure_maildir(root: &Path, account: &str) -> Result<BoxHome, MaildirError> {
    check_name(account)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(MODE)
        .create(root)
        .map_err(io("creating", root))?;
    let _lock = lock(root)?;
    let path = root.join(account);
    let homes = homes_and_owners(root)?;
    let uid = match homes.iter().find(|(home, _)| *home == path) {
        Some(&(_, uid)) => check_owner(&path, uid, &homes)?,
        // A symbolic link could lead the box to another's mail.
        None if std::fs::symlink_metadata(&path).is_ok() => {
            return Err(MaildirError::NotADirectory { path })
        }
        None => {
            let uid = (FIRST_UID..=LAST_UID)
                .find(|uid| homes.iter().all(|(_, owner)| owner != uid))
                .ok_or_else(|| MaildirError::NoFreeUid {
                    root: root.to_path_buf(),
                })?;
            create_home(root, account, uid)?;
            uid
        }
    };
    let home = BoxHome {
        path,
        uid,
        gid: uid,
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

/// The uid of an existing home, if it is a box uid no other home has.
fn check_owner(path: &Path, uid: u32, homes: &[(PathBuf, u32)]) -> Result<u32, MaildirError> {
    if !(FIRST_UID..=LAST_UID).contains(&uid) {
        return Err(MaildirError::ForeignOwner {
            path: path.to_path_buf(),
            uid,
        });
    }
    match homes
        .iter()
        .find(|(home, owner)| *owner == uid && home != path)
    {
        Some((other, _)) => Err(MaildirError::SharedUid {
            path: path.to_path_buf(),
            other: other.clone(),
            uid,
        }),
        None => Ok(uid),
    }
}

/// Makes the home under a temporary name, owned by `uid`, then renames it into place.
fn create_home(root: &Path, account: &str, uid: u32) -> Result<(), MaildirError> {
    let new = root.join(format!("{NEW_PREFIX}{account}"));
    // Left by a power cut before its rename; it held nothing yet.
    if std::fs::symlink_metadata(&new).is_ok() {
        std::fs::remove_dir_all(&new).map_err(io("removing", &new))?;
    }
    ensure_dir(&new, uid)?;
    let path = root.join(account);
    std::fs::rename(&new, &path).map_err(io("renaming into place", &path))?;
    sync_dir(root)
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
