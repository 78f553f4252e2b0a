//! The `letterbox-webmail` image's recipe: Roundcube from Debian trixie with SQLite, run by
//! PHP-FPM behind nginx, in two containers of one image (`letterbox mail-image --image
//! webmail`). The agent renders their configuration into /etc/letterbox/webmail; the image
//! holds no secret (Roundcube's des_key is made on the device, in its data directory).

use super::mail::Recipe;
use super::oci::{add_directories, Entry, Kind, Tree};
use super::ImageError;

/// The PHP branch trixie's php8.4-* packages install (its paths name it).
const PHP: &str = "8.4";

pub const REFERENCE: &str = "letterbox-webmail:latest";

pub const WEBMAIL: Recipe = Recipe {
    name: "webmail",
    reference: REFERENCE,
    include: &[
        "roundcube-core",
        "roundcube-sqlite3",
        // Named, so apt satisfies php's "libapache2-mod-php | php-fpm | php-cgi" with it.
        "php8.4-fpm",
        "nginx",
        "dash",
    ],
    script_only: &[
        "adduser",
        "dbconfig-common",
        "dbconfig-sqlite3",
        "debconf",
        // dpkg-maintscript-helper, for roundcube-core's scripts.
        "dpkg",
        "init-system-helpers",
        // nginx's init script.
        "iproute2",
        "openssl",
        "passwd",
        "procps",
        // fuser, for php-common's session cleanup job (Roundcube keeps sessions in its DB).
        "psmisc",
        "sensible-utils",
        // php8.4-fpm's tmpfiles snippet; the container has no init system.
        "systemd",
        "ucf",
    ],
    overlays: &[
        ("etc/passwd", include_str!("../../overlays/webmail/etc/passwd")),
        ("etc/group", include_str!("../../overlays/webmail/etc/group")),
        (
            "etc/nsswitch.conf",
            include_str!("../../overlays/webmail/etc/nsswitch.conf"),
        ),
        ("etc/hosts", include_str!("../../overlays/webmail/etc/hosts")),
        (
            "etc/roundcube/config.inc.php",
            include_str!("../../overlays/webmail/etc/roundcube/config.inc.php"),
        ),
        (
            "usr/share/roundcube/plugins/letterbox_login/letterbox_login.php",
            include_str!(
                "../../overlays/webmail/usr/share/roundcube/plugins/letterbox_login/letterbox_login.php"
            ),
        ),
    ],
    directories: &[
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("root", 0o700),
        // The runtime specs' mount points: a read-only root cannot grow one at run time.
        ("etc/letterbox/tls", 0o755),
        ("etc/letterbox/webmail", 0o755),
        ("var/lib/letterbox-webmail", 0o700),
    ],
    maintainer_work: Some(enable_php_and_plugin),
};

/// What php8.4-*'s and roundcube-core's scripts would have done: each SAPI's php.ini from
/// the production template, every installed PHP module enabled for FPM and CLI (phpenmod's
/// conf.d links, by each module's priority), and our plugin linked where Roundcube looks
/// for plugins (INSTALL_PATH is /var/lib/roundcube, whose plugins/ links to
/// /usr/share/roundcube/plugins/NAME).
fn enable_php_and_plugin(tree: &mut Tree) -> Result<(), ImageError> {
    let etc = format!("etc/php/{PHP}");
    for (sapi, template) in [
        ("fpm", "php.ini-production"),
        ("cli", "php.ini-production.cli"),
    ] {
        let template = format!("usr/lib/php/{PHP}/{template}");
        let entry = tree
            .get(&template)
            .cloned()
            .ok_or_else(|| ImageError::MissingPackage(format!("php{PHP}-common ({template})")))?;
        add_directories(tree, &format!("{etc}/{sapi}/conf.d"), 0o755);
        tree.insert(format!("{etc}/{sapi}/php.ini"), entry);
    }
    let modules: Vec<(String, Entry)> = tree
        .iter()
        .filter(|(path, _)| {
            path.strip_prefix(&format!("usr/share/php{PHP}-"))
                .is_some_and(|rest| rest.split('/').count() == 3 && rest.ends_with(".ini"))
        })
        .map(|(path, entry)| (path.clone(), entry.clone()))
        .collect();
    if modules.is_empty() {
        return Err(ImageError::MissingPackage(format!(
            "php{PHP}-common (usr/share/php{PHP}-*/*/*.ini)"
        )));
    }
    add_directories(tree, &format!("{etc}/mods-available"), 0o755);
    for (path, entry) in modules {
        let Kind::File(file) = &entry.kind else {
            return Err(ImageError::Layout(format!("{path} is not a regular file")));
        };
        let text = std::fs::read_to_string(file).map_err(|e| ImageError::io(file, e))?;
        let priority = module_priority(&text).ok_or_else(|| {
            ImageError::Layout(format!("{path}: expected a \"; priority=NN\" line"))
        })?;
        let name = path.rsplit('/').next().expect("a path has a last part");
        let available = format!("{etc}/mods-available/{name}");
        for sapi in ["fpm", "cli"] {
            tree.insert(
                format!("{etc}/{sapi}/conf.d/{priority}-{name}"),
                Entry::root(Kind::Symlink(format!("/{available}").into()), 0o777),
            );
        }
        tree.insert(available, entry);
    }
    let plugin = crate::webmail::LOGIN_PLUGIN;
    tree.insert(
        format!("var/lib/roundcube/plugins/{plugin}"),
        Entry::root(
            Kind::Symlink(format!("/usr/share/roundcube/plugins/{plugin}").into()),
            0o777,
        ),
    );
    Ok(())
}

/// The `; priority=NN` a module's ini file gives its conf.d link.
fn module_priority(ini: &str) -> Option<&str> {
    ini.lines()
        .find_map(|l| l.strip_prefix("; priority="))
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modules_priority_comes_from_its_ini_file() {
        assert_eq!(
            module_priority(
                "; configuration for php sqlite3 module\n; priority=20\nextension=pdo_sqlite.so\n"
            ),
            Some("20")
        );
        assert_eq!(module_priority("extension=intl.so\n"), None);
        assert_eq!(module_priority("; priority=high\n"), None);
    }
}
