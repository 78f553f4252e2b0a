//! The containers layer against a real containerd: trixie's (the appliance's version),
//! fetched by `make containerd-trixie`, run under the project's Supervisor with its own
//! root, state and socket in a temporary directory, never the host's.

mod common;

use std::path::{Path, PathBuf};

use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::ListSnapshotsRequest;
use containerd_client::services::v1::{GetImageRequest, ListImagesRequest};
use letterbox::containers::{self, task, Client, ContainerSpec, Containerd};
use letterbox::supervise::{Reaper, Scope, Supervisor, Unit, UnitState};
use sha2::{Digest, Sha256};

/// A containerd of its own, under the Supervisor; on drop (also when a test fails) the
/// containerd and its shims are killed, mounts under its directory unmounted, and the
/// directory removed.
struct Daemon {
    dir: tempfile::TempDir,
    containerd: Containerd,
    supervisor: Supervisor,
    client: Client,
}

impl Daemon {
    /// None (the test is skipped, saying why) without root or the fetched binaries.
    async fn start(test: &str) -> Option<Daemon> {
        if !common::is_root() {
            common::skip(test, "needs root (containerd, overlayfs mounts)");
            return None;
        }
        let bin = common::trixie_containerd().join("root/usr/bin");
        if !bin.join("containerd").is_file()
            || !common::trixie_containerd().join("bin/runc").is_file()
        {
            common::skip(
                test,
                "trixie's containerd and runc are not in .cache/containerd-trixie (make containerd-trixie fetches them)",
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let containerd = Containerd::under(dir.path(), bin.join("containerd"), vec![bin]);
        containerd.prepare().unwrap();
        let supervisor = Supervisor::new(Reaper::start(Scope::Spawned).unwrap());
        let command = containerd.clone();
        supervisor
            .start(Unit::process("containerd", move || command.command()))
            .unwrap();
        let client = Client::connect(&containerd.socket, common::TIMEOUT).await;
        let client = match client {
            Ok(client) => client,
            Err(e) => panic!(
                "containerd did not come up: {}\n{}",
                letterbox::error_chain(&e),
                supervisor.output("containerd", 40).unwrap().join("\n")
            ),
        };
        Some(Daemon {
            dir,
            containerd,
            supervisor,
            client,
        })
    }

    /// Stops containerd as the agent would; drop then finds nothing left to kill.
    async fn stop(&self) {
        self.supervisor.stop("containerd").await.unwrap();
    }

    fn pid(&self) -> Option<i32> {
        self.supervisor
            .states()
            .into_iter()
            .find_map(|(name, state)| match state {
                UnitState::Running { pid, .. } if name == "containerd" => pid.map(|p| p.as_raw()),
                _ => None,
            })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        common::clear_containerd_leftovers(&self.containerd.socket, self.dir.path());
        // The containers' parent cgroup in every hierarchy; left while another test uses it.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(hierarchy.path().join("letterbox"));
        }
    }
}

/// A file in an OCI layout: its digest, and the descriptor JSON that points at it.
fn put_blob(layout: &Path, bytes: &[u8], media_type: &str) -> (String, serde_json::Value) {
    let hex = data_encoding::HEXLOWER.encode(&Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    let digest = format!("sha256:{hex}");
    let desc = serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()});
    (digest, desc)
}

/// An uncompressed layer: a tar of `root`, owned by root.
fn tar_layer(root: &Path) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .args([
            "--create",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--sort=name",
            "-C",
        ])
        .arg(root)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A two-layer OCI layout: busybox (static) with a few applets and the mount points, then
/// `/etc/message`. Returns the layout directory and the layers' diff IDs.
fn build_layout(dir: &Path) -> (PathBuf, Vec<String>) {
    let base = dir.join("base");
    std::fs::create_dir_all(base.join("bin")).unwrap();
    for d in ["proc", "dev", "sys", "tmp", "run", "etc"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", base.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "touch"] {
        std::os::unix::fs::symlink("busybox", base.join("bin").join(applet)).unwrap();
    }
    let top = dir.join("top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/message"), "hello from the second layer\n").unwrap();

    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let tar = "application/vnd.oci.image.layer.v1.tar";
    let (base_digest, base_desc) = put_blob(&layout, &tar_layer(&base), tar);
    let (top_digest, top_desc) = put_blob(&layout, &tar_layer(&top), tar);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [base_digest, top_digest]},
    });
    let (_, config_desc) = put_blob(
        &layout,
        config.to_string().as_bytes(),
        "application/vnd.oci.image.config.v1+json",
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc, "layers": [base_desc, top_desc],
    });
    let (_, mut manifest_desc) = put_blob(
        &layout,
        manifest.to_string().as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    manifest_desc["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    (layout, vec![base_digest, top_digest])
}

/// The snapshots in the agent's namespace: (name, parent).
async fn snapshots(client: &Client) -> Vec<(String, String)> {
    let mut replies = SnapshotsClient::new(client.channel())
        .list(client.request(ListSnapshotsRequest {
            snapshotter: containers::SNAPSHOTTER.into(),
            filters: vec![],
        }))
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        all.extend(reply.info.into_iter().map(|i| (i.name, i.parent)));
    }
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_under_the_supervisor_and_answers_version() {
    let test = "containerd_runs_under_the_supervisor_and_answers_version";
    let Some(daemon) = Daemon::start(test).await else {
        return;
    };
    let version = daemon.client.version().await.unwrap();
    assert!(
        version.starts_with("1.7."),
        "trixie's containerd, got {version}"
    );
    let pid = daemon.pid().expect("the containerd unit is running");
    assert!(daemon.containerd.socket.exists());
    // Its own root and state, nothing of the host's.
    assert!(daemon
        .containerd
        .root
        .join("io.containerd.metadata.v1.bolt")
        .is_dir());
    daemon.supervisor.stop("containerd").await.unwrap();
    assert!(
        common::wait_until(common::TIMEOUT, || !Path::new(&format!("/proc/{pid}"))
            .exists()),
        "containerd (pid {pid}) still runs after the unit stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_layout_imports_unpacks_and_imports_again_without_changes() {
    let test = "an_oci_layout_imports_unpacks_and_imports_again_without_changes";
    let Some(daemon) = Daemon::start(test).await else {
        return;
    };
    let (layout, diff_ids) = build_layout(daemon.dir.path());
    let client = &daemon.client;
    let first = containers::import_oci_layout(client, &layout, "letterbox-test:1")
        .await
        .unwrap_or_else(|e| panic!("{}", letterbox::error_chain(&e)));
    assert_eq!((first.blobs_written, first.layers_unpacked), (4, 2));

    let image = ImagesClient::new(client.channel())
        .get(client.request(GetImageRequest {
            name: "letterbox-test:1".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(image.target.unwrap().digest, first.manifest);
    // The chain: the first layer's diff ID, then the top, whose parent it is. The lease is
    // gone and its garbage collection has run: the labels alone keep them.
    let chain = snapshots(client).await;
    assert_eq!(
        chain,
        {
            let mut expected = vec![
                (diff_ids[0].clone(), String::new()),
                (first.chain_id.clone(), diff_ids[0].clone()),
            ];
            expected.sort();
            expected
        },
        "the unpacked snapshots"
    );

    let second = containers::import_oci_layout(client, &layout, "letterbox-test:1")
        .await
        .unwrap();
    assert_eq!((second.blobs_written, second.layers_unpacked), (0, 0));
    assert_eq!(second.chain_id, first.chain_id);
    assert_eq!(snapshots(client).await, chain);
    let images = ImagesClient::new(client.channel())
        .list(client.request(ListImagesRequest { filters: vec![] }))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(images.len(), 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_in_a_read_only_container_and_its_exit_status_is_seen() {
    let test = "a_task_runs_in_a_read_only_container_and_its_exit_status_is_seen";
    let Some(daemon) = Daemon::start(test).await else {
        return;
    };
    let (layout, _) = build_layout(daemon.dir.path());
    let client = &daemon.client;
    let image = containers::import_oci_layout(client, &layout, "letterbox-test:1")
        .await
        .unwrap_or_else(|e| panic!("{}", letterbox::error_chain(&e)));
    let script = "cat /etc/message; \
        cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
        touch /written 2>/dev/null && exit 1; exit 7";
    // Unique: its cgroup, /letterbox/ID, is the host's.
    let id = format!("probe-{}", common::unique_id());
    let spec = ContainerSpec {
        id: id.clone(),
        image: image.name.clone(),
        chain_id: image.chain_id.clone(),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        memory_limit_bytes: 32 << 20,
        runc: common::trixie_containerd().join("bin/runc"),
        runc_root: daemon.containerd.state.join("runc"),
    };
    task::create_container(client, &spec)
        .await
        .unwrap_or_else(|e| panic!("{}", letterbox::error_chain(&e)));
    let log = daemon.dir.path().join("probe.log");
    let ran = async {
        task::start_task(client, &id, &log).await?;
        task::wait_task(client, &id).await
    }
    .await;
    let deleted = task::delete_container(client, &id).await;
    let exit = ran.unwrap_or_else(|e| {
        panic!(
            "{}\ncontainerd:\n{}",
            letterbox::error_chain(&e),
            daemon
                .supervisor
                .output("containerd", 40)
                .unwrap()
                .join("\n")
        )
    });
    deleted.unwrap();
    let output = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        exit.status, 7,
        "the script's exit status; its output:\n{output}"
    );
    assert!(output.contains("hello from the second layer"), "{output}");
    assert!(
        output.contains(&(32u64 << 20).to_string()),
        "the memory limit: {output}"
    );
    // runc removed the task's cgroup, and kept its state in our directory.
    assert!(!Path::new("/sys/fs/cgroup/memory/letterbox")
        .join(&id)
        .exists());
    assert!(daemon.containerd.state.join("runc/letterbox").is_dir());
    daemon.stop().await;
}
