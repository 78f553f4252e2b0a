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
/// and the container runtime the mail services will run under.
pub const INCLUDE: &[&str] = &["linux-image-arm64", "raspi-firmware", "containerd", "runc"];
/// The packages whose files (with their dependencies) make up the root filesystem's userland.
pub const USERLAND_ROOTS: &[&str] = &["containerd", "runc"];

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
    pub packages: Vec<Locked>,
}

impl Lock {
    fn header() -> String {
        format!(
            "# letterbox package lock: {MIRROR} {SUITE} {COMPONENTS} arm64\n# include: {}\n",
            INCLUDE.join(",")
        )
    }

    pub fn render(&self) -> String {
        let mut out = Self::header();
        for p in &self.packages {
            out.push_str(&format!(
                "{} {} {} {} {}\n",
                p.name, p.version, p.arch, p.sha256, p.file
            ));
        }
        out
    }

    /// A lock file for the same mirror, suite and package list, or None.
    pub fn parse(text: &str) -> Option<Lock> {
        let rest = text.strip_prefix(&Self::header())?;
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
        Some(Lock { packages })
    }

    pub fn get(&self, name: &str) -> Option<&Locked> {
        self.packages.iter().find(|p| p.name == name)
    }
}

/// The package cache: `.cache/debs/*.deb` and `.cache/debs/packages.lock`.
pub struct Cache {
    pub dir: PathBuf,
}

impl Cache {
    fn lock_path(&self) -> PathBuf {
        self.dir.join("packages.lock")
    }

    /// The lock whose files are all present and intact in the cache, if any.
    pub fn warm_lock(&self) -> Option<Lock> {
        let lock = Lock::parse(&std::fs::read_to_string(self.lock_path()).ok()?)?;
        if INCLUDE.iter().any(|name| lock.get(name).is_none()) {
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
        cmd.args(["--variant=extract", "--arch=arm64", "--quiet"])
            .arg(format!("--components={}", COMPONENTS.replace(',', " ")))
            .arg(format!("--include={}", INCLUDE.join(",")))
            .arg("--skip=download/empty")
            .arg("--skip=cleanup/apt/cache")
            // Seed apt's archive with the cache so only new or changed packages download.
            .arg(format!(
                "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives && find '{}' -maxdepth 1 -name '*.deb' -exec cp -t \"$1\"/var/cache/apt/archives {{}} +",
                absolute(&self.dir).display()
            ))
            .arg(SUITE)
            .arg(&target)
            .arg(MIRROR);
        run(
            &mut cmd,
            "mmdebstrap (resolve and download the Debian packages)",
        )?;
        let archives = target.join("var/cache/apt/archives");
        let mut debs: Vec<PathBuf> = std::fs::read_dir(&archives)
            .map_err(|e| ImageError::io(&archives, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        debs.sort();
        let mut packages = Vec::new();
        for deb in &debs {
            let file = deb
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let cached = self.dir.join(&file);
            if !cached.exists() {
                std::fs::copy(deb, &cached).map_err(|e| ImageError::io(&cached, e))?;
            }
            let fields = deb_fields(&cached, &["Package", "Version", "Architecture"])?;
            packages.push(Locked {
                name: fields[0].clone(),
                version: fields[1].clone(),
                arch: fields[2].clone(),
                sha256: String::new(),
                file,
            });
        }
        let files: Vec<PathBuf> = packages.iter().map(|p| self.dir.join(&p.file)).collect();
        for (p, sum) in packages.iter_mut().zip(sha256_files(&files)?) {
            p.sha256 = sum;
        }
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        let lock = Lock { packages };
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
    /// locked set. Version constraints were already satisfied by apt.
    pub fn dependency_closure(
        &self,
        lock: &Lock,
        roots: &[&str],
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
            if seen.insert(name.clone()) {
                todo.extend(depends.get(name.as_str()).into_iter().flatten().cloned());
            }
        }
        Ok(seen.into_iter().collect())
    }
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

fn sha256_files(files: &[PathBuf]) -> Result<Vec<String>, ImageError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let out = super::output(Command::new("sha256sum").args(files), "sha256sum")?;
    Ok(out
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_round_trips_and_rejects_other_inputs() {
        let lock = Lock {
            packages: vec![Locked {
                name: "runc".into(),
                version: "1.1.15+ds1-2+b4".into(),
                arch: "arm64".into(),
                sha256: "ab".repeat(32),
                file: "runc_1.1.15+ds1-2+b4_arm64.deb".into(),
            }],
        };
        assert_eq!(Lock::parse(&lock.render()), Some(lock.clone()));
        assert_eq!(Lock::parse("# other header\n"), None);
    }
}
