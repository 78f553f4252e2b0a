//! `letterbox account add|list|del` offline, run as the built binary: on a provisioning
//! file (comments and layout kept, every bad input refused with the file unchanged) and on
//! an SD image's boot partition (edited with mtools, `fsck.vfat -n` clean afterwards).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Comments everywhere, odd spacing, account `bob` between two sections, and
/// `[accounts] min_password_length = 8`.
const FIXTURE: &str = "tests/fixtures/accounts/letterbox.toml";
const PASSWORD: &str = "correct horse battery";
/// What `account add` appends for `carol` (with the hash on its own line, not compared).
const CAROL_HEADER: &str = "\n[[account]]\nname = \"carol\"\npassword_hash = \"";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> String {
    std::fs::read_to_string(root().join(FIXTURE)).unwrap()
}

/// Runs `letterbox ARGS` with `stdin` on a pipe.
fn letterbox(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(common::letterbox_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("letterbox starts");
    // A command that refuses its input before reading the password closes stdin first.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The fixture copied to a fresh letterbox.toml; the directory goes with the test.
fn file_copy() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letterbox.toml");
    std::fs::write(&path, fixture()).unwrap();
    let shown = path.display().to_string();
    (dir, path, shown)
}

/// The `password_hash` value of account `name` in `text`.
fn hash_of(text: &str, name: &str) -> String {
    let doc: toml::Table = text.parse().unwrap();
    let accounts = doc["account"].as_array().unwrap();
    let account = accounts
        .iter()
        .find(|a| a["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no account {name} in:\n{text}"));
    account["password_hash"].as_str().unwrap().to_string()
}

/// `text` with the `[[account]]` block `account add` wrote for carol taken out.
fn without_carol(text: &str) -> String {
    let start = text.find(CAROL_HEADER).expect("carol's entry");
    let hash_end =
        start + CAROL_HEADER.len() + text[start + CAROL_HEADER.len()..].find("\"\n").unwrap() + 2;
    format!("{}{}", &text[..start], &text[hash_end..])
}

#[test]
fn add_on_a_file_keeps_every_comment_and_puts_the_account_after_the_last() {
    let (_dir, path, shown) = file_copy();
    let out = letterbox(
        &[
            "account",
            "add",
            "carol",
            "--password-stdin",
            "--file",
            &shown,
        ],
        &format!("{PASSWORD}\n"),
    );
    assert_ok(&out);
    assert_eq!(
        text(&out.stdout),
        format!("{shown}: added account carol (box@carol.example.org)\n")
    );
    let edited = std::fs::read_to_string(&path).unwrap();
    // Taking the new entry out gives back the file byte for byte: comments, spacing and
    // order all kept.
    assert_eq!(without_carol(&edited), fixture());
    // Beside bob, not after the sections that follow him.
    let carol = edited.find("name = \"carol\"").unwrap();
    assert!(edited.find("name = \"bob\"").unwrap() < carol);
    assert!(carol < edited.find("[containers]").unwrap(), "{edited}");
    // The password is hashed: the hash verifies it, and it is nowhere in the file or output.
    let hash = hash_of(&edited, "carol");
    assert!(letterbox::passwd::verify(PASSWORD, &hash), "{hash}");
    for seen in [&edited, &text(&out.stdout), &text(&out.stderr)] {
        assert!(!seen.contains(PASSWORD), "the password leaked into: {seen}");
    }
    // The result is a file `letterbox check` accepts, with carol in it.
    let cfg = letterbox::config::parse("edited", &edited).unwrap();
    let names: Vec<_> = cfg.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["bob", "carol"]);
    assert_ok(&letterbox(&["check", &shown], ""));
}

#[test]
fn add_to_a_file_without_accounts_then_list_then_del_gives_the_file_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letterbox.toml");
    let original = letterbox::config::DEFAULT_TOML;
    std::fs::write(&path, original).unwrap();
    let shown = path.display().to_string();
    let out = letterbox(
        &[
            "account",
            "add",
            "alice",
            "--file",
            &shown,
            "--password-stdin",
        ],
        PASSWORD,
    );
    assert_ok(&out);
    let edited = std::fs::read_to_string(&path).unwrap();
    assert!(edited.starts_with(original), "appended, nothing else moved");
    assert!(letterbox::passwd::verify(
        PASSWORD,
        &hash_of(&edited, "alice")
    ));

    let out = letterbox(&["account", "list", "--file", &shown], "");
    assert_ok(&out);
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("ADDRESS"), "{table}");
    assert!(
        lines[1].starts_with("box@alice.example.org  not running  n.a."),
        "{table}"
    );
    let out = letterbox(&["account", "list", "--json", "--file", &shown], "");
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "name": "alice",
            "address": "box@alice.example.org",
            "state": "not_running",
            "mailbox_bytes": null,
            "messages": null,
            "last_delivery": null,
        }])
    );

    let out = letterbox(&["account", "del", "alice", "--file", &shown], "");
    assert_ok(&out);
    assert!(text(&out.stdout).contains("deleted account alice"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    let out = letterbox(&["account", "list", "--json", "--file", &shown], "");
    assert_eq!(text(&out.stdout).trim(), "[]");
}

#[test]
fn del_on_a_file_takes_out_that_entry_and_its_comment_only() {
    let (_dir, path, shown) = file_copy();
    let out = letterbox(&["account", "del", "bob", "--file", &shown], "");
    assert_ok(&out);
    let bob = "# Bob was the first.\n[[account]]\nname = \"bob\"   # the boss\n";
    let start = fixture().find(bob).unwrap();
    let end = start + fixture()[start..].find("\n\n").unwrap() + 2;
    let expected = format!("{}{}", &fixture()[..start], &fixture()[end..]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
}

/// Runs `letterbox account ARGS --file F` on a copy of the fixture; asserts that it fails,
/// that stderr says `why`, and that the file is byte for byte as it was.
fn refused(args: &[&str], stdin: &str, why: &str) {
    let (_dir, path, shown) = file_copy();
    let before = std::fs::read(&path).unwrap();
    let mut all = vec!["account"];
    all.extend(args);
    all.extend(["--file", &shown]);
    let out = letterbox(&all, stdin);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(why),
        "{args:?}: {stderr:?} should say {why:?}"
    );
    assert_eq!(text(&out.stdout), "", "{args:?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "{args:?} changed the file"
    );
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["letterbox.toml"], "{args:?} left a temporary file");
}

#[test]
fn every_bad_input_is_refused_with_its_reason_and_changes_nothing() {
    let add = |name: &'static str| ["add", name, "--password-stdin"];
    let long = "a".repeat(64);
    let pw = &format!("{PASSWORD}\n");
    refused(
        &add("Alice!"),
        pw,
        "'!' is not allowed; expected only letters a-z",
    );
    refused(
        &add("Alice"),
        pw,
        "it has capitals; expected lowercase, e.g. \"alice\"",
    );
    refused(&add("mail"), pw, "reserved; expected a name other than");
    refused(&add("postmaster"), pw, "reserved");
    refused(&add("www"), pw, "reserved");
    refused(&add("abuse"), pw, "reserved");
    refused(&add("ns1"), pw, "reserved");
    refused(
        &["add", &long, "--password-stdin"],
        pw,
        "64 characters long; expected at most 63",
    );
    refused(&add("bo-"), pw, "starts or ends with '-'");
    refused(&add("bob"), pw, "there is an account of that name already");
    refused(&["del", "dave"], "", "no account \"dave\"");
    refused(&["del", "bob", "--purge"], "", "--purge");
    refused(&add("carol"), "\n", "empty password");
    refused(&add("carol"), "", "empty password");
    // The fixture's [accounts] min_password_length = 8.
    refused(&add("carol"), "seven77\n", "at least 8 characters");
    // Not a terminal, and --password-stdin not given: the password is not read from a pipe.
    refused(&["add", "carol"], pw, "expected --password-stdin");
}

#[test]
fn a_broken_file_gets_its_positioned_errors_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letterbox.toml");
    let broken = fixture().replace("hostname = \"mail\"", "hostname = \"-mail\"");
    std::fs::write(&path, &broken).unwrap();
    let shown = path.display().to_string();
    for args in [
        &[
            "account",
            "add",
            "carol",
            "--password-stdin",
            "--file",
            &shown,
        ][..],
        &["account", "del", "bob", "--file", &shown],
        &["account", "list", "--file", &shown],
    ] {
        let out = letterbox(args, &format!("{PASSWORD}\n"));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        // The same report `letterbox check` gives.
        let check = letterbox(&["check", &shown], "");
        assert_eq!(stderr, text(&check.stderr), "{args:?}");
        assert!(
            stderr.contains(&format!("{shown}:6:12: error: ")),
            "{stderr}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
    }
    // A TOML syntax error too.
    std::fs::write(&path, "version = 1\n[system\n").unwrap();
    let out = letterbox(&["account", "list", "--file", &shown], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("{shown}:2:")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn without_file_or_image_nothing_is_guessed() {
    let out = letterbox(&["account", "list"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("expected --file FILE or --image IMAGE"));
    let out = letterbox(&["account", "list", "--file", "a", "--image", "b"], "");
    assert_eq!(out.status.code(), Some(2), "clap refuses both at once");
}

// ---- SD images ----

const MIB: u64 = 1 << 20;
/// Where `letterbox build` puts the boot partition: 4 MiB aligned (`image::disk`).
const BOOT_START: u64 = 4 * MIB;
const BOOT_LEN: u64 = 64 * MIB;
const OTHER_LEN: u64 = 4 * MIB;

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
}

fn mtools(tool: &str) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null");
    cmd
}

/// Writes an MBR disk: `parts` (type, image file) from 4 MiB on, each 4 MiB aligned.
fn assemble(out: &Path, parts: &[(u8, &Path)]) {
    let mut disk = std::fs::File::create(out).unwrap();
    let mut offset = BOOT_START;
    let mut entries = Vec::new();
    for (kind, part) in parts {
        let len = std::fs::metadata(part).unwrap().len().div_ceil(4 * MIB) * 4 * MIB;
        disk.seek(SeekFrom::Start(offset)).unwrap();
        std::io::copy(&mut std::fs::File::open(part).unwrap(), &mut disk).unwrap();
        entries.push((*kind, offset, len));
        offset += len;
    }
    disk.set_len(offset).unwrap();
    let mut mbr = mbrman::MBR::new_from(&mut disk, 512, *b"lbox").unwrap();
    for (i, (kind, start, len)) in entries.into_iter().enumerate() {
        mbr[i + 1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_INACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: kind,
            last_chs: mbrman::CHS::empty(),
            starting_lba: (start / 512) as u32,
            sectors: (len / 512) as u32,
        };
    }
    mbr.write_into(&mut disk).unwrap();
}

/// A FAT32 partition image made with `mformat -F -v LABEL`, as `letterbox build` makes
/// the boot partition, holding `files`.
fn fat32(path: &Path, label: &str, files: &[&Path]) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(BOOT_LEN)
        .unwrap();
    run_ok(
        mtools("mformat")
            .args(["-F", "-v", label, "-i"])
            .arg(path)
            .arg("::"),
    );
    if !files.is_empty() {
        run_ok(mtools("mcopy").arg("-i").arg(path).args(files).arg("::/"));
    }
}

/// An image laid out as `letterbox build` lays one out, with the fixture as its
/// letterbox.toml and a second partition of known bytes after the boot partition. Made
/// once per test binary; tests edit copies.
fn laid_out_image() -> &'static Path {
    static IMAGE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("letterbox.toml");
            std::fs::write(&config, fixture()).unwrap();
            let boot = dir.path().join("boot.fat");
            fat32(&boot, "LETTERBOX", &[&config]);
            let other = dir.path().join("other");
            std::fs::write(&other, other_bytes()).unwrap();
            let image = dir.path().join("letterbox-rpi3.img");
            assemble(&image, &[(0x0c, &boot), (0x83, &other)]);
            (dir, image)
        })
        .1
}

fn other_bytes() -> Vec<u8> {
    (0..OTHER_LEN).map(|i| (i % 251) as u8).collect()
}

/// Byte range of partition `n` (1-based).
fn partition(image: &Path, n: usize) -> (u64, u64) {
    let mut f = std::fs::File::open(image).unwrap();
    let mbr = mbrman::MBR::read_from(&mut f, 512).unwrap();
    (
        u64::from(mbr[n].starting_lba) * 512,
        u64::from(mbr[n].sectors) * 512,
    )
}

fn partition_bytes(image: &Path, n: usize) -> Vec<u8> {
    let (start, len) = partition(image, n);
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut bytes = Vec::new();
    f.take(len).read_to_end(&mut bytes).unwrap();
    bytes
}

/// `fsck.vfat -n` on the image's boot partition: its output, after asserting it is clean.
fn assert_boot_partition_clean(image: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let boot = dir.path().join("boot.fat");
    std::fs::write(&boot, partition_bytes(image, 1)).unwrap();
    let out = Command::new("fsck.vfat")
        .arg("-n")
        .arg(&boot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsck.vfat -n: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// letterbox.toml read back from the image's boot partition with mtools.
fn config_on(image: &Path) -> String {
    let (start, _) = partition(image, 1);
    let out = mtools("mtype")
        .arg("-i")
        .arg(format!("{}@@{start}", image.display()))
        .arg("::letterbox.toml")
        .output()
        .unwrap();
    assert!(out.status.success(), "mtype: {}", text(&out.stderr));
    text(&out.stdout)
}

fn image_tools(test: &str) -> bool {
    ["mformat", "mcopy", "mtype", "fsck.vfat"]
        .iter()
        .all(|tool| common::installed(test, tool))
}

/// add, list and del on `image` (holding the fixture): the boot partition stays clean,
/// the file on it changes as on a plain file, and nothing else in the image changes.
fn add_list_del_on(image: &Path, original: &str) {
    let shown = image.display().to_string();
    let named = format!("{shown}::letterbox.toml");
    let untouched: Vec<Vec<u8>> = (2..=3)
        .filter(|n| partition(image, *n).1 > 0)
        .map(|n| partition_bytes(image, n))
        .collect();
    assert_boot_partition_clean(image);

    let out = letterbox(
        &[
            "account",
            "add",
            "carol",
            "--password-stdin",
            "--image",
            &shown,
        ],
        &format!("{PASSWORD}\n"),
    );
    assert_ok(&out);
    assert_eq!(
        text(&out.stdout),
        format!("{named}: added account carol (box@carol.example.org)\n")
    );
    assert_boot_partition_clean(image);
    let edited = config_on(image);
    assert_eq!(without_carol(&edited), original);
    assert!(letterbox::passwd::verify(
        PASSWORD,
        &hash_of(&edited, "carol")
    ));
    let after: Vec<Vec<u8>> = (2..=3)
        .filter(|n| partition(image, *n).1 > 0)
        .map(|n| partition_bytes(image, n))
        .collect();
    assert!(after == untouched, "the other partitions changed");

    let out = letterbox(&["account", "list", "--image", &shown, "--json"], "");
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .any(|a| a["address"] == "box@carol.example.org"),
        "{json}"
    );

    let out = letterbox(&["account", "del", "carol", "--image", &shown], "");
    assert_ok(&out);
    assert_boot_partition_clean(image);
    assert_eq!(config_on(image), original);

    // A bad name on an image: refused, the image byte for byte as it was.
    let before = std::fs::read(image).unwrap();
    let out = letterbox(
        &[
            "account",
            "add",
            "mail",
            "--password-stdin",
            "--image",
            &shown,
        ],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("reserved"));
    assert!(
        std::fs::read(image).unwrap() == before,
        "a refused add changed the image"
    );
}

#[test]
fn add_list_del_on_an_image_keep_its_boot_partition_fsck_clean() {
    let test = "add_list_del_on_an_image_keep_its_boot_partition_fsck_clean";
    if !image_tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("letterbox-rpi3.img");
    std::fs::copy(laid_out_image(), &image).unwrap();
    add_list_del_on(&image, &fixture());
    assert_eq!(partition_bytes(&image, 2), other_bytes());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["letterbox-rpi3.img"], "no temporary file left");
}

/// The same on the image `make test-image` builds with `letterbox build`.
#[test]
fn add_list_del_on_the_built_test_image_keep_its_boot_partition_fsck_clean() {
    let test = "add_list_del_on_the_built_test_image_keep_its_boot_partition_fsck_clean";
    let built = root().join("out/test-rpi3.img");
    if !built.is_file() {
        common::skip(
            test,
            "no out/test-rpi3.img: run `make test-image` (make test does)",
        );
        return;
    }
    if !image_tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("test-rpi3.img");
    std::fs::copy(&built, &image).unwrap();
    let original = config_on(&image);
    add_list_del_on(&image, &original);
}

#[test]
fn an_image_that_is_not_ours_is_refused_and_left_alone() {
    let test = "an_image_that_is_not_ours_is_refused_and_left_alone";
    if !image_tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("letterbox.toml");
    std::fs::write(&config, fixture()).unwrap();
    let other = dir.path().join("other");
    std::fs::write(&other, other_bytes()).unwrap();

    let no_mbr = dir.path().join("no-mbr.img");
    std::fs::write(&no_mbr, vec![0u8; MIB as usize]).unwrap();
    let linux_first = dir.path().join("linux-first.img");
    assemble(&linux_first, &[(0x83, &other)]);
    let foreign_fat = dir.path().join("foreign.fat");
    fat32(&foreign_fat, "NOTOURS", &[&config]);
    let foreign = dir.path().join("foreign.img");
    assemble(&foreign, &[(0x0c, &foreign_fat)]);
    let empty_fat = dir.path().join("empty.fat");
    fat32(&empty_fat, "LETTERBOX", &[]);
    let empty = dir.path().join("empty.img");
    assemble(&empty, &[(0x0c, &empty_fat)]);

    for (image, why) in [
        (&no_mbr, "no MBR partition table"),
        (&linux_first, "its first partition is of type 0x83"),
        (
            &foreign,
            "its boot partition is not the FAT32 volume \"LETTERBOX\"",
        ),
        (&empty, "no letterbox.toml on its boot partition"),
    ] {
        let shown = image.display().to_string();
        let before = std::fs::read(image).unwrap();
        for args in [
            &[
                "account",
                "add",
                "carol",
                "--password-stdin",
                "--image",
                &shown,
            ][..],
            &["account", "list", "--image", &shown],
        ] {
            let out = letterbox(args, &format!("{PASSWORD}\n"));
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains(&format!("{shown} is not a letterbox image: {why}")),
                "{stderr}"
            );
            assert!(std::fs::read(image).unwrap() == before, "{shown} changed");
        }
    }
}

/// On the appliance, letterbox.toml is on the boot partition, mounted read-only: an
/// account command remounts it read-write for its write only. Here a tmpfs mounted
/// read-only with early boot's flags, in a mount namespace of the test's own (this
/// machine's kernel may lack FAT; the QEMU boot test adds an account on the real FAT
/// partition).
#[test]
fn add_on_a_read_only_mount_writes_through_a_moments_remount() {
    let test = "add_on_a_read_only_mount_writes_through_a_moments_remount";
    if !common::is_root() {
        common::skip(test, "needs root (a mount in a mount namespace)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("letterbox.toml");
    std::fs::write(&source, fixture()).unwrap();
    let boot = dir.path().join("boot");
    std::fs::create_dir(&boot).unwrap();
    let script = r#"set -e
mount -t tmpfs -o nosuid,nodev,noexec,size=1m boot "$2"
cp "$1" "$2/letterbox.toml"
mount -o remount,ro,nosuid,nodev,noexec "$2"
echo before: $(findmnt -no OPTIONS "$2")
printf 'correct horse battery\n' | "$3" account add carol --password-stdin --file "$2/letterbox.toml"
echo after: $(findmnt -no OPTIONS "$2")
grep -c 'name = "carol"' "$2/letterbox.toml"
"#;
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&source)
        .arg(&boot)
        .arg(common::letterbox_bin())
        .output()
        .unwrap();
    assert_ok(&out);
    let stdout = text(&out.stdout);
    let options = |when: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(when))
            .unwrap_or_default()
            .to_string()
    };
    let (before, after) = (options("before: "), options("after: "));
    assert!(before.starts_with("ro,"), "{stdout}");
    // Read-only again, with the flags it was mounted with.
    assert_eq!(after, before, "{stdout}");
    assert!(
        stdout.lines().any(|l| l == "1"),
        "carol is in the file:\n{stdout}"
    );
}

/// Fills the ext4 filesystem mounted at $2 to its last block, runs the account commands
/// on the file and the image on it, and leaves beside $5: their exit codes and stderr,
/// checksums before and after, and what is on the filesystem afterwards.
const ON_A_FULL_FILESYSTEM: &str = r#"set -e
results=$5 letterbox=$6
mount -o loop "$1" "$2"
cp "$3" "$2/letterbox.toml"
cp --sparse=always "$4" "$2/letterbox.img"
dd if=/dev/zero of="$2/filler" bs=64k 2>/dev/null || true
dd if=/dev/zero of="$2/filler-tail" bs=1k 2>/dev/null || true
if printf x 2>/dev/null >"$2/probe"; then echo "the filesystem is not full"; exit 1; fi
rm -f "$2/probe"
cd "$2"
sha256sum letterbox.toml letterbox.img >"$results/before"
run() { out=$1; shift; set +e; "$@" 2>"$results/$out.err" >/dev/null </dev/null; echo $? >"$results/$out.rc"; set -e; }
printf 'correct horse battery\n' >"$results/password"
run add-file sh -c '"$0" account add carol --password-stdin --file letterbox.toml <"$1"' "$letterbox" "$results/password"
run del-file "$letterbox" account del bob --file letterbox.toml
run add-image sh -c '"$0" account add carol --password-stdin --image letterbox.img <"$1"' "$letterbox" "$results/password"
run del-image "$letterbox" account del bob --image letterbox.img
sha256sum letterbox.toml letterbox.img >"$results/after"
ls -A >"$results/listing"
"#;

/// The data partition's filesystem, ext4, in a loop-mounted image filled to its last
/// block (root's reserved blocks too), mounted in a mount namespace of the test's own.
#[test]
fn add_and_del_on_a_full_filesystem_say_so_name_it_and_change_nothing() {
    let test = "add_and_del_on_a_full_filesystem_say_so_name_it_and_change_nothing";
    if !common::is_root() {
        common::skip(test, "needs root (a loop mount in a mount namespace)");
        return;
    }
    if !common::installed(test, "mkfs.ext4") || !image_tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fs_image = dir.path().join("ext4.img");
    std::fs::File::create(&fs_image)
        .unwrap()
        .set_len(96 * MIB)
        .unwrap();
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&fs_image));
    let source = dir.path().join("letterbox.toml");
    std::fs::write(&source, fixture()).unwrap();
    let mount = dir.path().join("full");
    let results = dir.path().join("results");
    std::fs::create_dir(&mount).unwrap();
    std::fs::create_dir(&results).unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .args([ON_A_FULL_FILESYSTEM, "sh"])
        .args([&fs_image, &mount, &source, laid_out_image(), &results])
        .arg(common::letterbox_bin())
        .output()
        .unwrap();
    assert_ok(&out);
    let read = |name: &str| {
        std::fs::read_to_string(results.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}; the script said: {}", text(&out.stdout)))
    };
    let shown = mount.canonicalize().unwrap().display().to_string();
    for (command, file) in [
        ("add-file", "letterbox.toml"),
        ("del-file", "letterbox.toml"),
        ("add-image", "letterbox.img"),
        ("del-image", "letterbox.img"),
    ] {
        let stderr = read(&format!("{command}.err"));
        assert_eq!(read(&format!("{command}.rc")), "1\n", "{command}: {stderr}");
        let expected =
            format!("{file}: no space left on device; free some space on {shown} and try again");
        assert!(
            stderr.contains(&expected),
            "{command}: {stderr:?} should say {expected:?}"
        );
    }
    assert_eq!(
        read("after"),
        read("before"),
        "the file or the image changed"
    );
    assert_eq!(
        read("listing"),
        "filler\nfiller-tail\nletterbox.img\nletterbox.toml\nlost+found\n",
        "a temporary file was left behind"
    );
}
