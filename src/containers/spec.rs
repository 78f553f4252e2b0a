//! The mail containers' runtime specs, built from small parts (as host-ctr does): a
//! confined base, then the capabilities, mounts and network namespace each container needs.
//!
//! - a box: Dovecot alone, in the box's own network namespace, with its config, the TLS
//!   files and that box's home, nothing else of the data partition;
//! - the front, as two containers in the host's network namespace (so that they see every
//!   client's real address): `front-postfix` and `front-dovecot`. Two, not one: each is a
//!   single foreground program that containerd watches and the agent restarts on its own,
//!   so no supervisor runs inside a container, a crash of one leaves the other serving, and
//!   each has its own memory limit and capabilities. They share only a socket directory
//!   (Dovecot's auth socket, for Postfix's SASL), bind-mounted into both.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, Spec,
};

use super::ContainersError;
use crate::mail::paths::{
    BOX_HOME, DOVECOT_CONFIG, POSTFIX_CONFIG, POSTFIX_DATA, POSTFIX_QUEUE, RELAY_DIR, RESOLV_CONF,
    TLS_CERT,
};
use crate::mail::BoxPlan;
use crate::webmail;

/// The front's two containers' ids; a box's is `box-<name>`.
pub const FRONT_POSTFIX: &str = "front-postfix";
pub const FRONT_DOVECOT: &str = "front-dovecot";
/// Where both front containers see their shared socket directory.
pub use crate::mail::paths::FRONT_SOCKETS;
/// Each front container's memory limit: Postfix's and Dovecot's processes for every
/// client at once, far above a box's.
pub const FRONT_MEMORY_LIMIT: u64 = 128 << 20;

/// The image's environment (the process does not inherit it from the image config).
const PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// What Dovecot's master, started as root, needs, and no more (tests/mail_box.rs fails
/// without any one of the first five): bind 143, 993 and 24 (NET_BIND_SERVICE), run its
/// services and the user's processes as their own uids (SETUID, SETGID), give its sockets
/// their owners (CHOWN) and chroot its login processes (SYS_CHROOT); and signal those
/// processes, which run under other uids, to end them when idle (KILL: without it each
/// stays, and the box's memory grows; `make bench` found it). Not DAC_OVERRIDE or FOWNER:
/// every file it touches is its own or the box uid's. All six are in the runtimes' default
/// set: nothing is added to it, most of it is dropped.
pub const DOVECOT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::Kill,
    Capability::NetBindService,
    Capability::Setgid,
    Capability::Setuid,
    Capability::SysChroot,
];

/// What Postfix's master, started as root by `postfix start-fg`, needs (tests/mail_e2e.rs
/// runs it): to bind 25, switch to the postfix uid, and let `postfix-script` check and fix
/// the queue's owners and modes (CHOWN, FOWNER, DAC_OVERRIDE: the queue directories are
/// postfix's, mode 0700), and signal its children (KILL). No SYS_CHROOT: `chroot = n`.
pub const POSTFIX_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Kill,
    Capability::NetBindService,
    Capability::Setgid,
    Capability::Setuid,
];

/// Host paths bind-mounted into a box.
#[derive(Debug, Clone)]
pub struct BoxFiles {
    /// The box's rendered `dovecot.conf` and `passwd` (read-only, at /etc/dovecot).
    pub dovecot_dir: PathBuf,
    /// `cert.pem` and `key.pem` (read-only).
    pub tls_dir: PathBuf,
    /// The box's home, holding its Maildir (read-write, this box only).
    pub home: PathBuf,
}

/// Host paths bind-mounted into the front's containers.
#[derive(Debug, Clone)]
pub struct FrontFiles {
    /// The rendered `main.cf`, `master.cf` (read-only, each over the image's own) and
    /// `resolv.conf`.
    pub postfix_dir: PathBuf,
    /// The front's rendered `dovecot.conf` and `passwd` (read-only, at /etc/dovecot).
    pub dovecot_dir: PathBuf,
    /// `cert.pem` and `key.pem` (read-only), for Postfix: the agent ends IMAP's TLS.
    pub tls_dir: PathBuf,
    /// Postfix's queue and its state (read-write: the data partition).
    pub postfix_queue: PathBuf,
    pub postfix_data: PathBuf,
    /// The socket directory both front containers share (read-write).
    pub sockets: PathBuf,
    /// The directory of the smarthost's login (`[mail] relayhost`), if there is one.
    pub relay_dir: Option<PathBuf>,
}

/// The confined base every mail container starts from: oci-spec's defaults (namespaces,
/// /proc, /dev, masked paths), a read-only root, no capabilities, no new privileges, the
/// memory limit in the cgroup `/letterbox/ID`.
pub fn base(id: &str, args: &[&str], memory_limit: u64) -> Result<Spec, ContainersError> {
    let mut spec = Spec::default();
    let process = ProcessBuilder::default()
        .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .env(vec![PATH.to_string()])
        .cwd("/")
        .no_new_privileges(true)
        .build()?;
    spec.set_process(Some(process));
    with_capabilities(&mut spec, &[])?;
    spec.set_hostname(Some(id.to_string()));
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(true));
    }
    let defaults = spec.linux().clone().unwrap_or_default();
    let memory = LinuxMemoryBuilder::default()
        .limit(i64::try_from(memory_limit).unwrap_or(i64::MAX))
        .build()?;
    let mut linux = LinuxBuilder::default()
        .resources(LinuxResourcesBuilder::default().memory(memory).build()?)
        .cgroups_path(PathBuf::from(format!("{}/{id}", super::CGROUP_PARENT)))
        .build()?;
    linux.set_namespaces(defaults.namespaces().clone());
    linux.set_masked_paths(defaults.masked_paths().clone());
    linux.set_readonly_paths(defaults.readonly_paths().clone());
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Gives the process exactly `caps` (bounding, permitted and effective; none inheritable
/// or ambient, so nothing passes past an exec as another user).
pub fn with_capabilities(spec: &mut Spec, caps: &[Capability]) -> Result<(), ContainersError> {
    let set: oci_spec::runtime::Capabilities = caps.iter().copied().collect();
    let none = oci_spec::runtime::Capabilities::new();
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .permitted(set.clone())
        .effective(set)
        .inheritable(none.clone())
        .ambient(none)
        .build()?;
    if let Some(process) = spec.process_mut() {
        process.set_capabilities(Some(caps));
    }
    Ok(())
}

fn add_mount(spec: &mut Spec, mount: Mount) {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(mount);
    spec.set_mounts(Some(mounts));
}

/// Bind-mounts `host` at `dest`, read-only unless `writable`; never a device or setuid file.
pub fn with_bind(
    spec: &mut Spec,
    host: &Path,
    dest: &str,
    writable: bool,
) -> Result<(), ContainersError> {
    let mode = if writable { "rw" } else { "ro" };
    let mount = MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(host)
        .options(
            ["rbind", mode, "nosuid", "nodev"]
                .map(String::from)
                .to_vec(),
        )
        .build()?;
    add_mount(spec, mount);
    Ok(())
}

/// A writable tmpfs at `dest` (mode 0755 unless `sticky`, then 1777 as /tmp is).
pub fn with_tmpfs(spec: &mut Spec, dest: &str, sticky: bool) -> Result<(), ContainersError> {
    let mode = if sticky { "mode=1777" } else { "mode=0755" };
    let mount = MountBuilder::default()
        .destination(dest)
        .typ("tmpfs")
        .source("tmpfs")
        .options(
            ["nosuid", "nodev", "noexec", mode, "size=16m"]
                .map(String::from)
                .to_vec(),
        )
        .build()?;
    add_mount(spec, mount);
    Ok(())
}

fn set_network(spec: &mut Spec, network: Option<LinuxNamespace>) {
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let mut namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    namespaces.extend(network);
    linux.set_namespaces(Some(namespaces));
}

/// Joins the network namespace at `path` (a box's, from `net::boxes::ensure_box_netns`).
pub fn join_network(spec: &mut Spec, path: &Path) -> Result<(), ContainersError> {
    let netns = LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Network)
        .path(path)
        .build()?;
    set_network(spec, Some(netns));
    Ok(())
}

/// Stays in the host's network namespace (no network namespace of its own).
pub fn host_network(spec: &mut Spec) {
    set_network(spec, None);
}

/// The scratch space Dovecot writes: its base_dir under /run, its state_dir, and /tmp.
fn dovecot_scratch(spec: &mut Spec) -> Result<(), ContainersError> {
    with_tmpfs(spec, "/run", false)?;
    with_tmpfs(spec, "/var/lib/dovecot", false)?;
    with_tmpfs(spec, "/tmp", true)
}

fn dovecot_args() -> [&'static str; 4] {
    ["dovecot", "-F", "-c", DOVECOT_CONFIG]
}

/// The directory of the TLS files inside the containers.
fn tls_dir() -> &'static str {
    Path::new(TLS_CERT)
        .parent()
        .and_then(Path::to_str)
        .expect("TLS_CERT is an absolute path with a parent")
}

fn config_dir(file: &str) -> &str {
    Path::new(file)
        .parent()
        .and_then(Path::to_str)
        .expect("a config file's path has a parent")
}

/// The container id of `account`'s box.
pub fn box_id(account: &BoxPlan) -> String {
    format!("box-{}", account.name)
}

/// `account`'s box: Dovecot in the box's network namespace at `netns`, its home the only
/// part of the data partition it sees, within `memory_limit` bytes.
pub fn box_spec(
    account: &BoxPlan,
    netns: &Path,
    files: &BoxFiles,
    memory_limit: u64,
) -> Result<Spec, ContainersError> {
    let mut spec = base(&box_id(account), &dovecot_args(), memory_limit)?;
    with_capabilities(&mut spec, DOVECOT_CAPABILITIES)?;
    join_network(&mut spec, netns)?;
    dovecot_scratch(&mut spec)?;
    with_bind(
        &mut spec,
        &files.dovecot_dir,
        config_dir(DOVECOT_CONFIG),
        false,
    )?;
    with_bind(&mut spec, &files.tls_dir, tls_dir(), false)?;
    with_bind(&mut spec, &files.home, BOX_HOME, true)?;
    Ok(spec)
}

/// The front's Postfix: `postfix start-fg` in the host's network namespace, its queue and
/// state on the data partition.
pub fn front_postfix_spec(files: &FrontFiles) -> Result<Spec, ContainersError> {
    let mut spec = base(
        FRONT_POSTFIX,
        &["postfix", "-c", POSTFIX_CONFIG, "start-fg"],
        FRONT_MEMORY_LIMIT,
    )?;
    with_capabilities(&mut spec, POSTFIX_CAPABILITIES)?;
    host_network(&mut spec);
    with_tmpfs(&mut spec, "/run", false)?;
    with_tmpfs(&mut spec, "/tmp", true)?;
    with_bind(&mut spec, &files.sockets, FRONT_SOCKETS, true)?;
    // File by file: the image's postfix-files and dynamicmaps.cf stay beside them.
    for file in ["main.cf", "master.cf"] {
        let dest = format!("{POSTFIX_CONFIG}/{file}");
        with_bind(&mut spec, &files.postfix_dir.join(file), &dest, false)?;
    }
    let resolv_conf = files.postfix_dir.join("resolv.conf");
    with_bind(&mut spec, &resolv_conf, RESOLV_CONF, false)?;
    if let Some(relay) = &files.relay_dir {
        with_bind(&mut spec, relay, RELAY_DIR, false)?;
    }
    with_bind(&mut spec, &files.tls_dir, tls_dir(), false)?;
    with_bind(&mut spec, &files.postfix_queue, POSTFIX_QUEUE, true)?;
    with_bind(&mut spec, &files.postfix_data, POSTFIX_DATA, true)?;
    Ok(spec)
}

/// The front's Dovecot: the IMAP proxy in the host's network namespace.
pub fn front_dovecot_spec(files: &FrontFiles) -> Result<Spec, ContainersError> {
    let mut spec = base(FRONT_DOVECOT, &dovecot_args(), FRONT_MEMORY_LIMIT)?;
    with_capabilities(&mut spec, DOVECOT_CAPABILITIES)?;
    host_network(&mut spec);
    dovecot_scratch(&mut spec)?;
    with_bind(&mut spec, &files.sockets, FRONT_SOCKETS, true)?;
    with_bind(
        &mut spec,
        &files.dovecot_dir,
        config_dir(DOVECOT_CONFIG),
        false,
    )?;
    Ok(spec)
}

/// The webmail's two containers' ids: nginx and PHP-FPM (two for the front's reasons).
pub const WEBMAIL_NGINX: &str = "webmail-nginx";
pub const WEBMAIL_PHP: &str = "webmail-php";
/// nginx's limit: its master and one worker.
pub const WEBMAIL_NGINX_MEMORY_LIMIT: u64 = 32 << 20;
/// PHP-FPM's: its master and up to four Roundcube workers at 64 MB of PHP memory each,
/// which do not all peak at once.
pub const WEBMAIL_PHP_MEMORY_LIMIT: u64 = 160 << 20;

/// nginx's master, started as root: bind 443 and 80 in its namespace, run its worker as
/// www-data (SETUID, SETGID), give its temporary directories to that user (CHOWN), and
/// signal the worker (KILL).
const NGINX_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::Kill,
    Capability::NetBindService,
    Capability::Setgid,
    Capability::Setuid,
];

/// PHP-FPM's master, started as root: run its workers as www-data, give its socket to
/// that user, and end idle workers.
const PHP_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
];

/// Host paths bind-mounted into the webmail's containers.
#[derive(Debug, Clone)]
pub struct WebmailFiles {
    /// The rendered nginx.conf, php-fpm.conf and config.inc.php (read-only).
    pub config_dir: PathBuf,
    pub tls_dir: PathBuf,
    /// PHP-FPM's socket, shared by both (read-write).
    pub sockets: PathBuf,
    /// Roundcube's database, des_key and uploads: PHP-FPM's only (read-write).
    pub data: PathBuf,
    /// The webmail's network namespace: loopback only (`net::forward`).
    pub netns: PathBuf,
}

/// What both webmail containers share: the namespace, the rendered files, the socket
/// directory, and scratch space.
fn webmail_base(
    id: &str,
    args: &[&str],
    memory_limit: u64,
    files: &WebmailFiles,
) -> Result<Spec, ContainersError> {
    let mut spec = base(id, args, memory_limit)?;
    join_network(&mut spec, &files.netns)?;
    with_tmpfs(&mut spec, "/run", false)?;
    with_tmpfs(&mut spec, "/tmp", true)?;
    with_bind(&mut spec, &files.config_dir, webmail::CONFIG_DIR, false)?;
    with_bind(&mut spec, &files.sockets, webmail::SOCKET_DIR, true)?;
    Ok(spec)
}

/// nginx: TLS on 443 and the redirect on 80, Roundcube's static files, PHP through the
/// shared socket.
pub fn webmail_nginx_spec(files: &WebmailFiles) -> Result<Spec, ContainersError> {
    let config = format!("{}/{}", webmail::CONFIG_DIR, webmail::NGINX_CONF);
    let mut spec = webmail_base(
        WEBMAIL_NGINX,
        &[webmail::NGINX_BIN, "-c", &config],
        WEBMAIL_NGINX_MEMORY_LIMIT,
        files,
    )?;
    with_capabilities(&mut spec, NGINX_CAPABILITIES)?;
    // nginx makes only the last part of a temporary path.
    with_tmpfs(&mut spec, webmail::NGINX_TEMP_DIR, false)?;
    with_bind(&mut spec, &files.tls_dir, webmail::TLS_DIR, false)?;
    Ok(spec)
}

/// PHP-FPM running Roundcube, its state on the data partition.
pub fn webmail_php_spec(files: &WebmailFiles) -> Result<Spec, ContainersError> {
    let config = format!("{}/{}", webmail::CONFIG_DIR, webmail::PHP_FPM_CONF);
    let mut spec = webmail_base(
        WEBMAIL_PHP,
        &[webmail::PHP_FPM_BIN, "-F", "-y", &config],
        WEBMAIL_PHP_MEMORY_LIMIT,
        files,
    )?;
    with_capabilities(&mut spec, PHP_CAPABILITIES)?;
    with_bind(&mut spec, &files.data, webmail::DATA_DIR, true)?;
    Ok(spec)
}
