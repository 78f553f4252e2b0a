//! Each account's home and Maildir: owned by a uid of its own that never changes, mode
//! 0700, made once and then left alone. Needs root, to give directories away.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use letterbox::mail::maildir::{ensure_maildir, BoxHome, MaildirError, FIRST_UID};

fn root_or_skip(test: &str) -> bool {
    let root = common::is_root();
    if !root {
        common::skip(test, "needs root to chown directories");
    }
    root
}

fn ensure(root: &Path, account: &str) -> BoxHome {
    ensure_maildir(root, account).unwrap()
}

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
fn two_accounts_get_distinct_uids_that_stay_theirs_on_a_rerun() {
    if !root_or_skip("two_accounts_get_distinct_uids_that_stay_theirs_on_a_rerun") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let alice = ensure(&root, "alice");
    let bob = ensure(&root, "bob");
    assert_eq!(alice.path, root.join("alice"));
    assert_eq!(alice.maildir(), root.join("alice/Maildir"));
    assert_eq!((alice.uid, alice.gid), (FIRST_UID, FIRST_UID));
    assert_eq!((bob.uid, bob.gid), (FIRST_UID + 1, FIRST_UID + 1));
    // A restart keeps nothing in memory: the other order gives each the same uid.
    assert_eq!(ensure(&root, "bob"), bob);
    assert_eq!(ensure(&root, "alice"), alice);
}

#[test]
fn homes_and_maildirs_are_owned_by_the_box_uid_with_mode_0700() {
    if !root_or_skip("homes_and_maildirs_are_owned_by_the_box_uid_with_mode_0700") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let alice = ensure(&root, "alice");
    let bob = ensure(&root, "bob");
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
    let alice = ensure(&root, "alice");
    let mut paths = dirs(&alice);
    paths.push(root.clone());
    let before = snapshot(&paths);
    // ctime has nanoseconds, but a coarse clock could hide a change made in the same tick.
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(ensure(&root, "alice"), alice);
    assert_eq!(snapshot(&paths), before);
}

#[test]
fn a_missing_maildir_folder_and_a_wrong_mode_or_group_are_repaired() {
    if !root_or_skip("a_missing_maildir_folder_and_a_wrong_mode_or_group_are_repaired") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let alice = ensure(&root, "alice");
    std::fs::remove_dir(alice.maildir().join("new")).unwrap();
    let cur = alice.maildir().join("cur");
    std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(alice.maildir(), None, Some(0)).unwrap();
    assert_eq!(ensure(&root, "alice"), alice);
    assert_owned_0700(&alice);
}

#[test]
fn a_uid_is_not_reused_while_its_home_exists() {
    if !root_or_skip("a_uid_is_not_reused_while_its_home_exists") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let alice = ensure(&root, "alice");
    ensure(&root, "bob");
    assert_eq!(ensure(&root, "carol").uid, FIRST_UID + 2);
    std::fs::remove_dir_all(&alice.path).unwrap();
    // Gone with its mail: only now may another account have its uid.
    assert_eq!(ensure(&root, "dave").uid, alice.uid);
}

#[test]
fn concurrent_callers_never_share_a_uid() {
    if !root_or_skip("concurrent_callers_never_share_a_uid") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    let mut uids: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let root = &root;
                s.spawn(move || ensure(root, &format!("user{i}")).uid)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    uids.sort();
    assert_eq!(uids, (FIRST_UID..FIRST_UID + 8).collect::<Vec<_>>());
}

#[test]
fn a_home_left_half_made_by_a_power_cut_is_made_again() {
    if !root_or_skip("a_home_left_half_made_by_a_power_cut_is_made_again") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    std::fs::create_dir_all(root.join(".new-alice/Maildir")).unwrap();
    let alice = ensure(&root, "alice");
    assert_eq!(alice.uid, FIRST_UID);
    assert_owned_0700(&alice);
    assert!(!root.join(".new-alice").exists());
}

#[test]
fn a_home_not_owned_by_a_box_uid_or_not_a_directory_is_refused_not_given_away() {
    if !root_or_skip("a_home_not_owned_by_a_box_uid_or_not_a_directory_is_refused_not_given_away") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mail");
    std::fs::create_dir_all(root.join("alice")).unwrap();
    let err = ensure_maildir(&root, "alice").unwrap_err();
    assert!(
        matches!(err, MaildirError::ForeignOwner { uid: 0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("owned by uid 0"), "{err}");
    assert_eq!(std::fs::metadata(root.join("alice")).unwrap().uid(), 0);

    let bob = ensure(&root, "bob");
    std::os::unix::fs::chown(root.join("alice"), Some(bob.uid), Some(bob.gid)).unwrap();
    let err = ensure_maildir(&root, "alice").unwrap_err();
    assert!(matches!(err, MaildirError::SharedUid { .. }), "{err:?}");

    std::os::unix::fs::symlink(&bob.path, root.join("carol")).unwrap();
    let err = ensure_maildir(&root, "carol").unwrap_err();
    assert!(matches!(err, MaildirError::NotADirectory { .. }), "{err:?}");
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
        let err = ensure_maildir(&root, name).unwrap_err();
        assert!(
            matches!(&err, MaildirError::InvalidName { name: n } if n == name),
            "{name:?}: {err:?}"
        );
        assert!(err.to_string().contains("DNS label"), "{err}");
    }
    assert!(!root.exists());
}
