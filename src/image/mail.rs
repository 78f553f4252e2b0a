//! `letterbox mail-image`: the `letterbox-mail` OCI image (Postfix and Dovecot from Debian
//! trixie) for one architecture, as an OCI layout plus a lock file beside it.
//!
//! The packages come through the same cache and lock as the SD image's. `--variant=extract`
//! runs no maintainer scripts, so what they would have made comes from here instead: the
//! users and groups (overlays/mail), the merged-/usr links, the directories a container
//! needs, and Postfix's own owners and modes (its postfix-files, as `postfix
//! set-permissions` applies them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::oci::{self, add_directories, Entry, Kind, Layout, Tree};
use super::packages::{Arch, Cache, Lock, PackageSet};
use super::postfix_files;
use super::ImageError;

/// The image's name in index.json (and in containerd once imported).
pub const REFERENCE: &str = "letterbox-mail:latest";

/// Asked for by name: the mail servers, and what postfix-script runs (it is a shell script,
/// and the extract variant brings no shell or tools), and /etc/services.
const INCLUDE: &[&str] = &[
    "postfix",
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-lmtpd",
    // PLAIN and LOGIN for Postfix's SASL client: its login to a smarthost.
    "libsasl2-modules",
    "dash",
    "coreutils",
    "diffutils",
    "sed",
    "grep",
    "findutils",
    "mawk",
    "netbase",
];

/// Dependencies only maintainer scripts use (creating users, asking debconf questions,
/// making snake-oil certificates, registering services). The scripts never run, so these
/// and what only they pull in (perl, PAM's tools, shadow's) stay out of the image.
const SCRIPT_ONLY: &[&str] = &[
    "adduser",
    "debconf",
    "init-system-helpers",
    "openssl",
    "passwd",
    "procps",
    "sensible-utils",
    "ssl-cert",
    "ucf",
];

/// Left out of the layer: documentation and translations for people, not for the servers.
/// Each package's copyright file stays (its licence asks for it to travel with the binary).
const PRUNE: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/doc-base",
];

/// Files of overlays/mail laid over the packages, embedded so the binary builds the image
/// from anywhere.
const OVERLAYS: &[(&str, &str)] = &[
    ("etc/passwd", include_str!("../../overlays/mail/etc/passwd")),
    ("etc/group", include_str!("../../overlays/mail/etc/group")),
    (
        "etc/nsswitch.conf",
        include_str!("../../overlays/mail/etc/nsswitch.conf"),
    ),
    ("etc/hosts", include_str!("../../overlays/mail/etc/hosts")),
    (
        "etc/default/postfix",
        include_str!("../../overlays/mail/etc/default/postfix"),
    ),
    // A read-only root cannot grow a file mount point at run time.
    (
        "etc/postfix/main.cf",
        include_str!("../../overlays/mail/etc/postfix/main.cf"),
    ),
    (
        "etc/postfix/master.cf",
        include_str!("../../overlays/mail/etc/postfix/master.cf"),
    ),
    (
        "etc/resolv.conf",
        include_str!("../../overlays/mail/etc/resolv.conf"),
    ),
];

/// Mount points and scratch directories a container expects (mode).
const DIRECTORIES: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("var/tmp", 0o1777),
    ("root", 0o700),
    // Where the runtime specs (containers::spec) bind the TLS files and a box's home: a
    // read-only root cannot grow a mount point at run time.
    ("etc/letterbox/tls", 0o755),
    ("etc/letterbox/relay", 0o700),
    ("var/vmail", 0o755),
];

/// The environment the image's processes start with.
const ENV: &[&str] = &["PATH=/usr/sbin:/usr/bin:/sbin:/bin"];

pub struct MailImageOptions {
    pub arch: Arch,
    /// The OCI layout directory; the lock file is written beside it as `<output>.lock`.
    pub output: PathBuf,
    /// Download cache and unpacked packages (the project's .cache/).
    pub cache_dir: PathBuf,
    pub source_date_epoch: u64,
}

#[derive(Debug)]
pub struct MailImageSummary {
    pub layout: PathBuf,
    pub lock_file: PathBuf,
    pub arch: Arch,
    pub manifest: oci::Blob,
    pub layer: oci::Layer,
    pub packages: usize,
    pub image_packages: usize,
    pub entries: usize,
    pub downloaded: bool,
    pub elapsed: Duration,
}

impl std::fmt::Display for MailImageSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "image:      {} ({REFERENCE})", self.layout.display())?;
        writeln!(f, "manifest:   {}", self.manifest.digest)?;
        writeln!(
            f,
            "layer:      {:.1} MiB gzip, {} entries, diff_id {}",
            self.layer.blob.size as f64 / (1u64 << 20) as f64,
            self.entries,
            self.layer.diff_id
        )?;
        writeln!(
            f,
            "packages:   {} of {} resolved {} packages ({}), lock {}",
            self.image_packages,
            self.packages,
            self.arch,
            if self.downloaded {
                "downloaded"
            } else {
                "all from the cache"
            },
            self.lock_file.display()
        )?;
        write!(f, "time:       {:.1} s", self.elapsed.as_secs_f64())
    }
}

pub fn package_set(arch: Arch) -> PackageSet {
    PackageSet {
        arch,
        include: INCLUDE,
        lock_name: format!("mail-{arch}.lock"),
    }
}

pub fn build(opts: &MailImageOptions) -> Result<MailImageSummary, ImageError> {
    let started = Instant::now();
    // Modes in the layer are the packages' and this code's, never the caller's umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let cache = Cache {
        dir: opts.cache_dir.join("debs"),
        set: package_set(opts.arch),
    };
    let work_dir = opts.cache_dir.join(format!("mail-{}", opts.arch));
    std::fs::create_dir_all(&work_dir).map_err(|e| ImageError::io(&work_dir, e))?;
    let (lock, downloaded) = match cache.warm_lock() {
        Some(lock) => (lock, false),
        None => {
            let scratch = tempfile::Builder::new()
                .prefix("fetch-")
                .tempdir_in(&work_dir)
                .map_err(|e| ImageError::io(&work_dir, e))?;
            (cache.fetch(scratch.path())?, true)
        }
    };
    let names = cache.dependency_closure(&lock, INCLUDE, SCRIPT_ONLY)?;
    let unpacked = unpack(&cache, &lock, &names, &work_dir.join("unpacked"))?;
    let tree = assemble(&unpacked)?;

    // Written beside the output and renamed over it: a failed build leaves the last image.
    let partial = PathBuf::from(format!("{}.partial", opts.output.display()));
    let _ = std::fs::remove_dir_all(&partial);
    let layout = Layout::create(&partial)?;
    let layer = layout.write_layer(&tree, opts.source_date_epoch)?;
    let manifest = layout.finish(opts.arch, &layer, ENV, REFERENCE)?;
    let _ = std::fs::remove_dir_all(&opts.output);
    std::fs::rename(&partial, &opts.output).map_err(|e| ImageError::io(&opts.output, e))?;
    let lock_file = PathBuf::from(format!("{}.lock", opts.output.display()));
    let text = format!(
        "# letterbox-mail {arch}: {REFERENCE}\nmanifest {}\nlayer {} diff_id {}\n{}",
        manifest.digest,
        layer.blob.digest,
        layer.diff_id,
        lock.render(),
        arch = opts.arch,
    );
    std::fs::write(&lock_file, text).map_err(|e| ImageError::io(&lock_file, e))?;
    Ok(MailImageSummary {
        layout: opts.output.clone(),
        lock_file,
        arch: opts.arch,
        manifest,
        layer,
        packages: lock.packages.len(),
        image_packages: names.len(),
        entries: tree.len(),
        downloaded,
        elapsed: started.elapsed(),
    })
}

/// The lock file of a layout `make mail-image MAIL_ARCH=ARCH` built, for an SD image to
/// carry: the layout must be there, be for `arch`, and its index.json name the manifest the
/// lock pins.
pub fn built_lock(layout: &Path, arch: Arch) -> Result<String, ImageError> {
    let index_file = layout.join("index.json");
    let lock_file = PathBuf::from(format!("{}.lock", layout.display()));
    let (Ok(index), Ok(lock)) = (
        std::fs::read_to_string(&index_file),
        std::fs::read_to_string(&lock_file),
    ) else {
        return Err(ImageError::NoMailImage {
            layout: layout.to_path_buf(),
            arch,
        });
    };
    let header = format!("# letterbox-mail {arch}: {REFERENCE}\n");
    if !lock.starts_with(&header) {
        return Err(ImageError::Layout(format!(
            "{} is not the lock of the {arch} mail image: its first line is not {:?}",
            lock_file.display(),
            header.trim_end()
        )));
    }
    let manifest = built_manifest(&lock).unwrap_or_default();
    if manifest.is_empty() || !index.contains(&format!("\"{manifest}\"")) {
        return Err(ImageError::Layout(format!(
            "{} names no manifest {manifest:?} of {}: rebuild it (make mail-image MAIL_ARCH={arch})",
            index_file.display(),
            lock_file.display()
        )));
    }
    Ok(lock)
}

/// The manifest digest a mail image's lock file pins (its `manifest sha256:...` line).
pub fn built_manifest(lock: &str) -> Option<&str> {
    lock.lines().find_map(|l| l.strip_prefix("manifest "))
}

/// The image's packages unpacked into `dir`, reused while the lock and the package list
/// are the same.
fn unpack(cache: &Cache, lock: &Lock, names: &[String], dir: &Path) -> Result<PathBuf, ImageError> {
    let tree = dir.join("tree");
    let stamp = dir.join("lock");
    let key = format!("{}# unpacked: {}\n", lock.render(), names.join(","));
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) {
        return Ok(tree);
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&tree).map_err(|e| ImageError::io(&tree, e))?;
    for name in names {
        let package = lock
            .get(name)
            .ok_or_else(|| ImageError::MissingPackage(name.clone()))?;
        cache.unpack(package, &tree)?;
    }
    std::fs::write(&stamp, key).map_err(|e| ImageError::io(&stamp, e))?;
    Ok(tree)
}

fn pruned(path: &str) -> bool {
    PRUNE.iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }) && !is_copyright(path)
}

/// usr/share/doc/<package>/copyright, and the directories on the way to it.
fn is_copyright(path: &str) -> bool {
    match path.strip_prefix("usr/share/doc") {
        Some("") => true,
        Some(rest) => {
            let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
            matches!(parts.as_slice(), [_] | [_, "copyright"])
        }
        None => false,
    }
}

/// The layer's tree: the unpacked packages less documentation, with overlays/mail, the
/// merged-/usr links, the container's directories and Postfix's owners and modes.
fn assemble(unpacked: &Path) -> Result<Tree, ImageError> {
    let mut tree = oci::scan(unpacked, &|path| !pruned(path))?;
    // An empty documentation directory of a package without a copyright file is noise.
    let empty_docs: Vec<String> = tree
        .keys()
        .filter(|p| p.starts_with("usr/share/doc/") && !p.ends_with("/copyright"))
        .filter(|p| !tree.contains_key(&format!("{p}/copyright")))
        .cloned()
        .collect();
    for path in empty_docs {
        tree.remove(&path);
    }
    for (path, text) in OVERLAYS {
        if let Some((parent, _)) = path.rsplit_once('/') {
            add_directories(&mut tree, parent, 0o755);
        }
        tree.insert(
            path.to_string(),
            Entry::root(Kind::Bytes(text.as_bytes().to_vec()), 0o644),
        );
    }
    // What usrmerge's scripts make on a Debian system; lib64 holds amd64's ELF interpreter.
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if tree.contains_key(target) && !tree.contains_key(link) {
            tree.insert(
                link.to_string(),
                Entry::root(Kind::Symlink(target.into()), 0o777),
            );
        }
    }
    let users = postfix_files::Accounts::parse(
        include_str!("../../overlays/mail/etc/passwd"),
        include_str!("../../overlays/mail/etc/group"),
    )?;
    for (path, mode) in DIRECTORIES {
        add_directories(&mut tree, path, *mode);
    }
    let postfix_files = tree
        .get("etc/postfix/postfix-files")
        .and_then(|e| match &e.kind {
            Kind::File(path) => Some(path.clone()),
            _ => None,
        })
        .ok_or_else(|| ImageError::MissingPackage("postfix (etc/postfix/postfix-files)".into()))?;
    let text =
        std::fs::read_to_string(&postfix_files).map_err(|e| ImageError::io(&postfix_files, e))?;
    postfix_files::apply(&mut tree, &text, &postfix_files, &users)?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documentation_is_pruned_but_copyright_files_stay() {
        assert!(pruned("usr/share/man/man1/postconf.1.gz"));
        assert!(pruned("usr/share/doc/postfix/changelog.gz"));
        assert!(pruned("usr/share/doc/postfix/examples"));
        assert!(pruned("usr/share/locale"));
        assert!(!pruned("usr/share/doc/postfix/copyright"));
        assert!(!pruned("usr/share/doc/postfix"));
        assert!(!pruned("usr/share/doc"));
        assert!(!pruned("usr/share/localectl"));
        assert!(!pruned("usr/lib/postfix/sbin/smtpd"));
    }
}
