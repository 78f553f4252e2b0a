//! Which configuration the agent runs with: the provisioning file when it is valid,
//! otherwise the last good one kept on persistent storage, otherwise none (the console
//! still explains what is wrong).

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{self, Config, LoadError};

/// Where the running configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Embedded,
    LastGood(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Embedded => f.write_str(config::DEFAULT_NAME),
            Source::LastGood(p) => write!(f, "last good configuration {}", p.display()),
        }
    }
}

/// The outcome of reading the provisioning file.
#[derive(Debug, Clone)]
pub struct Provisioning {
    /// The configuration in force, if any.
    pub config: Option<(Config, Source)>,
    /// Why the provisioning file itself was not used (diagnostics or read error).
    pub problem: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {path} readable by root only")]
    Mode {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The last good copy holds the password hashes: readable by root only.
const LAST_GOOD_MODE: u32 = 0o600;

/// Reads the provisioning file (`None`: the embedded default), saving it as the last good
/// configuration when valid and falling back to that copy when not.
pub fn load(file: Option<&Path>, state_dir: &Path) -> Provisioning {
    let last_good = last_good_path(state_dir);
    match config::load(file) {
        Ok((cfg, text)) => {
            if let Err(e) = save_last_good(state_dir, &text) {
                log::warn!("{}", crate::error_chain(&e));
            }
            let source = file.map_or(Source::Embedded, |p| Source::File(p.to_path_buf()));
            Provisioning {
                config: Some((cfg, source)),
                problem: None,
            }
        }
        Err(e) => {
            let problem = match &e {
                // The diagnostics already say the file name, line and column.
                LoadError::Invalid(diagnostics) => diagnostics.to_string(),
                other => crate::error_chain(other),
            };
            let name = last_good.display().to_string();
            let fallback = match std::fs::read_to_string(&last_good) {
                Ok(text) => config::parse(&name, &text).map_err(|d| Some(d.to_string())),
                // No copy yet (first boot): nothing more to say.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(None),
                Err(e) => Err(Some(format!("cannot read it: {e}"))),
            };
            match fallback {
                Ok(cfg) => Provisioning {
                    config: Some((cfg, Source::LastGood(last_good))),
                    problem: Some(problem),
                },
                Err(None) => Provisioning {
                    config: None,
                    problem: Some(problem),
                },
                Err(Some(why)) => Provisioning {
                    config: None,
                    problem: Some(format!(
                        "{problem}\nthe last good copy {name} is unusable too: {why}"
                    )),
                },
            }
        }
    }
}

/// [`load`], logging what was found and which configuration is used.
pub fn read(file: Option<&Path>, state_dir: &Path) -> Provisioning {
    match file {
        Some(path) => log::info!("reading {}", path.display()),
        None => log::info!("reading the embedded default configuration"),
    }
    let p = load(file, state_dir);
    if let Some(problem) = &p.problem {
        log::error!("{problem}");
    }
    match &p.config {
        Some((cfg, Source::LastGood(path))) => log::warn!(
            "using the last good configuration {} ({})",
            path.display(),
            cfg.system.fqdn()
        ),
        Some((cfg, source)) => log::info!("configuration {} from {source}", cfg.system.fqdn()),
        None => log::error!(
            "no valid configuration and no last good copy: fix letterbox.toml, then `check` on the console"
        ),
    }
    p
}

pub fn last_good_path(state_dir: &Path) -> PathBuf {
    state_dir.join(crate::paths::LAST_GOOD_FILE)
}

/// Writes the copy atomically, so that power loss leaves either the old or the new copy,
/// never half of one; and only when it changed, since every boot and reload saves it and
/// the SD card wears with each write. A copy an older agent left world-readable is made
/// 0600 in place.
fn save_last_good(state_dir: &Path, text: &str) -> Result<(), SaveError> {
    let path = last_good_path(state_dir);
    let display = || path.display().to_string();
    if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        if mode.is_ok_and(|mode| mode == LAST_GOOD_MODE) {
            return Ok(());
        }
        return std::fs::set_permissions(&path, std::fs::Permissions::from_mode(LAST_GOOD_MODE))
            .map_err(|source| SaveError::Mode {
                path: display(),
                source,
            });
    }
    crate::atomic_file::replace_mode(&path, text.as_bytes(), LAST_GOOD_MODE).map_err(|source| {
        SaveError::Write {
            path: display(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_to_the_last_good_copy_and_reports_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let file = dir.path().join("letterbox.toml");
        std::fs::write(&file, config::DEFAULT_TOML).unwrap();
        let good = load(Some(&file), &state);
        assert!(good.problem.is_none());
        assert_eq!(good.config.as_ref().unwrap().1, Source::File(file.clone()));
        assert_eq!(
            std::fs::read_to_string(last_good_path(&state)).unwrap(),
            config::DEFAULT_TOML
        );

        std::fs::write(&file, "version = 1\n[system]\nhostname = 3\n").unwrap();
        let bad = load(Some(&file), &state);
        let problem = bad.problem.unwrap();
        assert!(problem.contains("letterbox.toml:3:"), "{problem}");
        let (cfg, source) = bad.config.unwrap();
        assert_eq!(source, Source::LastGood(last_good_path(&state)));
        assert_eq!(cfg.system.hostname, "mail");
        // The broken file did not replace the good copy.
        assert_eq!(
            std::fs::read_to_string(last_good_path(&state)).unwrap(),
            config::DEFAULT_TOML
        );
    }

    #[test]
    fn the_last_good_copy_is_private_and_written_only_when_it_changed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("letterbox.toml");
        let copy = last_good_path(dir.path());
        std::fs::write(&file, config::DEFAULT_TOML).unwrap();
        load(Some(&file), dir.path());
        let first = std::fs::metadata(&copy).unwrap();
        assert_eq!(first.mode() & 0o777, 0o600);

        // The same file again (a reboot, `check`): not rewritten. A rewrite is a rename
        // onto the path, which gives it a new inode.
        load(Some(&file), dir.path());
        let again = std::fs::metadata(&copy).unwrap();
        assert_eq!(
            (again.ino(), again.mtime(), again.mtime_nsec()),
            (first.ino(), first.mtime(), first.mtime_nsec())
        );

        // A copy an older agent left 0644 is made private in place.
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
        load(Some(&file), dir.path());
        let fixed = std::fs::metadata(&copy).unwrap();
        assert_eq!(fixed.mode() & 0o777, 0o600);
        assert_eq!(fixed.ino(), first.ino());

        // An edited file is saved, private too.
        let edited = format!("{}\n# edited\n", config::DEFAULT_TOML);
        std::fs::write(&file, &edited).unwrap();
        load(Some(&file), dir.path());
        let saved = std::fs::metadata(&copy).unwrap();
        assert_ne!(saved.ino(), first.ino());
        assert_eq!(saved.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), edited);
    }

    #[test]
    fn a_pasted_password_is_not_quoted_in_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("letterbox.toml");
        let text = config::DEFAULT_TOML.replace(
            "# admin_password_hash = \"$6$...\"",
            "admin_password_hash = \"hunter2\"",
        );
        std::fs::write(&file, &text).unwrap();
        let problem = load(Some(&file), dir.path()).problem.unwrap();
        let line = text.lines().position(|l| l.contains("hunter2")).unwrap() + 1;
        assert!(
            problem.contains(&format!("letterbox.toml:{line}:")),
            "{problem}"
        );
        assert!(
            problem.contains("admin_password_hash = (not shown)"),
            "{problem}"
        );
        assert!(!problem.contains("hunter2"), "{problem}");
    }

    #[test]
    fn no_config_at_all_without_a_last_good_copy() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("letterbox.toml");
        let p = load(Some(&missing), dir.path());
        assert!(p.config.is_none());
        assert!(p.problem.unwrap().contains("cannot read provisioning file"));
    }

    #[test]
    fn an_unusable_last_good_copy_is_reported_too() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("letterbox.toml");
        std::fs::write(last_good_path(dir.path()), "version = 1\n[system\n").unwrap();
        let p = load(Some(&missing), dir.path());
        assert!(p.config.is_none());
        let problem = p.problem.unwrap();
        assert!(
            problem.contains("cannot read provisioning file"),
            "{problem}"
        );
        let copy = format!(
            "the last good copy {} is unusable too: ",
            last_good_path(dir.path()).display()
        );
        assert!(problem.contains(&copy), "{problem}");
        assert!(problem.contains("last-good.toml:2:"), "{problem}");
    }
}
