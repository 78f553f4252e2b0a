//! The containerd process: its configuration file, rendered here, and the command that runs
//! it. The agent runs the command as a supervised process unit; this layer only builds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ContainersError;

/// Where one containerd keeps everything: its own root, state and socket, so it never
/// shares anything with another containerd on the same host (the host's, or another test's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Containerd {
    /// The `containerd` binary.
    pub binary: PathBuf,
    /// Directories searched first for `containerd-shim-runc-v2` (containerd starts shims by
    /// name from its PATH).
    pub shim_dirs: Vec<PathBuf>,
    /// Persistent data: content store, metadata, snapshots (on the data partition).
    pub root: PathBuf,
    /// Runtime state: task bundles, shim sockets' records (a tmpfs on the appliance).
    pub state: PathBuf,
    /// The gRPC socket the agent talks to.
    pub socket: PathBuf,
}

/// Plugins the agent never uses: Kubernetes' CRI, and the snapshotters other than overlayfs
/// (their probing only adds noise, and `native` would copy whole layers).
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.native",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
];

impl Containerd {
    /// A containerd whose root, state, socket and config all live under `dir`.
    pub fn under(dir: &Path, binary: PathBuf, shim_dirs: Vec<PathBuf>) -> Containerd {
        Containerd {
            binary,
            shim_dirs,
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("containerd.sock"),
        }
    }

    /// The configuration file, next to the state (it is rendered anew at every start).
    pub fn config_path(&self) -> PathBuf {
        self.state.with_file_name("containerd.toml")
    }

    /// containerd's configuration (format version 2: read by 1.6 and 1.7, and migrated by 2.x).
    /// Paths are written as TOML basic strings, escaped by the toml crate.
    pub fn config(&self) -> String {
        let s = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let disabled: Vec<String> = DISABLED_PLUGINS
            .iter()
            .map(|p| toml::Value::String(p.to_string()).to_string())
            .collect();
        format!(
            "# Rendered by letterbox at every start: edits here are lost.\n\
             version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [{disabled}]\n\
             \n\
             [grpc]\n\
             address = {socket}\n\
             uid = 0\n\
             gid = 0\n\
             \n\
             # Without this, containerd would create /opt/containerd on the host.\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n\
             path = {opt}\n\
             \n\
             [plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\n\
             root_path = {snapshots}\n",
            root = s(&self.root),
            state = s(&self.state),
            disabled = disabled.join(", "),
            socket = s(&self.socket),
            opt = s(&self.root.join("opt")),
            snapshots = s(&self.root.join("io.containerd.snapshotter.v1.overlayfs")),
        )
    }

    /// Creates the directories and writes the configuration file; call before every start.
    pub fn prepare(&self) -> Result<(), ContainersError> {
        for dir in [&self.root, &self.state] {
            std::fs::create_dir_all(dir).map_err(|e| ContainersError::io(dir, e))?;
        }
        if let Some(dir) = self.socket.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ContainersError::io(dir, e))?;
        }
        let path = self.config_path();
        crate::atomic_file::replace(&path, self.config().as_bytes())
            .map_err(|e| ContainersError::io(&path, e))
    }

    /// The command that runs containerd in the foreground with this configuration.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config").arg(self.config_path());
        let mut path: Vec<PathBuf> = self.shim_dirs.clone();
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ));
        if let Ok(joined) = std::env::join_paths(path) {
            cmd.env("PATH", joined);
        }
        cmd
    }

    /// Kills a containerd of this configuration left running by an earlier agent (one
    /// killed under `letterbox run`; on the appliance a dead agent is a reboot). It holds
    /// the metadata database's lock, so a new one could not start. Its shims are left: they
    /// outlive containerd by design, and the new one takes their tasks over. The pids
    /// killed.
    pub fn kill_leftover(&self) -> Vec<i32> {
        let wanted = format!(
            "{}\0--config\0{}\0",
            self.binary.display(),
            self.config_path().display()
        );
        let mut killed = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline) == wanted
                && nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
            {
                killed.push(pid);
            }
        }
        killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_own_root_state_socket_and_no_cri() {
        let d = Containerd::under(
            Path::new("/data/containerd"),
            "/usr/bin/containerd".into(),
            vec![],
        );
        let config: toml::Table = d.config().parse().unwrap();
        assert_eq!(config["version"].as_integer(), Some(2));
        assert_eq!(config["root"].as_str(), Some("/data/containerd/root"));
        assert_eq!(config["state"].as_str(), Some("/data/containerd/state"));
        assert_eq!(
            config["grpc"]["address"].as_str(),
            Some("/data/containerd/containerd.sock")
        );
        let disabled = config["disabled_plugins"].as_array().unwrap();
        assert!(disabled.contains(&"io.containerd.grpc.v1.cri".into()));
        assert!(!disabled.contains(&"io.containerd.snapshotter.v1.overlayfs".into()));
        assert_eq!(
            config["plugins"]["io.containerd.internal.v1.opt"]["path"].as_str(),
            Some("/data/containerd/root/opt")
        );
    }

    #[test]
    fn a_path_with_quotes_stays_one_toml_string() {
        let d = Containerd::under(Path::new("/tmp/a \"b\""), "containerd".into(), vec![]);
        let config: toml::Table = d.config().parse().unwrap();
        assert_eq!(config["root"].as_str(), Some("/tmp/a \"b\"/root"));
    }

    #[test]
    fn command_runs_the_rendered_config_with_the_shims_first_on_path() {
        let d = Containerd::under(
            Path::new("/c"),
            "/opt/trixie/usr/bin/containerd".into(),
            vec!["/opt/trixie/usr/bin".into()],
        );
        let cmd = d.command();
        assert_eq!(cmd.get_program(), "/opt/trixie/usr/bin/containerd");
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["--config", "/c/containerd.toml"]);
        let path = cmd
            .get_envs()
            .find(|(k, _)| *k == "PATH")
            .and_then(|(_, v)| v)
            .unwrap();
        assert!(path.to_str().unwrap().starts_with("/opt/trixie/usr/bin:"));
    }
}
