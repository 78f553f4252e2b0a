//! Containers and their tasks: a runtime spec built with oci-spec, a container on a
//! read-only view of an unpacked image, and a task started, waited for and deleted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{MountsRequest, ViewSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::Code;
use oci_spec::runtime::Spec;

use super::unpack::remove_snapshot;
use super::{spec, Client, ContainersError, SNAPSHOTTER};

/// The shim every container runs under (containerd 1.6, 1.7 and 2.x all ship it).
const RUNTIME: &str = "io.containerd.runc.v2";
/// How containerd recognises a runtime spec in an `Any`.
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Labels every container the agent creates: it owns only those.
pub const OWNER_LABEL: &str = "io.letterbox.owner";

/// What a container runs and within which limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub id: String,
    /// The image it was created from (recorded on the container).
    pub image: String,
    /// The snapshot its root filesystem is a read-only view of (the image's chain ID).
    pub chain_id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub memory_limit_bytes: u64,
    /// The runc binary the shim runs for this container.
    pub runc: PathBuf,
    /// runc's state directory (else `/run/containerd/runc`, shared with the host's containerd).
    pub runc_root: PathBuf,
}

impl ContainerSpec {
    /// The OCI runtime spec: `spec::base` (read-only root, no capabilities at all, the
    /// memory limit) with this environment and a tmpfs on /tmp and /run.
    pub fn runtime_spec(&self) -> Result<Spec, ContainersError> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut spec = spec::base(&self.id, &args, self.memory_limit_bytes)?;
        if let Some(process) = spec.process_mut() {
            process.set_env(Some(self.env.clone()));
        }
        spec::with_tmpfs(&mut spec, "/tmp", true)?;
        spec::with_tmpfs(&mut spec, "/run", true)?;
        Ok(spec)
    }

    /// Where the container runs: everything but its runtime spec.
    pub fn placement(&self) -> Placement {
        Placement {
            id: self.id.clone(),
            image: self.image.clone(),
            chain_id: self.chain_id.clone(),
            runc: self.runc.clone(),
            runc_root: self.runc_root.clone(),
        }
    }
}

/// A container's image, snapshot and runtime, for a runtime spec built elsewhere
/// (`containers::spec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub id: String,
    /// The image it was created from (recorded on the container).
    pub image: String,
    /// The snapshot its root filesystem is a read-only view of (the image's chain ID).
    pub chain_id: String,
    /// The runc binary the shim runs for this container.
    pub runc: PathBuf,
    /// runc's state directory (else `/run/containerd/runc`, shared with the host's containerd).
    pub runc_root: PathBuf,
}

/// containerd's runc shim options (`containerd.runc.v1.Options`), only the fields we set:
/// containerd has no configuration key for them outside its CRI plugin, so each container
/// names them, as `ctr run --runc-binary` does.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "6")]
    binary_name: String,
    #[prost(string, tag = "7")]
    root: String,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
}

/// Creates the container: a read-only view of the image's snapshot, and its spec.
pub async fn create_container(
    client: &Client,
    spec: &ContainerSpec,
) -> Result<(), ContainersError> {
    create_container_with(client, &spec.placement(), &spec.runtime_spec()?).await
}

/// Creates the container `spec` places, with the runtime spec `runtime`.
pub async fn create_container_with(
    client: &Client,
    spec: &Placement,
    runtime: &Spec,
) -> Result<(), ContainersError> {
    let id = &spec.id;
    let runtime_spec = serde_json::to_vec(runtime)
        .map_err(|e| ContainersError::Spec(oci_spec::OciSpecError::SerDe(e)))?;
    SnapshotsClient::new(client.channel())
        .view(client.request(ViewSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.clone(),
            parent: spec.chain_id.clone(),
            labels: HashMap::new(),
        }))
        .await
        .map_err(ContainersError::rpc(format!(
            "view snapshot {} for {id}",
            spec.chain_id
        )))?;
    let options = RuncOptions {
        binary_name: spec.runc.display().to_string(),
        root: spec.runc_root.display().to_string(),
    };
    let container = Container {
        id: id.clone(),
        labels: HashMap::from([(OWNER_LABEL.to_string(), "letterbox".to_string())]),
        image: spec.image.clone(),
        runtime: Some(Runtime {
            name: RUNTIME.into(),
            options: Some(prost_types::Any {
                type_url: "containerd.runc.v1.Options".into(),
                value: prost::Message::encode_to_vec(&options),
            }),
        }),
        spec: Some(prost_types::Any {
            type_url: SPEC_TYPE.into(),
            value: runtime_spec,
        }),
        snapshotter: SNAPSHOTTER.into(),
        snapshot_key: id.clone(),
        ..Default::default()
    };
    let created = ContainersClient::new(client.channel())
        .create(client.request(CreateContainerRequest {
            container: Some(container),
        }))
        .await;
    if let Err(status) = created {
        remove_snapshot(client, id).await?;
        return Err(ContainersError::rpc(format!("create container {id}"))(
            status,
        ));
    }
    Ok(())
}

/// Creates and starts the container's task, its stdout and stderr appended to `log`.
/// Returns the task's pid.
pub async fn start_task(client: &Client, id: &str, log: &Path) -> Result<u32, ContainersError> {
    let rootfs = SnapshotsClient::new(client.channel())
        .mounts(client.request(MountsRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.into(),
        }))
        .await
        .map_err(ContainersError::rpc(format!("mounts of {id}")))?
        .into_inner()
        .mounts;
    let log = format!("file://{}", log.display());
    let mut tasks = TasksClient::new(client.channel());
    tasks
        .create(client.request(CreateTaskRequest {
            container_id: id.into(),
            rootfs,
            stdout: log.clone(),
            stderr: log,
            ..Default::default()
        }))
        .await
        .map_err(ContainersError::rpc(format!("create task {id}")))?;
    let started = tasks
        .start(client.request(StartRequest {
            container_id: id.into(),
            ..Default::default()
        }))
        .await
        .map_err(ContainersError::rpc(format!("start task {id}")))?;
    Ok(started.into_inner().pid)
}

/// Waits until the container's task has exited.
pub async fn wait_task(client: &Client, id: &str) -> Result<Exit, ContainersError> {
    let reply = TasksClient::new(client.channel())
        .wait(client.request(WaitRequest {
            container_id: id.into(),
            ..Default::default()
        }))
        .await
        .map_err(ContainersError::rpc(format!("wait for task {id}")))?;
    Ok(Exit {
        status: reply.into_inner().exit_status,
    })
}

/// Sends `signal` to every process of the container's task (`all`), or to its first
/// process only, the program's master (Postfix's `master`, Dovecot's): SIGHUP to the
/// master alone makes it reload while its children finish the connections they serve.
pub async fn kill_task(
    client: &Client,
    id: &str,
    signal: u32,
    all: bool,
) -> Result<(), ContainersError> {
    TasksClient::new(client.channel())
        .kill(client.request(KillRequest {
            container_id: id.into(),
            signal,
            all,
            ..Default::default()
        }))
        .await
        .map_err(ContainersError::rpc(format!("signal task {id}")))?;
    Ok(())
}

/// Deletes an exited task, then the container and its snapshot; what is already gone is
/// skipped, so this also cleans up after a failed start.
pub async fn delete_container(client: &Client, id: &str) -> Result<(), ContainersError> {
    let deleted = TasksClient::new(client.channel())
        .delete(client.request(DeleteTaskRequest {
            container_id: id.into(),
        }))
        .await;
    match deleted {
        Ok(_) => {}
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => return Err(ContainersError::rpc(format!("delete task {id}"))(status)),
    }
    let deleted = ContainersClient::new(client.channel())
        .delete(client.request(DeleteContainerRequest { id: id.into() }))
        .await;
    match deleted {
        Ok(_) => {}
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => {
            return Err(ContainersError::rpc(format!("delete container {id}"))(
                status,
            ))
        }
    }
    remove_snapshot(client, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "box-alice".into(),
            image: "letterbox-mail".into(),
            chain_id: format!("sha256:{}", "a".repeat(64)),
            args: vec!["/bin/true".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            memory_limit_bytes: 32 << 20,
            runc: "/usr/sbin/runc".into(),
            runc_root: "/run/letterbox/runc".into(),
        }
    }

    #[test]
    fn runtime_spec_has_read_only_root_no_capabilities_and_the_memory_limit() {
        let json = serde_json::to_value(spec().runtime_spec().unwrap()).unwrap();
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["process"]["args"], serde_json::json!(["/bin/true"]));
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            assert_eq!(
                json["process"]["capabilities"][set],
                serde_json::json!([]),
                "{set}"
            );
        }
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 32 << 20);
        assert_eq!(json["linux"]["cgroupsPath"], "/letterbox/box-alice");
        let mounts: Vec<&str> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert!(mounts.contains(&"/proc") && mounts.contains(&"/tmp") && mounts.contains(&"/run"));
        let namespaces = json["linux"]["namespaces"].as_array().unwrap();
        assert!(namespaces.iter().any(|n| n["type"] == "mount"));
        assert!(namespaces.iter().any(|n| n["type"] == "pid"));
    }

    #[test]
    fn runc_options_encode_binary_name_and_root_as_fields_6_and_7() {
        let bytes = prost::Message::encode_to_vec(&RuncOptions {
            binary_name: "/r".into(),
            root: "/s".into(),
        });
        // Wire type 2 (length-delimited): (6 << 3) | 2 = 0x32, (7 << 3) | 2 = 0x3a.
        assert_eq!(bytes, [0x32, 2, b'/', b'r', 0x3a, 2, b'/', b's']);
    }
}
