//! meta-letterbox (yocto/) checked by bitbake's own parser, offline: the layers it builds on
//! are unpacked from the snapshots in ../shared/yocto, then, as an unprivileged user (bitbake
//! refuses root) with BB_NO_NETWORK, for each board: `bitbake -p`, `bitbake -e` of the agent
//! and of the image, `bitbake -g` of the image, and `bitbake-layers show-layers`. No task
//! runs: a real build needs hours and the Internet.
//!
//! The unpacked layers and bitbake's parse cache stay in .cache/yocto between runs (a first
//! parse of every recipe takes minutes per board; later runs reparse only what changed).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const MACHINES: [&str; 2] = ["raspberrypi3-64", "raspberrypi4-64"];
/// The layers' source trees: `git archive`s of the commits the kas files pin.
const SNAPSHOT_ARCHIVES: [&str; 5] = [
    "bitbake",
    "openembedded-core",
    "meta-openembedded",
    "meta-raspberrypi",
    "meta-virtualization",
];
/// meta-letterbox and the layers it depends on (and they on theirs), as in kas/letterbox.yml.
const LAYERS: [&str; 7] = [
    "openembedded-core/meta",
    "meta-openembedded/meta-oe",
    "meta-openembedded/meta-python",
    "meta-openembedded/meta-networking",
    "meta-openembedded/meta-filesystems",
    "meta-raspberrypi",
    "meta-virtualization",
];
/// The host tools OE's sanity check wants (Makefile TEST_PACKAGES), a few by name.
const HOST_TOOLS: [&str; 7] = [
    "chrpath", "diffstat", "gawk", "cpio", "socat", "makeinfo", "zstd",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn snapshots() -> PathBuf {
    repo().join("../shared/yocto")
}

/// One bitbake server per build directory: the bitbake tests take turns.
static BITBAKE: Mutex<Option<Workspace>> = Mutex::new(None);

/// The scratch tree bitbake runs in, owned by the user it runs as.
#[derive(Clone)]
struct Workspace {
    root: PathBuf,
    /// `setpriv` arguments that drop root, empty when not root.
    drop_root: Vec<String>,
}

impl Workspace {
    fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    /// A copy of this repository's yocto/ and what the agent's recipe reads at parse time.
    fn source(&self) -> PathBuf {
        self.root.join("letterbox")
    }
    fn build(&self) -> PathBuf {
        self.root.join("build")
    }

    /// Runs a bitbake tool in the build directory for `machine`; its exit status and output.
    fn run(&self, machine: &str, tool: &str, args: &[&str]) -> (bool, String) {
        let layers = self.layers();
        let path = format!(
            "{}:{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            layers.join("bitbake/bin").display(),
            layers.join("openembedded-core/scripts").display()
        );
        let mut cmd = if self.drop_root.is_empty() {
            Command::new("env")
        } else {
            let mut c = Command::new("setpriv");
            c.args(&self.drop_root).arg("env");
            c
        };
        cmd.arg("-i")
            .arg(format!("HOME={}", self.root.display()))
            .arg(format!("PATH={path}"))
            .arg("LANG=en_US.UTF-8")
            .arg(format!("MACHINE={machine}"))
            .arg("BB_ENV_PASSTHROUGH_ADDITIONS=MACHINE")
            .arg(tool)
            .args(args)
            .current_dir(self.build());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Like `run`, but the tool must succeed.
    fn ok(&self, machine: &str, tool: &str, args: &[&str]) -> String {
        let (ok, text) = self.run(machine, tool, args);
        assert!(
            ok,
            "{tool} {} failed for {machine}:\n{}",
            args.join(" "),
            tail(&text)
        );
        text
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The workspace, prepared once per run; None (the test skipped) without the snapshots or
/// the host tools.
fn workspace(test: &str) -> Option<std::sync::MutexGuard<'static, Option<Workspace>>> {
    let snapshots = snapshots();
    if !snapshots.is_dir() {
        common::skip(
            test,
            &format!(
                "no layer snapshots in {} (kas fetches the pinned layers instead)",
                snapshots.display()
            ),
        );
        return None;
    }
    if !HOST_TOOLS.iter().all(|t| common::installed(test, t)) {
        return None;
    }
    let mut guard = BITBAKE.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(prepare(&snapshots));
    }
    Some(guard)
}

fn prepare(snapshots: &Path) -> Workspace {
    let root = repo().join(".cache/yocto");
    let ws = Workspace {
        root: root.clone(),
        drop_root: if common::is_root() {
            ["--reuid=nobody", "--regid=nogroup", "--clear-groups"]
                .map(String::from)
                .to_vec()
        } else {
            Vec::new()
        },
    };
    // The layers, unpacked again only when the snapshots changed.
    let mut stamp = String::new();
    for name in SNAPSHOT_ARCHIVES {
        let archive = snapshots.join(format!("{name}.tar.zst"));
        let meta =
            std::fs::metadata(&archive).unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
        stamp.push_str(&format!(
            "{name} {} {:?}\n",
            meta.len(),
            meta.modified().ok()
        ));
    }
    let stamp_file = root.join("layers.stamp");
    if std::fs::read_to_string(&stamp_file).ok().as_deref() != Some(stamp.as_str()) {
        let _ = std::fs::remove_dir_all(ws.layers());
        std::fs::create_dir_all(ws.layers()).unwrap();
        for name in SNAPSHOT_ARCHIVES {
            sh(Command::new("tar")
                .arg("--zstd")
                .arg("-xf")
                .arg(snapshots.join(format!("{name}.tar.zst")))
                .arg("-C")
                .arg(ws.layers()));
        }
        std::fs::write(&stamp_file, &stamp).unwrap();
    }
    // This checkout's layer, and the files its agent recipe reads, at a path the
    // unprivileged user can reach whatever the permissions of the checkout's parents.
    let source = ws.source();
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(source.join("image")).unwrap();
    sh(Command::new("cp")
        .arg("-a")
        .arg(repo().join("yocto"))
        .arg(&source));
    for file in ["Cargo.toml", "Cargo.lock", "image/letterbox.toml"] {
        sh(Command::new("cp")
            .arg("-a")
            .arg(repo().join(file))
            .arg(source.join(file)));
    }
    let conf = ws.build().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let mut layers: Vec<String> = LAYERS
        .iter()
        .map(|l| ws.layers().join(l).display().to_string())
        .collect();
    layers.push(source.join("yocto/meta-letterbox").display().to_string());
    std::fs::write(
        conf.join("bblayers.conf"),
        format!(
            "BBPATH = \"${{TOPDIR}}\"\nBBFILES ?= \"\"\nBBLAYERS = \" \\\n  {} \\\n\"\n",
            layers.join(" \\\n  ")
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("local.conf"),
        "MACHINE ??= \"raspberrypi3-64\"\nDISTRO = \"letterbox-os\"\nBB_NO_NETWORK = \"1\"\n\
         CONF_VERSION = \"2\"\n# The server stays up between the test's commands.\n\
         BB_SERVER_TIMEOUT = \"60\"\n",
    )
    .unwrap();
    if !ws.drop_root.is_empty() {
        sh(Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(&root));
    }
    ws
}

/// A variable's value in `bitbake -e` output (`NAME="value"`, `export NAME="value"`).
fn var<'a>(env: &'a str, name: &str) -> &'a str {
    let plain = format!("{name}=\"");
    let exported = format!("export {name}=\"");
    env.lines()
        .find_map(|l| {
            l.strip_prefix(&plain)
                .or_else(|| l.strip_prefix(&exported))
                .and_then(|v| v.strip_suffix('"'))
        })
        .unwrap_or_else(|| panic!("bitbake -e printed no {name}"))
}

/// A shell function's body in `bitbake -e` output.
fn function<'a>(env: &'a str, name: &str) -> &'a str {
    let start = env
        .find(&format!("\n{name}() {{\n"))
        .unwrap_or_else(|| panic!("bitbake -e printed no function {name}"));
    let body = &env[start + name.len() + 6..];
    &body[..body.find("\n}\n").expect("an unterminated function")]
}

fn words(value: &str) -> Vec<&str> {
    value.split_whitespace().collect()
}

/// Every crates.io package of Cargo.lock as `name/version`.
fn locked_crates() -> Vec<String> {
    let lock: toml::Table = std::fs::read_to_string(repo().join("Cargo.lock"))
        .unwrap()
        .parse()
        .unwrap();
    let crates: Vec<String> = lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p.get("source")
                .is_some_and(|s| s.as_str().unwrap().contains("crates.io"))
        })
        .map(|p| {
            format!(
                "{}/{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        crates.len() > 100,
        "Cargo.lock lists {} crates",
        crates.len()
    );
    crates
}

fn bitbake_checks(test: &str, machine: &str) {
    let Some(guard) = workspace(test) else { return };
    let ws = guard.as_ref().unwrap();

    let parsed = ws.ok(machine, "bitbake", &["-p"]);
    let ours: Vec<&str> = parsed
        .lines()
        .filter(|l| {
            (l.starts_with("WARNING") || l.starts_with("ERROR")) && l.contains("meta-letterbox")
        })
        .collect();
    assert!(
        ours.is_empty(),
        "bitbake -p on {machine} about meta-letterbox:\n{}",
        ours.join("\n")
    );

    // The agent: built with cargo from every crate of Cargo.lock, installed as /sbin/init.
    let agent = ws.ok(machine, "bitbake", &["-e", "letterbox"]);
    let src_uri = words(var(&agent, "SRC_URI"));
    for krate in locked_crates() {
        let uri = format!("crate://crates.io/{krate}");
        assert!(
            src_uri.contains(&uri.as_str()),
            "{uri} is not in letterbox's SRC_URI"
        );
    }
    assert!(var(&agent, "CARGO_BUILD_FLAGS").contains("--frozen"));
    assert_eq!(var(&agent, "INIT_MANAGER"), "none");
    assert_eq!(var(&agent, "VIRTUAL-RUNTIME_init_manager"), "letterbox");
    let install = function(&agent, "do_install");
    assert!(
        install.contains("ln -sf /usr/bin/letterbox ") && install.contains("/sbin/init"),
        "letterbox's do_install makes no /sbin/init link to the agent:\n{install}"
    );

    // The image: a wic of our kickstart, with the provisioning file and the UART.
    let image = ws.ok(machine, "bitbake", &["-e", "letterbox-image"]);
    assert_eq!(var(&image, "MACHINE"), machine);
    let fstypes = words(var(&image, "IMAGE_FSTYPES"));
    assert!(fstypes.contains(&"wic"), "IMAGE_FSTYPES: {fstypes:?}");
    let wks = var(&image, "WKS_FULL_PATH");
    assert!(
        wks.ends_with("/meta-letterbox/files/wic/letterbox-sdimage.wks")
            && Path::new(wks).is_file(),
        "WKS_FULL_PATH is {wks}"
    );
    let install = words(var(&image, "IMAGE_INSTALL"));
    for package in ["letterbox", "letterbox-mail-layout", "containerd", "runc"] {
        assert!(
            install.contains(&package),
            "{package} not in IMAGE_INSTALL: {install:?}"
        );
    }
    assert!(words(var(&image, "IMAGE_BOOT_FILES")).contains(&"letterbox.toml"));
    assert_eq!(var(&image, "ENABLE_UART"), "1");
    assert!(words(var(&image, "IMAGE_FEATURES")).contains(&"read-only-rootfs"));
    let kernel = var(&image, "PREFERRED_PROVIDER_virtual/kernel").to_string();

    // The dependency graph: containerd, runc, the kernel and the OCI mail image.
    ws.ok(machine, "bitbake", &["-g", "letterbox-image"]);
    let buildlist = std::fs::read_to_string(ws.build().join("pn-buildlist")).unwrap();
    let recipes: Vec<&str> = buildlist.lines().collect();
    for recipe in [
        "letterbox",
        "containerd",
        "runc",
        kernel.as_str(),
        "letterbox-mail",
        "rpi-config",
    ] {
        assert!(
            recipes.contains(&recipe),
            "{recipe} is not in letterbox-image's graph for {machine}"
        );
    }
    let tasks = std::fs::read_to_string(ws.build().join("task-depends.dot")).unwrap();
    let edge = "\"letterbox-mail-layout.do_install\" -> \"letterbox-mail.do_image_complete\"";
    assert!(tasks.contains(edge), "no {edge} in task-depends.dot");
    assert!(
        tasks.contains("\"letterbox-mail.do_image_oci\""),
        "letterbox-mail is not built as an OCI image"
    );
}

#[test]
#[ignore = "bitbake parses every layer (minutes a board): make yocto-check runs it"]
fn bitbake_parses_and_expands_the_layer_for_raspberrypi3_64() {
    bitbake_checks(
        "bitbake_parses_and_expands_the_layer_for_raspberrypi3_64",
        MACHINES[0],
    );
}

#[test]
#[ignore = "bitbake parses every layer (minutes a board): make yocto-check runs it"]
fn bitbake_parses_and_expands_the_layer_for_raspberrypi4_64() {
    bitbake_checks(
        "bitbake_parses_and_expands_the_layer_for_raspberrypi4_64",
        MACHINES[1],
    );
}

#[test]
#[ignore = "bitbake parses every layer (minutes a board): make yocto-check runs it"]
fn bitbake_layers_shows_meta_letterbox_and_its_dependencies() {
    let test = "bitbake_layers_shows_meta_letterbox_and_its_dependencies";
    let Some(guard) = workspace(test) else { return };
    let ws = guard.as_ref().unwrap();
    let shown = ws.ok(MACHINES[0], "bitbake-layers", &["show-layers"]);
    let row = shown
        .lines()
        .find(|l| l.starts_with("meta-letterbox "))
        .unwrap_or_else(|| panic!("show-layers lists no meta-letterbox:\n{shown}"));
    assert_eq!(words(row).last(), Some(&"10"), "{row}");
    for layer in [
        "meta ",
        "meta-raspberrypi ",
        "meta-virtualization ",
        "meta-networking ",
    ] {
        assert!(
            shown.lines().any(|l| l.starts_with(layer)),
            "show-layers lists no {layer}"
        );
    }
}

/// yocto-check-layer's checks that need no build (README, SECURITY, LAYERSERIES_COMPAT, a
/// distro layer that defines a distro but sets none); its world-signature checks need
/// `bitbake -S none world` over every recipe, too long for the test suite.
#[test]
fn layer_passes_yocto_check_layers_static_checks() {
    let layer = repo().join("yocto/meta-letterbox");
    let readme = std::fs::read_to_string(layer.join("README.md")).unwrap();
    assert!(!readme.trim().is_empty());
    let security = std::fs::read_to_string(layer.join("SECURITY.md")).unwrap();
    assert!(!security.trim().is_empty());
    let conf = std::fs::read_to_string(layer.join("conf/layer.conf")).unwrap();
    assert!(conf.contains("LAYERSERIES_COMPAT_letterbox = \"wrynose\""));
    for setting in ["DISTRO ", "DISTRO=", "MACHINE ", "MACHINE="] {
        assert!(
            !conf.lines().any(|l| l.starts_with(setting)),
            "layer.conf sets {setting}"
        );
    }
    assert!(layer.join("conf/distro/letterbox-os.conf").is_file());
}

/// The crate list bitbake fetches is the one Cargo.lock locks: `yocto/update-crates` after
/// every change to Cargo.lock.
#[test]
fn crate_list_matches_cargo_lock() {
    let test = "crate_list_matches_cargo_lock";
    if !common::installed(test, "python3") {
        return;
    }
    let out = Command::new("python3")
        .arg(repo().join("yocto/update-crates"))
        .arg("--print")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap();
    let inc = repo().join("yocto/meta-letterbox/recipes-core/letterbox/letterbox-crates.inc");
    let checked_in = std::fs::read_to_string(&inc).unwrap();
    assert!(
        generated == checked_in,
        "{} is not Cargo.lock's crate list: run yocto/update-crates",
        inc.display()
    );
    for krate in locked_crates() {
        assert!(
            checked_in.contains(&format!("crate://crates.io/{krate} \\")),
            "{krate}"
        );
    }
}

/// The kickstart makes the partitions of `make image` (src/image/disk.rs): FAT boot of
/// 128 MiB, the read-only squashfs root, the ext4 data partition of 32 MiB (grown on first
/// boot), on 4 MiB boundaries.
#[test]
fn kickstart_has_the_three_partitions_of_make_image() {
    let wks = std::fs::read_to_string(
        repo().join("yocto/meta-letterbox/files/wic/letterbox-sdimage.wks"),
    )
    .unwrap();
    let parts: Vec<&str> = wks.lines().filter(|l| l.starts_with("part ")).collect();
    assert_eq!(parts.len(), 3, "{parts:?}");
    let has = |part: &str, words: &[&str]| {
        words
            .iter()
            .all(|w| part.split_whitespace().any(|p| p == *w))
    };
    assert!(has(
        parts[0],
        &[
            "/boot",
            "--fstype=vfat",
            "--active",
            "--fixed-size",
            "128M",
            "--align",
            "4096"
        ]
    ));
    assert!(has(
        parts[1],
        &[
            "/",
            "--source",
            "rootfs",
            "--fstype=squashfs",
            "--align",
            "4096"
        ]
    ));
    assert!(has(
        parts[2],
        &[
            "--fstype=ext4",
            "--label",
            "data",
            "--fixed-size",
            "32M",
            "--align",
            "4096"
        ]
    ));
    let disk = std::fs::read_to_string(repo().join("src/image/disk.rs")).unwrap();
    assert!(
        disk.contains("BOOT_SIZE: u64 = 128 << 20") && disk.contains("DATA_SIZE: u64 = 32 << 20")
    );
}

/// kas fetches the layers at the commits of the snapshots the parser checks.
#[test]
fn kas_pins_every_layer_at_its_snapshot_commit() {
    let test = "kas_pins_every_layer_at_its_snapshot_commit";
    let Ok(readme) = std::fs::read_to_string(snapshots().join("README.md")) else {
        common::skip(
            test,
            "no ../shared/yocto/README.md listing the snapshots' commits",
        );
        return;
    };
    let kas = std::fs::read_to_string(repo().join("yocto/kas/letterbox.yml")).unwrap();
    let mut pinned = 0;
    for row in readme.lines().filter(|l| l.contains(".tar.zst |")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (url, branch, commit) = (cells[2], cells[3], cells[4]);
        let at = kas
            .find(&format!("url: {url}\n"))
            .unwrap_or_else(|| panic!("kas/letterbox.yml fetches nothing from {url}"));
        let entry = &kas[at..kas[at..].find("\n\n").map_or(kas.len(), |e| at + e + 1)];
        assert!(
            entry.contains(&format!("commit: {commit}\n")),
            "{url} not at {commit}"
        );
        assert!(
            entry.contains(&format!("branch: {branch}\n"))
                || entry.contains(&format!("branch: \"{branch}\"\n"))
        );
        pinned += 1;
    }
    assert_eq!(pinned, SNAPSHOT_ARCHIVES.len());
    for board in ["rpi3", "rpi4"] {
        let file = std::fs::read_to_string(repo().join(format!("yocto/kas/letterbox-{board}.yml")))
            .unwrap();
        assert!(
            file.contains("- letterbox.yml")
                && file.contains(&format!("machine: raspberrypi{}-64", &board[3..]))
        );
    }
}
