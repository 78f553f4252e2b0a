//! Kernel modules without modprobe: the index `depmod` writes (modules.dep, modules.alias,
//! modules.softdep), alias matching for coldplug, and loading with `finit_module`.
//!
//! Debian's trixie kernel ships its modules as `.ko.xz` and is built with
//! `CONFIG_MODULE_DECOMPRESS=y`, so the kernel decompresses them itself when asked with
//! `MODULE_INIT_COMPRESSED_FILE`; nothing is decompressed at build time.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// `MODULE_INIT_COMPRESSED_FILE` from <linux/module.h>; nix does not name it.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read module index {path}")]
    ReadIndex {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected \"path.ko: dependency.ko ...\"")]
    BadDepLine { path: PathBuf, line: usize },
    #[error("no module named {0} in modules.dep")]
    Unknown(String),
    #[error("cannot open module {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel refused module {path}")]
    Load { path: PathBuf, source: Errno },
}

/// What `depmod` knows about one kernel's modules, keyed by module name ("sdhci_iproc").
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Directory holding modules.dep; module paths are relative to it.
    pub dir: PathBuf,
    /// name -> (path relative to `dir`, dependencies by name, deepest last as depmod writes them).
    deps: BTreeMap<String, (String, Vec<String>)>,
    /// (glob pattern, module name), in file order.
    aliases: Vec<(String, String)>,
    /// name -> modules to load before it.
    softdeps: BTreeMap<String, Vec<String>>,
}

/// "kernel/drivers/mmc/host/sdhci-iproc.ko.xz" -> "sdhci_iproc".
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Reads the index `depmod` wrote into `dir` (…/lib/modules/VERSION).
    pub fn load(dir: &Path) -> Result<Self, ModuleError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| ModuleError::ReadIndex { path, source })
        };
        let mut index = ModuleIndex {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        let dep_path = dir.join("modules.dep");
        for (n, line) in read("modules.dep")?.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let (path, deps) = line.split_once(':').ok_or(ModuleError::BadDepLine {
                path: dep_path.clone(),
                line: n + 1,
            })?;
            let deps = deps.split_whitespace().map(module_name).collect();
            index
                .deps
                .insert(module_name(path), (path.to_string(), deps));
        }
        for line in read("modules.alias")?.lines() {
            if let Some(rest) = line.strip_prefix("alias ") {
                if let Some((pattern, module)) = rest.rsplit_once(' ') {
                    index
                        .aliases
                        .push((pattern.to_string(), module.to_string()));
                }
            }
        }
        // modules.softdep is optional: not every kernel has soft dependencies.
        if let Ok(text) = std::fs::read_to_string(dir.join("modules.softdep")) {
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if words.next() != Some("softdep") {
                    continue;
                }
                let Some(module) = words.next() else { continue };
                let mut pre = Vec::new();
                let mut in_pre = false;
                for word in words {
                    match word {
                        "pre:" => in_pre = true,
                        "post:" => in_pre = false,
                        w if in_pre => pre.push(w.to_string()),
                        _ => {}
                    }
                }
                index.softdeps.insert(module.replace('-', "_"), pre);
            }
        }
        Ok(index)
    }

    /// Module names whose alias pattern matches a device's modalias.
    pub fn matching(&self, modalias: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .aliases
            .iter()
            .filter(|(pattern, _)| glob_match(pattern.as_bytes(), modalias.as_bytes()))
            .map(|(_, module)| module.clone())
            .collect();
        found.dedup();
        found
    }

    /// A module name, or an alias ("crypto-crc32c", "fs-vfat") resolved to one.
    pub fn resolve(&self, name: &str) -> Option<String> {
        let underscored = name.replace('-', "_");
        if self.deps.contains_key(&underscored) {
            return Some(underscored);
        }
        self.aliases
            .iter()
            .find(|(pattern, _)| pattern == name)
            .map(|(_, module)| module.clone())
    }

    /// Everything to load for `name`, in load order (dependencies first, `name` last).
    pub fn load_order(&self, name: &str) -> Result<Vec<String>, ModuleError> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        self.visit(name, &mut order, &mut seen)?;
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        order: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> Result<(), ModuleError> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (_, deps) = self
            .deps
            .get(name)
            .ok_or_else(|| ModuleError::Unknown(name.to_string()))?;
        for soft in self.softdeps.get(name).into_iter().flatten() {
            // A soft dependency missing from this index (e.g. left out of the initramfs) is
            // not fatal: the module works without it, possibly slower.
            if let Some(module) = self.resolve(soft) {
                let _ = self.visit(&module, order, seen);
            }
        }
        // depmod lists the deepest dependency last: load from the end.
        for dep in deps.iter().rev() {
            self.visit(dep, order, seen)?;
        }
        order.push(name.to_string());
        Ok(())
    }

    /// Path of a module's file, relative to the index directory.
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.deps.get(name).map(|(path, _)| path.as_str())
    }
}

/// Loads modules into the running kernel, remembering what it already loaded and what
/// failed: coldplug passes repeat every 100 ms while early boot waits for the card, and a
/// failure is reported once, not at every pass.
#[derive(Debug, Default)]
pub struct Loader {
    loaded: BTreeSet<String>,
    failed: BTreeSet<String>,
}

impl Loader {
    /// Loads `name` and its dependencies. Returns the modules newly loaded; nothing (and no
    /// error) once `name` or a dependency has failed before.
    pub fn load(&mut self, index: &ModuleIndex, name: &str) -> Result<Vec<String>, ModuleError> {
        let mut new = Vec::new();
        for module in index.load_order(name)? {
            if self.loaded.contains(&module) {
                continue;
            }
            if self.failed.contains(&module) {
                return Ok(new);
            }
            let loaded = self.load_one(index, &module);
            match loaded {
                Ok(true) => new.push(module.clone()),
                Ok(false) => {}
                Err(e) => {
                    self.failed.insert(module);
                    return Err(e);
                }
            }
            self.loaded.insert(module);
        }
        Ok(new)
    }

    /// Forgets the failures, for a new module tree (the root filesystem's after the
    /// initramfs') in which they may load.
    pub fn retry_failed(&mut self) {
        self.failed.clear();
    }

    /// Loads one module; false when the kernel already had it.
    fn load_one(&self, index: &ModuleIndex, module: &str) -> Result<bool, ModuleError> {
        let rel = index
            .path_of(module)
            .ok_or_else(|| ModuleError::Unknown(module.to_string()))?;
        let path = index.dir.join(rel);
        let file = File::open(&path).map_err(|source| ModuleError::Open {
            path: path.clone(),
            source,
        })?;
        let flags = if rel.ends_with(".ko") {
            ModuleInitFlags::empty()
        } else {
            ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
        };
        match finit_module(&file, c"", flags) {
            Ok(()) => Ok(true),
            // Already in the kernel (loaded before us, or by a racing uevent): fine.
            Err(Errno::EEXIST) => Ok(false),
            Err(source) => Err(ModuleError::Load { path, source }),
        }
    }
}

/// fnmatch(3)-style matching as modules.alias needs it: `*`, `?` and `[...]` classes.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against a `[...]` class at the start of `pattern`; returns whether it
/// matched and the class's length, or None for an unterminated class.
fn class_match(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            if pattern[i] <= c && c <= pattern[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if pattern[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_globs_match_like_fnmatch() {
        assert!(glob_match(
            b"of:N*T*Cbrcm,bcm2835-sdhciC*",
            b"of:NmmcT(null)Cbrcm,bcm2835-sdhciCbrcm,sdhci"
        ));
        assert!(glob_match(
            b"usb:v*p*d*dc*dsc*dp*ic02isc06ip00in*",
            b"usb:v46F4p0001d0000dc00dsc00dp00ic02isc06ip00in00"
        ));
        assert!(!glob_match(
            b"usb:v*p*d*dc*dsc*dp*ic02isc06ip00in*",
            b"usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(glob_match(
            b"pci:v00008086d*sv*",
            b"pci:v00008086d00001234sv00"
        ));
        assert!(glob_match(b"usb:v0B95p172[0-9]d*", b"usb:v0B95p1725d0001"));
        assert!(!glob_match(
            b"usb:v0B95p172[!0-9]d*",
            b"usb:v0B95p1725d0001"
        ));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"abc", b"abcd"));
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
             kernel/lib/crc16.ko.xz:\nkernel/fs/mbcache.ko.xz:\nkernel/fs/jbd2/jbd2.ko.xz:\n\
             kernel/crypto/crc32c_generic.ko.xz:\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("modules.alias"),
            "# comment\nalias crypto-crc32c crc32c_generic\nalias fs-ext4 ext4\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("modules.softdep"),
            "softdep ext4 pre: crypto-crc32c\n",
        )
        .unwrap();
        let index = ModuleIndex::load(dir.path()).unwrap();
        assert_eq!(
            index.load_order("ext4").unwrap(),
            ["crc32c_generic", "jbd2", "mbcache", "crc16", "ext4"]
        );
        assert_eq!(index.resolve("fs-ext4").as_deref(), Some("ext4"));
        assert!(matches!(
            index.load_order("nope"),
            Err(ModuleError::Unknown(_))
        ));
    }

    #[test]
    fn a_module_that_failed_is_not_tried_again_until_told() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), "kernel/bogus.ko:\n").unwrap();
        std::fs::write(dir.path().join("modules.alias"), "").unwrap();
        // Not a module: the kernel refuses it (or refuses us the right to load modules).
        std::fs::create_dir(dir.path().join("kernel")).unwrap();
        std::fs::write(dir.path().join("kernel/bogus.ko"), "not an ELF file").unwrap();
        let index = ModuleIndex::load(dir.path()).unwrap();
        let mut loader = Loader::default();
        assert!(matches!(
            loader.load(&index, "bogus"),
            Err(ModuleError::Load { .. })
        ));
        // Without the file a new attempt would fail to open it: so none is made.
        std::fs::remove_file(dir.path().join("kernel/bogus.ko")).unwrap();
        assert_eq!(loader.load(&index, "bogus").unwrap(), Vec::<String>::new());
        loader.retry_failed();
        assert!(matches!(
            loader.load(&index, "bogus"),
            Err(ModuleError::Open { .. })
        ));
    }
}
