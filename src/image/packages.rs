//! Debian packages for the target: fetched by name with `mmdebstrap --variant=extract`
//! (apt resolves dependencies; nothing runs under emulation), kept in a download cache,
//! pinned in a lock file, and unpacked with `dpkg-deb`.
//!
//! A warm build (every package of the lock file in the cache, same package list) does not
//! touch the network at all: the lock file says exactly which .deb files to unpack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run, ImageError};

pub const MIRROR: &str = "http://deb.debian.org/debian";
pub const SUITE: &str = "trixie";
pub const COMPONENTS: &str = "main,non-free-firmware";
/// What the image is made of: the kernel (with modules and device trees), the Pi firmware,
/// the container runtime the mail services will run under, and e2fsck for the data
/// partition at boot.
pub const INCLUDE: &[&str] = &[
    "linux-image-arm64",
    "raspi-firmware",
    "containerd",
    "runc",
    "e2fsprogs",
];
/// The packages whose files (with their dependencies) make up the root filesystem's userland.
pub const USERLAND_ROOTS: &[&str] = &["containerd", "runc", "e2fsprogs"];

/// A Debian architecture (also the OCI one: both use Go's names for these two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The architecture this program runs on, if it is one Debian packages are fetched for.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Packages resolved, downloaded and locked together: one lock file in the cache each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSet {
    pub arch: Arch,
    /// Asked for by name; apt adds their dependencies.
    pub include: &'static [&'static str],
    /// The lock file's name in the cache directory.
    pub lock_name: String,
}

impl PackageSet {
    /// The SD-card image's packages.
    pub fn sd_image() -> PackageSet {
        PackageSet {
            arch: Arch::Arm64,
            include: INCLUDE,
            lock_name: "packages.lock".into(),
        }
    }

    fn lock_header(&self) -> String {
        format!(
            "# letterbox package lock: {MIRROR} {SUITE} {COMPONENTS} {}\n# include: {}\n",
            self.arch,
            self.include.join(",")
        )
    }
}

/// One pinned package: "name version arch sha256 file".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// Mirror, suite, architecture and package list: a lock for other ones is not reused.
    header: String,
    pub packages: Vec<Locked>,
}

impl Lock {
    pub fn render(&self) -> String {
        let mut out = self.header.clone();
        for p in &self.packages {
            out.push_str(&format!(
                "{} {} {} {} {}\n",
                p.name, p.version, p.arch, p.sha256, p.file
            ));
        }
        out
    }

    /// A lock file for the same mirror, suite, architecture and package list, or None.
    pub fn parse(set: &PackageSet, text: &str) -> Option<Lock> {
        let header = set.lock_header();
        let rest = text.strip_prefix(&header)?;
        let mut packages = Vec::new();
        for line in rest.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let [name, version, arch, sha256, file] = f[..] else {
                return None;
            };
            packages.push(Locked {
                name: name.into(),
                version: version.into(),
                arch: arch.into(),
                sha256: sha256.into(),
                file: file.into(),
            });
        }
        Some(Lock { header, packages })
    }

    pub fn get(&self, name: &str) -> Option<&Locked> {
        self.packages.iter().find(|p| p.name == name)
    }
}

/// The package cache: `.cache/debs/*.deb` (shared by every set) and one lock file per set.
pub struct Cache {
    pub dir: PathBuf,
    pub set: PackageSet,
}

impl Cache {
    fn lock_path(&self) -> PathBuf {
        self.dir.join(&self.set.lock_name)
    }

    /// The lock whose files are all present and intact in the cache, if any.
    pub fn warm_lock(&self) -> Option<Lock> {
        let lock = Lock::parse(&self.set, &std::fs::read_to_string(self.lock_path()).ok()?)?;
        if self.set.include.iter().any(|name| lock.get(name).is_none()) {
            return None;
        }
        let files: Vec<PathBuf> = lock
            .packages
            .iter()
            .map(|p| self.dir.join(&p.file))
            .collect();
        if files.iter().any(|f| !f.is_file()) {
            return None;
        }
        let sums = sha256_files(&files).ok()?;
        lock.packages
            .iter()
            .zip(sums)
            .all(|(p, sum)| p.sha256 == sum)
            .then_some(lock)
    }

    /// Resolves and downloads the packages with mmdebstrap into the cache; writes the lock.
    pub fn fetch(&self, scratch: &Path) -> Result<Lock, ImageError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| ImageError::io(&self.dir, e))?;
        let target = scratch.join("mmdebstrap");
        let _ = std::fs::remove_dir_all(&target);
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(["--variant=extract", "--quiet"])
            .arg(format!("--arch={}", self.set.arch))
            .arg(format!("--components={}", COMPONENTS.replace(',', " ")))
            .arg(format!("--include={}", self.set.include.join(",")))
            .arg("--skip=cleanup/apt/cache")
            // Seed apt's archive with the cache (this architecture's files) so only new or
            // changed packages download.
            .arg(format!(
                "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives && find '{}' -maxdepth 1 \\( -name '*_{}.deb' -o -name '*_all.deb' \\) -exec cp -t \"$1\"/var/cache/apt/archives {{}} +",
                absolute(&self.dir).display(),
                self.set.arch
            ))
            // The archive also holds every seeded file, old versions included: record the
            // .deb files apt resolved for this run, which mmdebstrap hands the extract hook.
            .arg(format!(
                "--extract-hook=printf '%s\\n' $MMDEBSTRAP_ESSENTIAL > '{}'",
                absolute(&scratch.join("resolved-debs")).display()
            ))
            .arg(SUITE)
            .arg(&target)
            .arg(MIRROR);
        run(
            &mut cmd,
            "mmdebstrap (resolve and download the Debian packages)",
        )?;
        let archives = target.join("var/cache/apt/archives");
        let resolved_list = scratch.join("resolved-debs");
        let resolved = std::fs::read_to_string(&resolved_list)
            .map_err(|e| ImageError::io(&resolved_list, e))?;
        let files = resolved_files(&resolved);
        if files.is_empty() {
            return Err(ImageError::Layout(format!(
                "mmdebstrap's extract hook listed no packages in {}",
                resolved_list.display()
            )));
        }
        let debs: Vec<PathBuf> = files.iter().map(|f| archives.join(f)).collect();
        // apt verified the copies in archives/ against the Release file's hashes: they win
        // over a cached file with the same name (which may be truncated or corrupt).
        let sums = sha256_files(&debs)?;
        let mut packages = Vec::new();
        for ((file, deb), sha256) in files.into_iter().zip(&debs).zip(sums) {
            let cached = self.dir.join(&file);
            let cached_sum = cached
                .is_file()
                .then(|| sha256_files(std::slice::from_ref(&cached)).ok())
                .flatten()
                .and_then(|s| s.into_iter().next());
            if cached_sum.as_deref() != Some(sha256.as_str()) {
                // Never a partly copied file under a cached name, even after a crash.
                crate::atomic_file::copy(deb, &cached).map_err(|e| ImageError::io(&cached, e))?;
            }
            let fields = deb_fields(&cached, &["Package", "Version", "Architecture"])?;
            packages.push(Locked {
                name: fields[0].clone(),
                version: fields[1].clone(),
                arch: fields[2].clone(),
                sha256,
                file,
            });
        }
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = packages.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(ImageError::Layout(format!(
                "apt resolved two versions of {}: {} and {}",
                pair[0].name, pair[0].file, pair[1].file
            )));
        }
        let lock = Lock {
            header: self.set.lock_header(),
            packages,
        };
        std::fs::write(self.lock_path(), lock.render())
            .map_err(|e| ImageError::io(&self.lock_path(), e))?;
        let _ = std::fs::remove_dir_all(&target);
        Ok(lock)
    }

    /// Unpacks one locked package into `dest` (as `dpkg-deb -x`: files only, no scripts).
    pub fn unpack(&self, package: &Locked, dest: &Path) -> Result<(), ImageError> {
        run(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(self.dir.join(&package.file))
                .arg(dest),
            &format!("dpkg-deb -x {}", package.file),
        )
    }

    /// The names of `roots` and everything they depend on (Depends, Pre-Depends), within the
    /// locked set, except `left_out` and what only they pull in. Version constraints were
    /// already satisfied by apt.
    pub fn dependency_closure(
        &self,
        lock: &Lock,
        roots: &[&str],
        left_out: &[&str],
    ) -> Result<Vec<String>, ImageError> {
        let mut depends: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for p in &lock.packages {
            let fields = deb_fields(&self.dir.join(&p.file), &["Depends", "Pre-Depends"])?;
            let names = fields
                .iter()
                .flat_map(|f| f.split(','))
                .flat_map(|alternatives| {
                    // The first alternative that is in the set is the one apt chose.
                    alternatives
                        .split('|')
                        .map(|a| {
                            a.split_whitespace()
                                .next()
                                .unwrap_or("")
                                .split(':')
                                .next()
                                .unwrap_or("")
                                .to_string()
                        })
                        .find(|n| lock.get(n).is_some())
                })
                .collect();
            depends.insert(&p.name, names);
        }
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
        while let Some(name) = todo.pop() {
            if !left_out.contains(&name.as_str()) && seen.insert(name.clone()) {
                todo.extend(depends.get(name.as_str()).into_iter().flatten().cloned());
            }
        }
        Ok(seen.into_iter().collect())
    }
}

/// The file names of the .deb files apt resolved, from the extract hook's list of
/// `/var/cache/apt/archives/NAME.deb` paths (one version per package: apt's choice).
fn resolved_files(list: &str) -> Vec<String> {
    let mut files: Vec<String> = list
        .split_whitespace()
        .filter_map(|path| path.rsplit('/').next())
        .filter(|file| file.ends_with(".deb"))
        .map(str::to_string)
        .collect();
    files.sort();
    files.dedup();
    files
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Control fields of a .deb, empty when absent.
fn deb_fields(deb: &Path, names: &[&str]) -> Result<Vec<String>, ImageError> {
    let out = super::output(
        Command::new("dpkg-deb")
            .arg("--show")
            .arg(format!(
                "--showformat={}",
                names
                    .iter()
                    .map(|n| format!("${{{n}}}\\n"))
                    .collect::<String>()
            ))
            .arg(deb),
        &format!("dpkg-deb --show {}", deb.display()),
    )?;
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.resize(names.len(), String::new());
    Ok(lines)
}

/// The SHA-256 digests of `files`, in lowercase hex (as in the lock file).
fn sha256_files(files: &[PathBuf]) -> Result<Vec<String>, ImageError> {
    files.iter().map(|f| sha256_file(f)).collect()
}

fn sha256_file(path: &Path) -> Result<String, ImageError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::io(path, e)),
        }
    }
    Ok(data_encoding::HEXLOWER.encode(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_round_trips_and_rejects_other_inputs() {
        let set = PackageSet::sd_image();
        let lock = Lock {
            header: set.lock_header(),
            packages: vec![Locked {
                name: "runc".into(),
                version: "1.1.15+ds1-2+b4".into(),
                arch: "arm64".into(),
                sha256: "ab".repeat(32),
                file: "runc_1.1.15+ds1-2+b4_arm64.deb".into(),
            }],
        };
        assert_eq!(Lock::parse(&set, &lock.render()), Some(lock.clone()));
        assert_eq!(Lock::parse(&set, "# other header\n"), None);
        let other_arch = PackageSet {
            arch: Arch::Amd64,
            ..set
        };
        assert_eq!(Lock::parse(&other_arch, &lock.render()), None);
    }

    #[test]
    fn only_the_versions_apt_resolved_are_locked_when_older_ones_are_cached() {
        // The archive was seeded with two libc6 versions and two kernels; apt chose the new ones
        // and mmdebstrap handed only those to the extract hook.
        let hook_list =
            "/var/cache/apt/archives/linux-image-6.12.48+deb13-arm64_6.12.48-1_arm64.deb \
                         /var/cache/apt/archives/libc6_2.41-12_arm64.deb\n";
        assert_eq!(
            resolved_files(hook_list),
            [
                "libc6_2.41-12_arm64.deb",
                "linux-image-6.12.48+deb13-arm64_6.12.48-1_arm64.deb"
            ]
        );
    }

    #[test]
    fn an_interrupted_copy_leaves_no_cached_file_and_a_corrupt_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let verified = dir.path().join("archive.deb");
        std::fs::write(&verified, "the verified package").unwrap();
        let cached = dir.path().join("runc_1_arm64.deb");
        std::fs::write(&cached, "trunc").unwrap();
        crate::atomic_file::copy(&verified, &cached).unwrap();
        assert_eq!(std::fs::read(&cached).unwrap(), b"the verified package");
        assert!(!dir.path().join("runc_1_arm64.deb.partial").exists());
        let missing = dir.path().join("missing.deb");
        assert!(crate::atomic_file::copy(&missing, &dir.path().join("other.deb")).is_err());
        assert!(!dir.path().join("other.deb").exists());
        // Nothing else either: no temporary file is left beside the cached ones.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["archive.deb", "runc_1_arm64.deb"]);
    }

    #[test]
    fn sha256_of_files_is_lowercase_hex_and_a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        let abc = dir.path().join("abc");
        std::fs::write(&empty, "").unwrap();
        std::fs::write(&abc, "abc").unwrap();
        assert_eq!(
            sha256_files(&[empty, abc.clone()]).unwrap(),
            [
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            ]
        );
        assert!(sha256_files(&[abc, dir.path().join("missing")]).is_err());
    }
}
