//! The containers layer: the only code that talks to containerd.
//!
//! - [`daemon`]: containerd's configuration and command (the agent runs it as a process unit);
//! - [`client`]: a connection over its socket, in the `letterbox` namespace;
//! - [`import`]: an OCI image layout into the content store, unpacked into overlayfs
//!   snapshots (what `ctr images import` does on the client side);
//! - [`unpack`]: layers into a chain of overlayfs snapshots;
//! - [`spec`]: the mail containers' runtime specs (oci-spec), built from small parts;
//! - [`task`]: containers and their tasks.
//!
//! It uses only the gRPC services that containerd 1.6, 1.7 and 2.x share: version, content,
//! images, leases, snapshots, diff, containers and tasks.

pub mod client;
pub mod daemon;
pub mod import;
pub mod spec;
pub mod task;
pub mod unpack;

use std::path::{Path, PathBuf};

pub use client::Client;
pub use daemon::Containerd;
pub use import::{import_oci_layout, Imported};
pub use spec::{BoxFiles, FrontFiles};
pub use task::{ContainerSpec, Exit, Placement};

/// Every object the agent creates lives in this containerd namespace.
pub const NAMESPACE: &str = "letterbox";
/// The only snapshotter the agent uses.
pub const SNAPSHOTTER: &str = "overlayfs";
/// The cgroup every container's own is in (`/letterbox/ID`), under the hierarchy's root.
pub const CGROUP_PARENT: &str = "/letterbox";

/// Each running container's memory in use, by id: what counts against its limit, page
/// cache included. cgroup v2 (the appliance) keeps it in each cgroup's memory.current;
/// v1 (some hosts under `letterbox run`) in memory.usage_in_bytes under the memory
/// controller's own tree.
pub fn memory_in_use(cgroup_root: &Path) -> Vec<(String, u64)> {
    let ours = CGROUP_PARENT.trim_start_matches('/');
    let (parent, file) = match cgroup_root.join(ours) {
        v2 if v2.is_dir() => (v2, "memory.current"),
        _ => (
            cgroup_root.join("memory").join(ours),
            "memory.usage_in_bytes",
        ),
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut used: Vec<(String, u64)> = entries
        .flatten()
        .filter_map(|entry| {
            let bytes = std::fs::read_to_string(entry.path().join(file)).ok()?;
            Some((
                entry.file_name().to_string_lossy().into_owned(),
                bytes.trim().parse().ok()?,
            ))
        })
        .collect();
    used.sort();
    used
}

/// An OCI descriptor as containerd's gRPC messages carry it.
fn wire(desc: &oci_spec::image::Descriptor) -> containerd_client::types::Descriptor {
    containerd_client::types::Descriptor {
        media_type: desc.media_type().to_string(),
        digest: desc.digest().to_string(),
        size: desc.size() as i64,
        annotations: desc.annotations().clone().unwrap_or_default(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContainersError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("containerd did not answer on {} within {waited_secs} s", socket.display())]
    NotReady {
        socket: PathBuf,
        waited_secs: u64,
        #[source]
        source: containerd_client::tonic::transport::Error,
    },
    #[error("containerd {call}: {}", status.message())]
    Rpc {
        call: String,
        #[source]
        status: containerd_client::tonic::Status,
    },
    /// An OCI layout or image that cannot be imported: which file and what was wrong.
    #[error("{}: {message}", path.display())]
    Layout { path: PathBuf, message: String },
    #[error("runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

impl ContainersError {
    pub fn io(path: &Path, source: std::io::Error) -> ContainersError {
        ContainersError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn rpc(
        call: impl Into<String>,
    ) -> impl FnOnce(containerd_client::tonic::Status) -> ContainersError {
        let call = call.into();
        move |status| ContainersError::Rpc { call, status }
    }

    fn layout(path: &Path, message: impl Into<String>) -> ContainersError {
        ContainersError::Layout {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// The gRPC code when containerd refused a call (e.g. NotFound, AlreadyExists).
    pub fn code(&self) -> Option<containerd_client::tonic::Code> {
        match self {
            ContainersError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_in_use_reads_each_containers_cgroup_and_skips_what_is_not_one() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("letterbox");
        for (id, current) in [
            ("box-bob", Some("2048\n")),
            ("box-alice", Some("1024\n")),
            ("gone", None),
        ] {
            std::fs::create_dir_all(parent.join(id)).unwrap();
            if let Some(current) = current {
                std::fs::write(parent.join(id).join("memory.current"), current).unwrap();
            }
        }
        assert_eq!(
            memory_in_use(root.path()),
            [
                ("box-alice".to_string(), 1024),
                ("box-bob".to_string(), 2048)
            ]
        );
        assert_eq!(memory_in_use(&root.path().join("none")), []);

        // cgroup v1: the memory controller's own tree.
        let v1 = tempfile::tempdir().unwrap();
        let box_alice = v1.path().join("memory/letterbox/box-alice");
        std::fs::create_dir_all(&box_alice).unwrap();
        std::fs::write(box_alice.join("memory.usage_in_bytes"), "4096\n").unwrap();
        assert_eq!(memory_in_use(v1.path()), [("box-alice".to_string(), 4096)]);
    }
}
