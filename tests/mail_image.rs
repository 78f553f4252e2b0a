//! The letterbox-mail OCI image, built for amd64 (and arm64, the SD image's) from Debian trixie: a valid OCI layout,
//! byte-reproducible, and its unpacked layer runs trixie's Postfix and Dovecot on this
//! kernel (never the build host's Debian 12 packages).
//!
//! Builds once per run of this binary (about a minute with a warm package cache in
//! .cache/, which `make mail-image` and `make image` share), through the real CLI.
//!
//! The letterbox-webmail image (Roundcube, PHP-FPM, nginx; `mail-image --image webmail`) is
//! built the same way and checked the same way, plus what its containers need in it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::mail_image::{
    blob, build_image, build_into, built, chroot, the_layer, the_manifest, the_manifest_for,
    unpack, unpacked_rootfs, EPOCH,
};
use oci_spec::image::{Arch, ImageConfiguration, MediaType, Os};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
    )
}

#[test]
fn layout_is_a_valid_oci_image_of_one_amd64_layer() {
    let test = "layout_is_a_valid_oci_image_of_one_amd64_layer";
    let Some(built) = built(test) else { return };
    let layout = &built.layout;
    assert_eq!(
        std::fs::read_to_string(layout.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    // Every blob is named by its own digest.
    let mut blobs = Vec::new();
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert_eq!(
            sha256(&std::fs::read(entry.path()).unwrap()),
            format!("sha256:{name}")
        );
        blobs.push(name);
    }
    assert_eq!(blobs.len(), 3, "config, layer and manifest: {blobs:?}");

    let (manifest_digest, manifest) = the_manifest(layout);
    assert_eq!(
        built.stdout.trim(),
        manifest_digest,
        "the CLI prints the manifest digest"
    );
    let lock = std::fs::read_to_string(format!("{}.lock", layout.display())).unwrap();
    assert!(
        lock.contains(&format!("\nmanifest {manifest_digest}\n")),
        "{lock}"
    );
    assert!(
        lock.lines().any(|l| l.starts_with("postfix 3.10.")),
        "{lock}"
    );

    assert_eq!(manifest.media_type(), &Some(MediaType::ImageManifest));
    let config_descriptor = manifest.config();
    assert_eq!(config_descriptor.media_type(), &MediaType::ImageConfig);
    let config_bytes = blob(layout, config_descriptor.digest().as_ref());
    assert_eq!(config_bytes.len() as u64, config_descriptor.size());
    let config = ImageConfiguration::from_reader(config_bytes.as_slice()).unwrap();
    assert_eq!(config.architecture(), &Arch::Amd64);
    assert_eq!(config.os(), &Os::Linux);

    let [layer_descriptor] = manifest.layers().as_slice() else {
        panic!("one layer: {:?}", manifest.layers());
    };
    assert_eq!(layer_descriptor.media_type(), &MediaType::ImageLayerGzip);
    let layer = blob(layout, layer_descriptor.digest().as_ref());
    assert_eq!(layer.len() as u64, layer_descriptor.size());
    let mut tar = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(layer.as_slice()),
        &mut tar,
    )
    .unwrap();
    assert_eq!(config.rootfs().diff_ids(), &[sha256(&tar)]);
    eprintln!(
        "layer: {:.1} MiB gzip, {:.1} MiB tar",
        layer.len() as f64 / 1048576.0,
        tar.len() as f64 / 1048576.0
    );

    // Entries in path order, every one stamped with SOURCE_DATE_EPOCH.
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut paths = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.header().mtime().unwrap(), EPOCH);
        paths.push(entry.path().unwrap().to_string_lossy().into_owned());
    }
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    for expected in [
        "usr/sbin/postfix",
        "usr/sbin/dovecot",
        "usr/bin/dash",
        "etc/passwd",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} is in the layer"
        );
    }
    assert!(
        !paths.iter().any(|p| p.starts_with("usr/share/man/")),
        "no manual pages"
    );
}

#[test]
fn two_builds_give_byte_identical_layouts() {
    let test = "two_builds_give_byte_identical_layouts";
    let Some(built) = built(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("again");
    // Another umask (and time zone) than the first build's.
    let out = build_into(&again, "077");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_byte_identical(&built.layout, &again);
}

/// Two layouts hold the same files with the same bytes, and so do their lock files.
fn assert_byte_identical(first: &Path, again: &Path) {
    let files = |root: &Path| {
        let mut files = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    todo.push(path);
                } else {
                    files.push(path.strip_prefix(root).unwrap().to_path_buf());
                }
            }
        }
        files.sort();
        files
    };
    let listed = files(first);
    assert_eq!(listed, files(again));
    assert_eq!(
        listed.len(),
        5,
        "oci-layout, index.json, three blobs: {listed:?}"
    );
    for file in &listed {
        assert!(
            std::fs::read(first.join(file)).unwrap() == std::fs::read(again.join(file)).unwrap(),
            "{} differs between two builds",
            file.display()
        );
    }
    let lock = |layout: &Path| std::fs::read(format!("{}.lock", layout.display())).unwrap();
    assert_eq!(lock(first), lock(again));
}

#[test]
fn the_unpacked_layer_runs_trixies_postfix_and_dovecot() {
    let test = "the_unpacked_layer_runs_trixies_postfix_and_dovecot";
    let Some((_dir, root)) = unpacked_rootfs(test) else {
        return;
    };
    // -d: the compiled-in value; the image ships no main.cf (letterbox writes it).
    let postconf = chroot(&root, &["postconf", "-d", "mail_version"]);
    let postconf_out = String::from_utf8_lossy(&postconf.stdout);
    assert!(
        postconf.status.success() && postconf_out.starts_with("mail_version = 3.10."),
        "postconf: {postconf_out}{}",
        String::from_utf8_lossy(&postconf.stderr)
    );
    let dovecot = chroot(&root, &["dovecot", "--version"]);
    let dovecot_out = String::from_utf8_lossy(&dovecot.stdout);
    assert!(
        dovecot.status.success() && dovecot_out.starts_with("2.4."),
        "dovecot --version: {dovecot_out}{}",
        String::from_utf8_lossy(&dovecot.stderr)
    );
}

#[test]
fn postfix_check_passes_without_set_permissions() {
    // postfix check runs postfix-script (sh, find, cmp, sed, awk...), looks up the postfix
    // and postdrop accounts and checks the queue's owners and the setgid programs: what the
    // maintainer scripts would have done, the image must already hold.
    let test = "postfix_check_passes_without_set_permissions";
    let Some((_dir, root)) = unpacked_rootfs(test) else {
        return;
    };
    let postfix = root.join("etc/postfix");
    std::fs::write(postfix.join("main.cf"), "compatibility_level = 3.10\n").unwrap();
    std::fs::copy(postfix.join("master.cf.proto"), postfix.join("master.cf")).unwrap();
    let chroot_off = chroot(&root, &["postconf", "-F", "*/*/chroot = n"]);
    assert!(chroot_off.status.success(), "{chroot_off:?}");
    let check = chroot(&root, &["postfix", "check"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "postfix check failed:\n{stderr}");
    assert!(
        !stderr.contains("warning"),
        "postfix check warned:\n{stderr}"
    );
}

#[test]
fn every_program_and_library_finds_the_libraries_it_links() {
    // Packages only maintainer scripts need are left out; this shows nothing a binary links
    // against went with them. trixie's own loader resolves each ELF file inside the tree.
    let test = "every_program_and_library_finds_the_libraries_it_links";
    let Some((_dir, root)) = unpacked_rootfs(test) else {
        return;
    };
    assert_every_elf_file_finds_its_libraries(&root, 300);
}

/// trixie's own loader resolves the libraries of each ELF file under `root`'s usr (at
/// least `at_least` of them: the walk found the image's programs).
fn assert_every_elf_file_finds_its_libraries(root: &Path, at_least: usize) {
    let mut elf_files = Vec::new();
    let mut todo = vec![root.join("usr")];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                let mut magic = [0u8; 4];
                let is_elf = std::fs::File::open(entry.path())
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                    .is_ok()
                    && magic == *b"\x7fELF";
                if is_elf {
                    elf_files.push(entry.path());
                }
            }
        }
    }
    assert!(elf_files.len() > at_least, "{} ELF files", elf_files.len());
    let mut unresolved = Vec::new();
    for file in &elf_files {
        let inside = Path::new("/").join(file.strip_prefix(root).unwrap());
        let list = chroot(
            root,
            &[
                "/usr/lib64/ld-linux-x86-64.so.2",
                "--list",
                inside.to_str().unwrap(),
            ],
        );
        // A missing library of an executable shows as "not found"; one of a shared
        // library makes the loader fail.
        let text = String::from_utf8_lossy(&list.stdout);
        if !list.status.success() || text.contains("not found") {
            let stderr = String::from_utf8_lossy(&list.stderr);
            unresolved.push(format!("{}:\n{text}{stderr}", inside.display()));
        }
    }
    assert!(unresolved.is_empty(), "{}", unresolved.join("\n"));
    eprintln!("{} ELF files, every library found", elf_files.len());
}

/// The ELF machine of an aarch64 program (e_machine, at byte 18).
const EM_AARCH64: u16 = 183;

#[test]
fn the_arm64_image_of_the_sd_card_holds_aarch64_postfix_and_dovecot() {
    let test = "the_arm64_image_of_the_sd_card_holds_aarch64_postfix_and_dovecot";
    assert_arm64_image_holds_aarch64(
        test,
        "mail",
        &[
            "usr/sbin/postfix",
            "usr/sbin/dovecot",
            "usr/lib/postfix/sbin/smtpd",
        ],
    );
}

#[test]
fn the_arm64_webmail_image_of_the_sd_card_holds_aarch64_php_fpm_and_nginx() {
    let test = "the_arm64_webmail_image_of_the_sd_card_holds_aarch64_php_fpm_and_nginx";
    assert_arm64_image_holds_aarch64(
        test,
        "webmail",
        &[
            letterbox::webmail::PHP_FPM_BIN.trim_start_matches('/'),
            letterbox::webmail::NGINX_BIN.trim_start_matches('/'),
        ],
    );
}

/// Builds `image` for arm64 and checks that its config says arm64 and that each of
/// `programs` (paths in its layer) is an aarch64 ELF file.
fn assert_arm64_image_holds_aarch64(test: &str, image: &str, programs: &[&str]) {
    for tool in ["mmdebstrap", "dpkg-deb"] {
        if !common::installed(test, tool) {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join(format!("letterbox-{image}-arm64"));
    let out = build_image(image, "arm64", &layout, "022");
    assert!(
        out.status.success(),
        "letterbox mail-image --image {image} --arch arm64 failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, manifest) = the_manifest_for(&layout, Arch::ARM64);
    let config = blob(&layout, manifest.config().digest().as_ref());
    let config = ImageConfiguration::from_reader(config.as_slice()).unwrap();
    assert_eq!(config.architecture(), &Arch::ARM64);
    let layer = blob(&layout, manifest.layers()[0].digest().as_ref());
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer.as_slice()));
    let mut machines = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if programs.contains(&path.as_str()) {
            let mut head = [0u8; 20];
            std::io::Read::read_exact(&mut entry, &mut head).unwrap();
            assert_eq!(&head[..4], b"\x7fELF", "{path} is an ELF file");
            machines.insert(path, u16::from_le_bytes([head[18], head[19]]));
        }
    }
    assert_eq!(machines.len(), programs.len(), "{machines:?}");
    assert!(
        machines.values().all(|m| *m == EM_AARCH64),
        "every program is aarch64: {machines:?}"
    );
}

struct WebmailBuilt {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    stdout: String,
}

/// The amd64 webmail image, built once for every test of this binary; None (skipped)
/// without the tools.
fn webmail_built(test: &str) -> Option<&'static WebmailBuilt> {
    static BUILT: OnceLock<WebmailBuilt> = OnceLock::new();
    for tool in ["mmdebstrap", "dpkg-deb"] {
        if !common::installed(test, tool) {
            return None;
        }
    }
    Some(BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("letterbox-webmail-amd64");
        let out = build_image("webmail", "amd64", &layout, "022");
        assert!(
            out.status.success(),
            "letterbox mail-image --image webmail failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        WebmailBuilt {
            _dir: dir,
            layout,
            stdout: String::from_utf8(out.stdout).unwrap(),
        }
    }))
}

#[test]
fn the_webmail_layout_holds_roundcube_php_fpm_nginx_and_no_secret() {
    let test = "the_webmail_layout_holds_roundcube_php_fpm_nginx_and_no_secret";
    let Some(built) = webmail_built(test) else {
        return;
    };
    let layout = &built.layout;
    let (manifest_digest, manifest) = the_manifest(layout);
    assert_eq!(built.stdout.trim(), manifest_digest);
    let lock = std::fs::read_to_string(format!("{}.lock", layout.display())).unwrap();
    assert!(
        lock.starts_with("# letterbox-webmail amd64: letterbox-webmail:latest\n")
            && lock.contains(&format!("\nmanifest {manifest_digest}\n")),
        "{lock}"
    );
    assert!(
        lock.lines().any(|l| l.starts_with("roundcube-core 1.6.")),
        "{lock}"
    );
    let config = blob(layout, manifest.config().digest().as_ref());
    let config = ImageConfiguration::from_reader(config.as_slice()).unwrap();
    assert_eq!(config.architecture(), &Arch::Amd64);
    let [layer_descriptor] = manifest.layers().as_slice() else {
        panic!("one layer: {:?}", manifest.layers());
    };
    assert_eq!(layer_descriptor.media_type(), &MediaType::ImageLayerGzip);
    let layer = the_layer(layout);
    let mut tar = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(layer.as_slice()),
        &mut tar,
    )
    .unwrap();
    assert_eq!(config.rootfs().diff_ids(), &[sha256(&tar)]);
    eprintln!(
        "layer: {:.1} MiB gzip, {:.1} MiB tar",
        layer.len() as f64 / 1048576.0,
        tar.len() as f64 / 1048576.0
    );

    // Every entry: its kind, its link target and, for files, its text.
    let mut files = std::collections::BTreeMap::new();
    let mut links = std::collections::BTreeMap::new();
    let mut with_private_key = Vec::new();
    let mut archive = tar::Archive::new(tar.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        assert_eq!(entry.header().mtime().unwrap(), EPOCH);
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if let Some(target) = entry.link_name().unwrap() {
            links.insert(path, target.to_string_lossy().into_owned());
        } else if entry.header().entry_type().is_file() {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            // A PEM private key ("-----BEGIN ... PRIVATE KEY-----" and its base64); the
            // libraries that read such keys hold the words, not a key.
            if bytes.windows(17).any(|w| w == b"PRIVATE KEY-----\n") {
                with_private_key.push(path.clone());
            }
            files.insert(path, bytes);
        }
    }
    for expected in [
        "usr/sbin/nginx",
        "usr/sbin/php-fpm8.4",
        "usr/bin/php8.4",
        "usr/bin/dash",
        "usr/share/roundcube/index.php",
        "var/lib/roundcube/public_html/index.php",
        "usr/share/roundcube/SQL/sqlite.initial.sql",
        "etc/php/8.4/fpm/php.ini",
        "usr/share/roundcube/plugins/letterbox_login/letterbox_login.php",
    ] {
        assert!(files.contains_key(expected), "{expected} is in the layer");
    }
    let text = |path: &str| String::from_utf8(files[path].clone()).unwrap();
    assert!(
        text("etc/roundcube/config.inc.php")
            .contains("include '/etc/letterbox/webmail/config.inc.php';"),
        "Roundcube's configuration is the stub that includes the rendered one"
    );
    assert!(
        text("usr/share/roundcube/plugins/letterbox_login/letterbox_login.php")
            .contains("class letterbox_login extends rcube_plugin")
    );
    assert!(
        text("etc/passwd")
            .lines()
            .any(|l| l.starts_with("www-data:x:33:33:")),
        "www-data is uid 33: {}",
        text("etc/passwd")
    );
    assert!(text("etc/group").lines().any(|l| l == "www-data:x:33:"));
    // What the skipped maintainer scripts would have made: the plugin where Roundcube looks,
    // the PHP modules Roundcube needs enabled for PHP-FPM.
    assert_eq!(
        links["var/lib/roundcube/plugins/letterbox_login"],
        "/usr/share/roundcube/plugins/letterbox_login"
    );
    for module in [
        "20-pdo_sqlite.ini",
        "20-intl.ini",
        "20-mbstring.ini",
        "20-dom.ini",
    ] {
        let link = format!("etc/php/8.4/fpm/conf.d/{module}");
        assert!(links.contains_key(&link), "{link} enables the module");
    }
    for dir in [
        "etc/letterbox/webmail",
        "etc/letterbox/tls",
        "var/lib/letterbox-webmail",
    ] {
        assert!(
            archive_has_dir(&tar, dir),
            "{dir} is a mount point in the layer"
        );
    }
    let secrets: Vec<&String> = files
        .keys()
        .chain(links.keys())
        .filter(|p| p.ends_with("des_key") || p.ends_with(".key"))
        .collect();
    assert!(secrets.is_empty(), "no key in the image: {secrets:?}");
    assert!(
        with_private_key.is_empty(),
        "no private key in the image: {with_private_key:?}"
    );
}

fn archive_has_dir(tar: &[u8], dir: &str) -> bool {
    tar::Archive::new(tar).entries().unwrap().any(|e| {
        let e = e.unwrap();
        e.header().entry_type().is_dir()
            && e.path().unwrap().to_string_lossy().trim_end_matches('/') == dir
    })
}

#[test]
fn two_webmail_builds_give_byte_identical_layouts() {
    let test = "two_webmail_builds_give_byte_identical_layouts";
    let Some(built) = webmail_built(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let again = dir.path().join("again");
    let out = build_image("webmail", "amd64", &again, "077");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_byte_identical(&built.layout, &again);
}

#[test]
fn the_unpacked_webmail_layer_runs_php_with_roundcubes_modules_and_the_plugin_parses() {
    let test = "the_unpacked_webmail_layer_runs_php_with_roundcubes_modules_and_the_plugin_parses";
    let Some(built) = webmail_built(test) else {
        return;
    };
    if !common::is_root() {
        return common::skip(test, "chroot needs root");
    }
    let (_dir, root) = unpack(&built.layout);
    // The CLI reads the same conf.d links as PHP-FPM (both made from mods-available).
    let php = chroot(
        &root,
        &[
            "php8.4",
            "-r",
            "foreach (['pdo_sqlite', 'intl', 'mbstring', 'dom', 'openssl', 'session', 'fileinfo'] as $m) { echo $m, '=', extension_loaded($m) ? 'yes' : 'no', \"\\n\"; }",
        ],
    );
    let php_out = String::from_utf8_lossy(&php.stdout);
    assert!(
        php.status.success() && !php_out.contains("=no") && php_out.lines().count() == 7,
        "php8.4: {php_out}{}",
        String::from_utf8_lossy(&php.stderr)
    );
    let lint = chroot(
        &root,
        &[
            "php8.4",
            "-l",
            "/usr/share/roundcube/plugins/letterbox_login/letterbox_login.php",
        ],
    );
    assert!(lint.status.success(), "{lint:?}");
    let fpm = chroot(&root, &["php-fpm8.4", "--version"]);
    assert!(
        fpm.status.success() && String::from_utf8_lossy(&fpm.stdout).starts_with("PHP 8.4."),
        "{fpm:?}"
    );
    let nginx = chroot(&root, &["nginx", "-v"]);
    assert!(
        nginx.status.success() && String::from_utf8_lossy(&nginx.stderr).contains("nginx/1."),
        "{nginx:?}"
    );
}

#[test]
fn every_webmail_program_and_library_finds_the_libraries_it_links() {
    let test = "every_webmail_program_and_library_finds_the_libraries_it_links";
    let Some(built) = webmail_built(test) else {
        return;
    };
    if !common::is_root() {
        return common::skip(test, "chroot needs root");
    }
    let (_dir, root) = unpack(&built.layout);
    assert_every_elf_file_finds_its_libraries(&root, 100);
}
