//! Each account's home and Maildir: owned by the uid the plan gives its box, mode 0700,
//! made once and then left alone, handed over when the account's slot moves, never
//! shared between two boxes. Needs root, to give directories away.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use letterbox::mail::maildir::{ensure_maildir, BoxHome, MaildirError, FIRST_UID, LAST_UID};

fn root_or_skip(test: &str) -> bool {
    let root = common::is_root();
    if !root {
        common::skip(test, "needs root to chown directories");
    }
    root
}

fn ensure(root: &Path, name: &str, uid: u32) -> BoxHome {
    ensure_maildir(root, name, uid).unwrap()
}

/// Two box uids that are not the first, so that a default could not pass for them.
const ALICE: u32 = FIRST_UID + 17;
const BOB: u32 = FIRST_UID + 3;

/// Every directory the home consists of.
fn dirs(home: &BoxHome) -> Vec<PathBuf> {
    let maildir = home.maildir();
    vec![
        home.path.clone(),
        maildir.clone(),
        maildir.join("cur"),
        maildir.join("new"),
        maildir.join("tmp"),
    ]
}

/// What a change to a directory would show: chown and chmod move its ctime.
#[derive(Debug, PartialEq)]
struct DirState {
    ino: u64,
    mode: u32,
    owner: (u32, u32),
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn snapshot(paths: &[PathBuf]) -> Vec<DirState> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(p).unwrap();
            DirState {
                ino: m.ino(),
                mode: m.mode(),
                owner: (m.uid(), m.gid()),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            }
        })
        .collect()
}

fn assert_owned_0700(home: &BoxHome) {
    for dir in dirs(home) {
        let m = std::fs::symlink_metadata(&dir).unwrap();
        assert!(m.is_dir(), "{}", dir.display());
        assert_eq!(
            (m.uid(), m.gid()),
            (home.uid, home.gid),
            "{}",
            dir.display()
        );
        assert_eq!(m.permissions().mode() & 0o7777, 0o700, "{}", dir.display());
    }
}

#[test]
fn two_accounts_get_the_uids_given_which_stay_theirs_on_a_rerun() {
    if !root_or_skip("two_accounts_get_the_uids_given_which_stay_theirs_on_a_rerun") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let alice = ensure(&root, "alice", ALICE);
    let bob = ensure(&root, "bob", BOB);
    assert_eq!(alice.path, root.join("alice"));
    assert_eq!(alice.maildir(), root.join("alice/Maildir"));
    assert_eq!(
        (alice.uid, alice.gid, alice.reowned_from),
        (ALICE, ALICE, None)
    );
    assert_eq!((bob.uid, bob.gid, bob.reowned_from), (BOB, BOB, None));
    assert_eq!(std::fs::metadata(&alice.path).unwrap().uid(), ALICE);
    assert_eq!(std::fs::metadata(&bob.path).unwrap().uid(), BOB);
    // A restart keeps nothing in memory: the other order gives each the same home.
    assert_eq!(ensure(&root, "bob", BOB), bob);
    assert_eq!(ensure(&root, "alice", ALICE), alice);
}

#[test]
fn homes_and_maildirs_are_owned_by_the_box_uid_with_mode_0700() {
    if !root_or_skip("homes_and_maildirs_are_owned_by_the_box_uid_with_mode_0700") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let alice = ensure(&root, "alice", ALICE);
    let bob = ensure(&root, "bob", BOB);
    assert_owned_0700(&alice);
    assert_owned_0700(&bob);
    let root_meta = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (root_meta.uid(), root_meta.permissions().mode() & 0o777),
        (0, 0o700)
    );
    // Nothing left beside the homes but the lock.
    let mut names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".lock", "alice", "bob"]);
}

#[test]
fn a_rerun_changes_nothing() {
    if !root_or_skip("a_rerun_changes_nothing") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let alice = ensure(&root, "alice", ALICE);
    let mut paths = dirs(&alice);
    paths.push(root.clone());
    let before = snapshot(&paths);
    // ctime has nanoseconds, but a coarse clock could hide a change made in the same tick.
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(ensure(&root, "alice", ALICE), alice);
    assert_eq!(snapshot(&paths), before);
}

#[test]
fn a_missing_maildir_folder_and_a_wrong_mode_or_group_are_repaired() {
    if !root_or_skip("a_missing_maildir_folder_and_a_wrong_mode_or_group_are_repaired") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let alice = ensure(&root, "alice", ALICE);
    std::fs::remove_dir(alice.maildir().join("new")).unwrap();
    let cur = alice.maildir().join("cur");
    std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(alice.maildir(), None, Some(0)).unwrap();
    assert_eq!(ensure(&root, "alice", ALICE), alice);
    assert_owned_0700(&alice);
}

#[test]
fn a_uid_that_owns_another_home_is_refused_until_that_home_is_gone() {
    if !root_or_skip("a_uid_that_owns_another_home_is_refused_until_that_home_is_gone") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let alice = ensure(&root, "alice", ALICE);
    let bob = ensure(&root, "bob", BOB);

    // A new home with a uid another home has.
    let err = ensure_maildir(&root, "carol", ALICE).unwrap_err();
    assert!(
        matches!(&err, MaildirError::SharedUid { path, other, uid: ALICE }
            if *path == root.join("carol") && *other == alice.path),
        "{err:?}"
    );
    assert!(err.to_string().contains("a uid of its own"), "{err}");
    assert!(!root.join("carol").exists());
    assert!(!root.join(".new-carol").exists());

    // An existing home, to be handed a uid another home has: neither is touched.
    let before = snapshot(&[dirs(&alice), dirs(&bob)].concat());
    let err = ensure_maildir(&root, "bob", ALICE).unwrap_err();
    assert!(
        matches!(&err, MaildirError::SharedUid { path, other, uid: ALICE }
            if *path == bob.path && *other == alice.path),
        "{err:?}"
    );
    assert_eq!(snapshot(&[dirs(&alice), dirs(&bob)].concat()), before);

    // Gone with its mail: only now may another account have its uid.
    std::fs::remove_dir_all(&alice.path).unwrap();
    let carol = ensure(&root, "carol", ALICE);
    assert_owned_0700(&carol);
}

#[test]
fn a_home_whose_slot_moved_is_handed_over_to_the_new_uid() {
    if !root_or_skip("a_home_whose_slot_moved_is_handed_over_to_the_new_uid") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let old = ensure(&root, "bob", BOB);
    // Mail, a subfolder with a message, and a link: as Dovecot running as the box leaves them.
    let maildir = old.maildir();
    let folder = maildir.join(".Sent");
    let mut files = vec![
        maildir.join("cur/1.host:2,S"),
        maildir.join("new/2.host"),
        maildir.join("dovecot-uidlist"),
    ];
    for dir in [&folder, &folder.join("cur")] {
        std::fs::create_dir(dir).unwrap();
        files.push(dir.clone());
    }
    files.push(folder.join("cur/3.host:2,S"));
    for file in &files {
        if !file.is_dir() {
            std::fs::write(file, "Subject: hi\n\nhello\n").unwrap();
        }
    }
    let link = maildir.join("link");
    std::os::unix::fs::symlink("cur", &link).unwrap();
    files.push(link.clone());
    let new_uid = FIRST_UID + 2;
    for file in &files {
        std::os::unix::fs::lchown(file, Some(BOB), Some(BOB)).unwrap();
    }
    // A hand-over a power cut stopped halfway: some files already re-owned, the home not.
    std::os::unix::fs::chown(&files[0], Some(new_uid), Some(new_uid)).unwrap();
    // Not the old box's: a hard link it made to root's file outside its home stays root's.
    let outside = tmp.path().join("outside");
    std::fs::write(&outside, "").unwrap();
    std::fs::hard_link(&outside, maildir.join("foreign")).unwrap();

    let moved = ensure(&root, "bob", new_uid);
    assert_eq!(
        moved,
        BoxHome {
            path: old.path.clone(),
            uid: new_uid,
            gid: new_uid,
            reowned_from: Some(BOB),
        }
    );
    assert_owned_0700(&moved);
    for file in &files {
        let m = std::fs::symlink_metadata(file).unwrap();
        assert_eq!((m.uid(), m.gid()), (new_uid, new_uid), "{}", file.display());
    }
    let m = std::fs::metadata(&outside).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));
    // The link was re-owned itself; what it points to is the box's anyway.
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("cur"));

    // Handed over once: a rerun finds it right and changes nothing.
    let mut paths = dirs(&moved);
    paths.extend(files.iter().cloned());
    let before = snapshot(&paths);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        ensure(&root, "bob", new_uid),
        BoxHome {
            reowned_from: None,
            ..moved
        }
    );
    assert_eq!(snapshot(&paths), before);
}

#[test]
fn concurrent_callers_for_distinct_accounts_do_not_interfere() {
    if !root_or_skip("concurrent_callers_for_distinct_accounts_do_not_interfere") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let homes: Vec<BoxHome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let root = &root;
                s.spawn(move || ensure(root, &format!("user{i}"), FIRST_UID + 100 + i))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, home) in (0..).zip(&homes) {
        assert_eq!(home.path, root.join(format!("user{i}")));
        assert_eq!(home.uid, FIRST_UID + 100 + i);
        assert_owned_0700(home);
    }
    // Each made its own home and nothing else: no half-made home left behind.
    let mut names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
    expected.push(".lock".into());
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn a_home_left_half_made_by_a_power_cut_is_made_again() {
    if !root_or_skip("a_home_left_half_made_by_a_power_cut_is_made_again") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    std::fs::create_dir_all(root.join(".new-alice/Maildir")).unwrap();
    std::fs::write(root.join(".new-alice/Maildir/half"), "").unwrap();
    let alice = ensure(&root, "alice", ALICE);
    assert_eq!(alice.uid, ALICE);
    assert_owned_0700(&alice);
    assert!(!alice.maildir().join("half").exists());
    assert!(!root.join(".new-alice").exists());
}

#[test]
fn a_home_not_owned_by_a_box_uid_or_not_a_directory_is_refused_not_given_away() {
    if !root_or_skip("a_home_not_owned_by_a_box_uid_or_not_a_directory_is_refused_not_given_away") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    std::fs::create_dir_all(root.join("alice/Maildir")).unwrap();
    let err = ensure_maildir(&root, "alice", ALICE).unwrap_err();
    assert!(
        matches!(
            err,
            MaildirError::ForeignOwner {
                uid: 0,
                box_uid: ALICE,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("owned by uid 0"), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("chown -R {ALICE}:{ALICE}")),
        "{err}"
    );
    for dir in [root.join("alice"), root.join("alice/Maildir")] {
        assert_eq!(std::fs::metadata(dir).unwrap().uid(), 0);
    }

    // Just past the box range, as a host's other users and containers are.
    let above = LAST_UID + 1;
    std::os::unix::fs::chown(root.join("alice"), Some(above), Some(above)).unwrap();
    let err = ensure_maildir(&root, "alice", ALICE).unwrap_err();
    assert!(
        matches!(err, MaildirError::ForeignOwner { uid, .. } if uid == above),
        "{err:?}"
    );
    assert_eq!(std::fs::metadata(root.join("alice")).unwrap().uid(), above);

    let bob = ensure(&root, "bob", BOB);
    std::os::unix::fs::symlink(&bob.path, root.join("carol")).unwrap();
    std::fs::write(root.join("dave"), "").unwrap();
    for name in ["carol", "dave"] {
        let err = ensure_maildir(&root, name, FIRST_UID).unwrap_err();
        assert!(
            matches!(&err, MaildirError::NotADirectory { path } if *path == root.join(name)),
            "{err:?}"
        );
    }
    assert_eq!(std::fs::metadata(&bob.path).unwrap().uid(), BOB);
}

#[test]
fn a_uid_outside_the_box_range_is_refused_before_anything_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    for uid in [0, 1000, FIRST_UID - 1, LAST_UID + 1, 65534] {
        let err = ensure_maildir(&root, "alice", uid).unwrap_err();
        assert!(
            matches!(&err, MaildirError::UidOutOfRange { name, uid: u } if name == "alice" && *u == uid),
            "{uid}: {err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("expected {FIRST_UID}-{LAST_UID}")),
            "{err}"
        );
    }
    assert!(!root.exists());
}

#[test]
fn a_name_that_is_not_a_dns_label_is_refused_before_anything_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    for name in [
        "",
        "../etc",
        "a/b",
        ".lock",
        ".new-x",
        "Alice",
        "-x",
        &"a".repeat(64),
    ] {
        let err = ensure_maildir(&root, name, FIRST_UID).unwrap_err();
        assert!(
            matches!(&err, MaildirError::InvalidName { name: n } if n == name),
            "{name:?}: {err:?}"
        );
        assert!(err.to_string().contains("DNS label"), "{err}");
    }
    assert!(!root.exists());
}
