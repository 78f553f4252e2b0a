//! The letterbox container images (`letterbox mail-image`): the packages of one [`Recipe`]
//! from Debian trixie for one architecture, as an OCI layout plus a lock file beside it.
//! `letterbox-mail` (Postfix and Dovecot) is this file's recipe; `letterbox-webmail` is
//! [`super::webmail`]'s.
//!
//! The packages come through the same cache and lock as the SD image's. `--variant=extract`
//! runs no maintainer scripts, so what they would have made comes from here instead: the
//! users and groups (the recipe's overlays), the merged-/usr links, the directories a
//! container needs, and owners and modes (for the mail image, Postfix's postfix-files, as
//! `postfix set-permissions` applies them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::oci::{self, add_directories, Entry, Kind, Layout, Tree};
use super::packages::{Arch, Cache, Lock, PackageSet};
use super::postfix_files;
use super::ImageError;

/// What one image is made of.
pub struct Recipe {
    /// The image is `letterbox-<name>`; the name also keys its package lock and work
    /// directory in the cache.
    pub name: &'static str,
    /// The image's name in index.json (and in containerd once imported).
    pub reference: &'static str,
    /// Packages asked for by name; apt adds their dependencies.
    pub include: &'static [&'static str],
    /// Dependencies only maintainer scripts use: left out with what only they pull in.
    pub script_only: &'static [&'static str],
    /// Files laid over the packages (path, text; root's, 0644), embedded so the binary
    /// builds the image from anywhere.
    pub overlays: &'static [(&'static str, &'static str)],
    /// Mount points and scratch directories a container expects (mode).
    pub directories: &'static [(&'static str, u32)],
    /// What the maintainer scripts would have made beyond users and directories (owners
    /// and modes, enabled modules), applied to the tree last.
    pub maintainer_work: Option<MaintainerWork>,
}

/// A recipe's stand-in for its packages' maintainer scripts, run on the assembled tree.
pub type MaintainerWork = fn(&mut Tree) -> Result<(), ImageError>;

/// The mail image's name in index.json (and in containerd once imported).
pub const REFERENCE: &str = "letterbox-mail:latest";

pub const MAIL: Recipe = Recipe {
    name: "mail",
    reference: REFERENCE,
    // The mail servers, and what postfix-script runs (it is a shell script, and the extract
    // variant brings no shell or tools), and /etc/services.
    include: &[
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
    ],
    // Creating users, asking debconf questions, making snake-oil certificates, registering
    // services: the scripts never run, so these and what only they pull in (perl, PAM's
    // tools, shadow's) stay out of the image.
    script_only: &[
        "adduser",
        "debconf",
        "init-system-helpers",
        "openssl",
        "passwd",
        "procps",
        "sensible-utils",
        "ssl-cert",
        "ucf",
    ],
    overlays: &[
        ("etc/passwd", MAIL_PASSWD),
        ("etc/group", MAIL_GROUP),
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
    ],
    directories: &[
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
    ],
    maintainer_work: Some(postfix_permissions),
};

const MAIL_PASSWD: &str = include_str!("../../overlays/mail/etc/passwd");
const MAIL_GROUP: &str = include_str!("../../overlays/mail/etc/group");

/// Postfix's owners and modes, from the postfix-files its package ships.
fn postfix_permissions(tree: &mut Tree) -> Result<(), ImageError> {
    let users = postfix_files::Accounts::parse(MAIL_PASSWD, MAIL_GROUP)?;
    let postfix_files = tree
        .get("etc/postfix/postfix-files")
        .and_then(|e| match &e.kind {
            Kind::File(path) => Some(path.clone()),
            _ => None,
        })
        .ok_or_else(|| ImageError::MissingPackage("postfix (etc/postfix/postfix-files)".into()))?;
    let text =
        std::fs::read_to_string(&postfix_files).map_err(|e| ImageError::io(&postfix_files, e))?;
    postfix_files::apply(tree, &text, &postfix_files, &users)
}

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

/// The environment the image's processes start with.
const ENV: &[&str] = &["PATH=/usr/sbin:/usr/bin:/sbin:/bin"];

pub struct ImageOptions {
    pub recipe: &'static Recipe,
    pub arch: Arch,
    /// The OCI layout directory; the lock file is written beside it as `<output>.lock`.
    pub output: PathBuf,
    /// Download cache and unpacked packages (the project's .cache/).
    pub cache_dir: PathBuf,
    pub source_date_epoch: u64,
}

pub struct ImageSummary {
    pub reference: &'static str,
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

impl std::fmt::Display for ImageSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "image:      {} ({})",
            self.layout.display(),
            self.reference
        )?;
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

impl Recipe {
    fn package_set(&self, arch: Arch) -> PackageSet {
        PackageSet {
            arch,
            include: self.include,
            lock_name: format!("{}-{arch}.lock", self.name),
        }
    }

    /// The first line of an image's lock file: which image, for which architecture.
    fn lock_header(&self, arch: Arch) -> String {
        format!("# letterbox-{} {arch}: {}\n", self.name, self.reference)
    }
}

pub fn build(opts: &ImageOptions) -> Result<ImageSummary, ImageError> {
    let started = Instant::now();
    let recipe = opts.recipe;
    // Modes in the layer are the packages' and this code's, never the caller's umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let cache = Cache {
        dir: opts.cache_dir.join("debs"),
        set: recipe.package_set(opts.arch),
    };
    let work_dir = opts
        .cache_dir
        .join(format!("{}-{}", recipe.name, opts.arch));
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
    let names = cache.dependency_closure(&lock, recipe.include, recipe.script_only)?;
    let unpacked = unpack(&cache, &lock, &names, &work_dir.join("unpacked"))?;
    let tree = assemble(recipe, &unpacked)?;

    // Written beside the output and renamed over it: a failed build leaves the last image.
    let partial = PathBuf::from(format!("{}.partial", opts.output.display()));
    let _ = std::fs::remove_dir_all(&partial);
    let layout = Layout::create(&partial)?;
    let layer = layout.write_layer(&tree, opts.source_date_epoch)?;
    let manifest = layout.finish(opts.arch, &layer, ENV, recipe.reference)?;
    let _ = std::fs::remove_dir_all(&opts.output);
    std::fs::rename(&partial, &opts.output).map_err(|e| ImageError::io(&opts.output, e))?;
    let lock_file = PathBuf::from(format!("{}.lock", opts.output.display()));
    let text = format!(
        "{}manifest {}\nlayer {} diff_id {}\n{}",
        recipe.lock_header(opts.arch),
        manifest.digest,
        layer.blob.digest,
        layer.diff_id,
        lock.render(),
    );
    std::fs::write(&lock_file, text).map_err(|e| ImageError::io(&lock_file, e))?;
    Ok(ImageSummary {
        reference: recipe.reference,
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

/// The lock file of a layout of `recipe` that `make mail-image` (or `webmail-image`) built
/// for an SD image to carry: the layout must be there, be for `arch`, and its index.json
/// name the manifest the lock pins.
pub fn built_lock(recipe: &Recipe, layout: &Path, arch: Arch) -> Result<String, ImageError> {
    let index_file = layout.join("index.json");
    let lock_file = PathBuf::from(format!("{}.lock", layout.display()));
    let (Ok(index), Ok(lock)) = (
        std::fs::read_to_string(&index_file),
        std::fs::read_to_string(&lock_file),
    ) else {
        return Err(ImageError::NoContainerImage {
            name: recipe.name,
            layout: layout.to_path_buf(),
            arch,
        });
    };
    let header = recipe.lock_header(arch);
    if !lock.starts_with(&header) {
        return Err(ImageError::Layout(format!(
            "{} is not the lock of the {arch} {} image: its first line is not {:?}",
            lock_file.display(),
            recipe.name,
            header.trim_end()
        )));
    }
    let manifest = built_manifest(&lock).unwrap_or_default();
    if manifest.is_empty() || !index.contains(&format!("\"{manifest}\"")) {
        return Err(ImageError::Layout(format!(
            "{} names no manifest {manifest:?} of {}: rebuild it (make {}-image MAIL_ARCH={arch})",
            index_file.display(),
            lock_file.display(),
            recipe.name
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

/// The layer's tree: the unpacked packages less documentation, with the recipe's overlays,
/// the merged-/usr links, the container's directories and the recipe's maintainer work.
fn assemble(recipe: &Recipe, unpacked: &Path) -> Result<Tree, ImageError> {
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
    for (path, text) in recipe.overlays {
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
    for (path, mode) in recipe.directories {
        add_directories(&mut tree, path, *mode);
    }
    if let Some(maintainer_work) = recipe.maintainer_work {
        maintainer_work(&mut tree)?;
    }
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
