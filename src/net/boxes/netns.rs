//! Named network namespaces, made as `ip netns add` makes them, and netlink sockets opened
//! inside them.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use rtnetlink::Handle;

use super::BoxNetError;
use crate::net::NetError;

/// statfs(2) magic of nsfs, the file system of /proc/*/ns/* and of their bind mounts.
const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);

/// Makes `path` a named network namespace as `ip netns add` does: `dir` a shared mount (so
/// that unmounting a namespace file reaches copies in mount namespaces made later, and the
/// namespace is not kept alive by them), and a new namespace bind-mounted onto `path`.
/// Returns whether it was created.
pub(super) fn ensure_netns_file(dir: &Path, path: &Path) -> Result<bool, BoxNetError> {
    std::fs::create_dir_all(dir).map_err(netns_error("create", dir))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if let Err(nix::Error::EINVAL) = mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        // Not a mount point yet: bind it onto itself first.
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(Some(dir), dir, None::<&str>, bind, None::<&str>)
            .map_err(nix_error("bind-mount", dir))?;
        mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)
            .map_err(nix_error("make shared", dir))?;
    }
    if is_netns_file(path) {
        return Ok(false);
    }
    File::create(path).map_err(netns_error("create", path))?;
    // A thread of its own: unshare moves only the calling thread into the new namespace,
    // and the thread ends right after, so no other work ever runs inside it.
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(nix_error("create a network namespace for", path))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(nix_error("bind-mount the new network namespace onto", path))
        })
        .join()
        .expect("the namespace thread does not panic")
    })?;
    Ok(true)
}

pub(super) fn is_netns_file(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Opens a routing netlink socket inside the namespace open as `netns`: a socket belongs
/// to the namespace of the thread that creates it, so a short-lived thread enters it.
pub(super) fn connect_in(
    netns: &File,
    path: &Path,
) -> Result<(Handle, tokio::task::JoinHandle<()>), BoxNetError> {
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle, _) = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(nix_error("enter", path))?;
            let _runtime = runtime.enter();
            rtnetlink::new_connection().map_err(|e| BoxNetError::from(NetError::Connect(e)))
        })
        .join()
        .expect("the netlink thread does not panic")
    })?;
    Ok((handle, tokio::spawn(connection)))
}

pub(super) fn netns_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BoxNetError + 'a {
    move |source| BoxNetError::Netns {
        action,
        path: path.into(),
        source,
    }
}

pub(super) fn nix_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(nix::Error) -> BoxNetError + 'a {
    move |errno| netns_error(action, path)(std::io::Error::from(errno))
}

/// Creates or repairs a named namespace that has only loopback, up: what runs in it reaches
/// nothing but what the agent forwards to it (`net::forward`). Returns its file.
pub async fn ensure_loopback_netns(
    netns_dir: &Path,
    name: &str,
) -> Result<(std::path::PathBuf, super::Changes), BoxNetError> {
    super::check_name(name)?;
    let mut changes = super::Changes::new();
    let path = super::netns_path(netns_dir, name);
    if ensure_netns_file(netns_dir, &path)? {
        changes.push(format!("network namespace {} created", path.display()));
    }
    let netns = File::open(&path).map_err(netns_error("open", &path))?;
    let (inside, connection) = connect_in(&netns, &path)?;
    let result = async {
        let lo = super::find_link(&inside, super::LOOPBACK)
            .await?
            .ok_or_else(|| NetError::LinkNotFound {
                name: format!("{} in {}", super::LOOPBACK, path.display()),
            })?;
        super::ensure_up(&inside, &lo, &mut changes).await
    }
    .await;
    connection.abort();
    result?;
    Ok((path, changes))
}
