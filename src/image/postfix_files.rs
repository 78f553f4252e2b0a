//! Postfix's `postfix-files` applied to a layer's tree, as `postfix set-permissions` and
//! `post-install create-missing` would on a running system: each listed directory and file
//! gets its owner, group and mode, and the queue directories marked for creation exist.
//! Done here, not by running Postfix, so an arm64 image builds on an amd64 host.

use std::collections::BTreeMap;
use std::path::Path;

use super::oci::{add_directories, Kind, Tree};
use super::ImageError;

/// Debian's values of the parameters postfix-files names (`postconf -d` on trixie, with
/// Debian's packaging paths); "no" means the files are not installed.
const PARAMETERS: &[(&str, &str)] = &[
    ("config_directory", "/etc/postfix"),
    ("meta_directory", "/etc/postfix"),
    ("sample_directory", "/etc/postfix"),
    ("command_directory", "/usr/sbin"),
    ("daemon_directory", "/usr/lib/postfix/sbin"),
    ("shlib_directory", "/usr/lib/postfix"),
    ("data_directory", "/var/lib/postfix"),
    ("queue_directory", "/var/spool/postfix"),
    ("sendmail_path", "/usr/sbin/sendmail"),
    ("newaliases_path", "/usr/bin/newaliases"),
    ("mailq_path", "/usr/bin/mailq"),
    ("manpage_directory", "/usr/share/man"),
    ("html_directory", "no"),
    ("readme_directory", "no"),
    ("mail_owner", "postfix"),
    ("setgid_group", "postdrop"),
];

/// User and group ids by name, from the image's passwd and group files.
pub struct Accounts {
    users: BTreeMap<String, u64>,
    groups: BTreeMap<String, u64>,
}

impl Accounts {
    pub fn parse(passwd: &str, group: &str) -> Result<Accounts, ImageError> {
        let ids = |text: &str, file: &str, id_field: usize| {
            let mut ids = BTreeMap::new();
            for (n, line) in text.lines().enumerate() {
                let fields: Vec<&str> = line.split(':').collect();
                let id = fields
                    .get(id_field)
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| {
                        ImageError::Layout(format!(
                            "overlays/mail/etc/{file}:{}:1: expected name:x:id:..., found {line:?}",
                            n + 1
                        ))
                    })?;
                ids.insert(fields[0].to_string(), id);
            }
            Ok::<_, ImageError>(ids)
        };
        Ok(Accounts {
            users: ids(passwd, "passwd", 2)?,
            groups: ids(group, "group", 2)?,
        })
    }

    fn uid(&self, name: &str) -> Option<u64> {
        self.users.get(name).copied()
    }

    fn gid(&self, name: &str) -> Option<u64> {
        self.groups.get(name).copied()
    }
}

/// Applies the `d` and `f` entries of postfix-files (`text`, read from `file`) to `tree`.
/// Entries for files the image does not hold (manual pages, main.cf) are skipped; obsolete
/// ones (flag `o`) too.
pub fn apply(
    tree: &mut Tree,
    text: &str,
    file: &Path,
    accounts: &Accounts,
) -> Result<(), ImageError> {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |column: usize, what: String| {
            ImageError::Layout(format!("{}:{}:{column}: {what}", file.display(), n + 1))
        };
        let fields: Vec<&str> = line.split(':').collect();
        if !matches!(fields.get(1), Some(&"d") | Some(&"f")) {
            continue; // h and l: links the packages already hold
        }
        let [name, kind, owner, group, mode, ref rest @ ..] = fields[..] else {
            return Err(error(
                1,
                format!("expected name:type:owner:group:mode, found {line:?}"),
            ));
        };
        let flags = rest.first().copied().unwrap_or("");
        if flags.contains('o') {
            continue;
        }
        let Some(path) = expand(name).map_err(|v| error(1, format!("unknown parameter ${v}")))?
        else {
            continue;
        };
        let column = |field: usize| fields[..field].iter().map(|f| f.len() + 1).sum::<usize>() + 1;
        let owner = expand(owner)
            .map_err(|v| error(column(2), format!("unknown parameter ${v}")))?
            .unwrap_or_default();
        let uid = accounts.uid(&owner).ok_or_else(|| {
            error(
                column(2),
                format!("user {owner} is not in overlays/mail/etc/passwd"),
            )
        })?;
        let gid = match group {
            "-" => 0,
            group => {
                let group = expand(group)
                    .map_err(|v| error(column(3), format!("unknown parameter ${v}")))?
                    .unwrap_or_default();
                accounts.gid(&group).ok_or_else(|| {
                    error(
                        column(3),
                        format!("group {group} is not in overlays/mail/etc/group"),
                    )
                })?
            }
        };
        let mode = u32::from_str_radix(mode, 8)
            .map_err(|_| error(column(4), format!("expected an octal mode, found {mode:?}")))?;
        let path = path.trim_start_matches('/');
        if kind == "d" && flags.contains('c') {
            add_directories(tree, path, mode);
        }
        let Some(entry) = tree.get_mut(path) else {
            continue;
        };
        let is_dir = entry.kind == Kind::Dir;
        if is_dir != (kind == "d") {
            return Err(error(
                1,
                format!(
                    "/{path} is {} in the packages",
                    if is_dir {
                        "a directory"
                    } else {
                        "not a directory"
                    }
                ),
            ));
        }
        entry.uid = uid;
        entry.gid = gid;
        entry.mode = mode;
    }
    Ok(())
}

/// `$parameter/rest` with the parameter's value, a literal as it is; None for a path
/// under a parameter that is "no"; Err(name) for an unknown parameter.
fn expand(value: &str) -> Result<Option<String>, String> {
    let Some(reference) = value.strip_prefix('$') else {
        return Ok(Some(value.to_string()));
    };
    let (name, rest) = reference.split_at(reference.find('/').unwrap_or(reference.len()));
    match PARAMETERS.iter().find(|(p, _)| *p == name) {
        Some((_, "no")) => Ok(None),
        Some((_, expanded)) => Ok(Some(format!("{expanded}{rest}"))),
        None => Err(name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::oci::Entry;
    use super::*;

    fn accounts() -> Accounts {
        Accounts::parse(
            "root:x:0:0::/:/bin/false\npostfix:x:100:100::/:/bin/false\n",
            "root:x:0:\npostfix:x:100:\npostdrop:x:103:\n",
        )
        .unwrap()
    }

    #[test]
    fn owners_and_modes_are_set_and_queue_directories_created() {
        let mut tree = Tree::new();
        for dir in ["var", "var/spool", "var/spool/postfix", "usr", "usr/sbin"] {
            tree.insert(dir.into(), Entry::root(Kind::Dir, 0o755));
        }
        tree.insert(
            "usr/sbin/postdrop".into(),
            Entry::root(Kind::File("/x".into()), 0o755),
        );
        let text = "# comment\n\
            $queue_directory:d:root:-:755:uc\n\
            $queue_directory/maildrop:d:$mail_owner:$setgid_group:730:uc\n\
            $command_directory/postdrop:f:root:$setgid_group:2755:u\n\
            $manpage_directory/man1/postfix.1.gz:f:root:-:644\n\
            $html_directory/index.html:f:root:-:644\n\
            $daemon_directory/lmtp:h:$daemon_directory/smtp\n";
        apply(&mut tree, text, Path::new("postfix-files"), &accounts()).unwrap();
        let maildrop = &tree["var/spool/postfix/maildrop"];
        assert_eq!(
            (maildrop.uid, maildrop.gid, maildrop.mode),
            (100, 103, 0o730)
        );
        assert_eq!(maildrop.kind, Kind::Dir);
        let postdrop = &tree["usr/sbin/postdrop"];
        assert_eq!(
            (postdrop.uid, postdrop.gid, postdrop.mode),
            (0, 103, 0o2755)
        );
        assert!(!tree.contains_key("usr/share/man/man1/postfix.1.gz"));
        assert_eq!(tree.len(), 7);
    }

    #[test]
    fn bad_lines_are_refused_with_their_position() {
        let mut tree = Tree::new();
        let err = |text: &str| {
            apply(&mut Tree::new(), text, Path::new("pf"), &accounts())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("\n$queue_directory:d:root:-\n"),
            "pf:2:1: expected name:type:owner:group:mode, found \"$queue_directory:d:root:-\""
        );
        assert_eq!(
            err("$nowhere/x:f:root:-:644\n"),
            "pf:1:1: unknown parameter $nowhere"
        );
        assert_eq!(
            err("/x:f:mail:-:644\n"),
            "pf:1:6: user mail is not in overlays/mail/etc/passwd"
        );
        assert_eq!(
            err("/x:f:root:$setgid_group:9z\n"),
            "pf:1:25: expected an octal mode, found \"9z\""
        );
        tree.insert("x".into(), Entry::root(Kind::Dir, 0o755));
        let error =
            apply(&mut tree, "/x:f:root:-:644\n", Path::new("pf"), &accounts()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "pf:1:1: /x is a directory in the packages"
        );
    }
}
