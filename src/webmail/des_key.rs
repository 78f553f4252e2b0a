//! Roundcube's des_key: the key that encrypts each session's IMAP password in its
//! database. Made once, on the device, and kept: a new key would leave every saved
//! session's password unreadable, logging everyone out.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::roundcube::DES_KEY_FILE;

/// Roundcube's default cipher (3DES) takes a 24-byte key.
pub const DES_KEY_LENGTH: usize = 24;
/// Letters and digits: no byte PHP's trim, a shell or an editor would change.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, thiserror::Error)]
pub enum DesKeyError {
    #[error("no random bytes for the webmail's des_key: {0}")]
    Random(getrandom::Error),
    #[error("writing the webmail's des_key {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Makes `data_dir/des_key` (mode 0600, owned by `uid`:`gid`) unless it exists, which is
/// never replaced. Gives whether it was made. A key made at the same time by another
/// caller is kept too, never overwritten.
pub fn ensure_des_key(data_dir: &Path, uid: u32, gid: u32) -> Result<bool, DesKeyError> {
    let path = data_dir.join(DES_KEY_FILE);
    let write_error = |source| DesKeyError::Write {
        path: path.clone(),
        source,
    };
    if std::fs::symlink_metadata(&path).is_ok() {
        return Ok(false);
    }
    let key = new_key()?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".letterbox-des_key-")
        .tempfile_in(data_dir)
        .map_err(write_error)?;
    let file = tmp.as_file_mut();
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(write_error)?;
    std::os::unix::fs::fchown(&*file, Some(uid), Some(gid)).map_err(write_error)?;
    file.write_all(key.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    match tmp.persist_noclobber(&path) {
        Ok(_) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(write_error(e.error)),
    }
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(write_error)?;
    Ok(true)
}

/// [`DES_KEY_LENGTH`] characters of [`ALPHABET`], each equally likely: bytes past the
/// last whole multiple of the alphabet's size are drawn again.
fn new_key() -> Result<String, DesKeyError> {
    let limit = 256 - 256 % ALPHABET.len();
    let mut key = String::with_capacity(DES_KEY_LENGTH);
    while key.len() < DES_KEY_LENGTH {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(DesKeyError::Random)?;
        key.extend(
            bytes
                .iter()
                .map(|&b| usize::from(b))
                .filter(|&b| b < limit)
                .map(|b| char::from(ALPHABET[b % ALPHABET.len()]))
                .take(DES_KEY_LENGTH - key.len()),
        );
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn the_key_is_made_once_0600_for_its_owner_and_kept_on_the_second_call() {
        let dir = tempfile::tempdir().unwrap();
        // www-data's, as the agent asks; an unprivileged run may give a file only to itself.
        let (uid, gid) = if nix::unistd::geteuid().is_root() {
            (super::super::WWW_DATA_ID, super::super::WWW_DATA_ID)
        } else {
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )
        };
        assert!(ensure_des_key(dir.path(), uid, gid).unwrap(), "made");
        let path = dir.path().join(DES_KEY_FILE);
        let key = std::fs::read_to_string(&path).unwrap();
        assert_eq!(key.len(), DES_KEY_LENGTH, "{key:?}");
        assert!(key.bytes().all(|b| ALPHABET.contains(&b)), "{key:?}");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));

        assert!(!ensure_des_key(dir.path(), uid, gid).unwrap(), "kept");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), key);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [DES_KEY_FILE], "no temporary file left");
    }

    #[test]
    fn keys_differ() {
        assert_ne!(new_key().unwrap(), new_key().unwrap());
    }
}
