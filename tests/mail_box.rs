//! The mail containers' runtime specs (`containers::spec`): each against its golden file
//! under tests/golden/containers, and a real box: trixie's containerd and runc run the
//! letterbox-mail image's Dovecot in a box network namespace on the agent's bridge, in a
//! fresh namespace standing for the host; the test delivers a message over LMTP from the
//! front's address and logs in over IMAP with STARTTLS.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use letterbox::containers::spec::{self, BoxFiles, FrontFiles};
use letterbox::containers::{self, task, Client, Containerd, Placement};
use letterbox::mail::{dovecot, maildir, paths, tls, BoxPlan, MailPlan};
use letterbox::net::boxes::{self, BoxNet, Bridge};
use letterbox::supervise::{Reaper, Scope, Supervisor, Unit, UnitState};
use oci_spec::runtime::Spec;

const PASSWORD: &str = "correct horse battery";

/// One account; IPv4 only, so the box has no IPv6 route to set up.
fn fixture(hash: &str) -> String {
    format!(
        "version = 1\n[system]\nhostname = \"mail\"\ndomain = \"example.org\"\n\
         [[interface]]\nname = \"eth0\"\nipv4 = [\"192.0.2.10/24\"]\ngateway4 = \"192.0.2.1\"\n\
         [[account]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n"
    )
}

fn plan(hash: &str) -> MailPlan {
    let config = letterbox::config::parse("fixture.toml", &fixture(hash)).expect("valid fixture");
    MailPlan::from(&config)
}

/// The spec as JSON, its capability sets sorted: oci-spec keeps them in a HashSet, whose
/// order changes from run to run.
fn pretty(spec: &Spec) -> String {
    let mut json = serde_json::to_value(spec).unwrap();
    if let Some(sets) = json["process"]["capabilities"].as_object_mut() {
        for set in sets.values_mut() {
            if let Some(caps) = set.as_array_mut() {
                caps.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    serde_json::to_string_pretty(&json).unwrap() + "\n"
}

/// The appliance's data partition layout, as the agent will pass it.
fn front_files() -> FrontFiles {
    let data = Path::new("/data/letterbox");
    FrontFiles {
        postfix_dir: data.join("mail/front/postfix"),
        dovecot_dir: data.join("mail/front/dovecot"),
        tls_dir: data.join("tls"),
        postfix_queue: data.join("mail/queue"),
        postfix_data: data.join("mail/postfix"),
        sockets: data.join("mail/front/sockets"),
        relay_dir: None,
    }
}

fn box_files(account: &BoxPlan) -> BoxFiles {
    let data = Path::new("/data/letterbox");
    BoxFiles {
        dovecot_dir: data.join("mail/boxes").join(&account.name),
        tls_dir: data.join("tls"),
        home: data.join("mail/homes").join(&account.name),
    }
}

fn mounts(json: &serde_json::Value) -> Vec<(String, String, String)> {
    json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let options: Vec<&str> = m["options"]
                .as_array()
                .map(|o| o.iter().map(|v| v.as_str().unwrap()).collect())
                .unwrap_or_default();
            (
                m["destination"].as_str().unwrap().to_string(),
                m["source"].as_str().unwrap_or("").to_string(),
                options.join(","),
            )
        })
        .collect()
}

fn network_namespace(json: &serde_json::Value) -> Option<serde_json::Value> {
    json["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .cloned()
}

#[test]
fn runtime_specs_match_their_golden_files() {
    let plan = plan("$6$saltsaltsalt$S/Pf/kKX1rCNRo4NCSDP1C7O8qxgb7lD0RhObcGYaY.ETFEN6GtQYVXCn22/nm.Ujp4KjOqcwTpiIrOQ.hq6S/");
    let alice = plan.find("alice").unwrap();
    let netns = boxes::netns_path(Path::new("/run/letterbox/netns"), &alice.name);
    let files = box_files(alice);
    let box_spec = spec::box_spec(alice, &netns, &files, 30 << 20).unwrap();
    let postfix = spec::front_postfix_spec(&front_files()).unwrap();
    let front_dovecot = spec::front_dovecot_spec(&front_files()).unwrap();
    letterbox::golden::check("containers/box-alice.json", &pretty(&box_spec));
    letterbox::golden::check("containers/front-postfix.json", &pretty(&postfix));
    letterbox::golden::check("containers/front-dovecot.json", &pretty(&front_dovecot));

    // What the golden files must say, whatever else changes in them.
    let json = serde_json::to_value(&box_spec).unwrap();
    assert_eq!(json["root"]["readonly"], true);
    assert_eq!(json["linux"]["resources"]["memory"]["limit"], 30 << 20);
    assert_eq!(
        network_namespace(&json).unwrap()["path"],
        netns.display().to_string()
    );
    let writable: Vec<(String, String)> = mounts(&json)
        .into_iter()
        .filter(|(_, _, options)| options.split(',').any(|o| o == "rw"))
        .map(|(dest, source, _)| (dest, source))
        .collect();
    assert_eq!(
        writable,
        [(
            paths::BOX_HOME.to_string(),
            files.home.display().to_string()
        )],
        "a box writes only its own home"
    );
    assert_eq!(
        json["process"]["capabilities"]["ambient"],
        serde_json::json!([])
    );
    for front in [&postfix, &front_dovecot] {
        let json = serde_json::to_value(front).unwrap();
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(
            network_namespace(&json),
            None,
            "the front sees clients' real addresses"
        );
        assert!(
            mounts(&json)
                .iter()
                .any(|(dest, source, _)| dest == spec::FRONT_SOCKETS
                    && *source == front_files().sockets.display().to_string()),
            "both front containers share the socket directory"
        );
    }
}

/// Everything the box test sets up; drop undoes it, also when the test fails: the box's
/// processes (by their cgroup), containerd and its shims, mounts under the directory, the
/// box's namespace file and the host namespace.
struct Lab {
    dir: tempfile::TempDir,
    host: common::Netns,
    containerd: Containerd,
    supervisor: Supervisor,
    /// The box's cgroup, unique to this run.
    cgroup: String,
}

impl Lab {
    fn containerd_log(&self) -> String {
        self.supervisor
            .output("containerd", 40)
            .unwrap_or_default()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let kill_all = |pids: &str| {
            for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        };
        for hierarchy in ["/sys/fs/cgroup", "/sys/fs/cgroup/memory"] {
            let procs = format!("{hierarchy}{}/cgroup.procs", self.cgroup);
            kill_all(&std::fs::read_to_string(procs).unwrap_or_default());
        }
        let containerd =
            self.supervisor
                .states()
                .into_iter()
                .find_map(|(name, state)| match state {
                    UnitState::Running { pid, .. } if name == "containerd" => pid,
                    _ => None,
                });
        if let Some(pid) = containerd {
            let _ = kill(pid, Signal::SIGKILL);
        }
        common::clear_containerd_leftovers(&self.containerd.socket, self.dir.path());
        for hierarchy in ["/sys/fs/cgroup", "/sys/fs/cgroup/memory"] {
            let _ = std::fs::remove_dir(format!("{hierarchy}{}", self.cgroup));
            let _ = std::fs::remove_dir(format!("{hierarchy}/letterbox"));
        }
    }
}

/// Run in the host namespace: `lmtp HOST RCPT` delivers one message over LMTP to the box
/// (retrying until Dovecot listens); `imap HOST LOGIN PASSWORD` logs in over IMAP after
/// STARTTLS and says how many messages INBOX holds.
const CLIENT: &str = r#"
import imaplib, smtplib, ssl, sys, time
mode, host = sys.argv[1:3]
if mode == "lmtp":
    rcpt = sys.argv[3]
    deadline = time.monotonic() + 30
    while True:
        try:
            lmtp = smtplib.LMTP(host, 24, timeout=5)
            break
        except OSError as e:
            if time.monotonic() > deadline:
                sys.exit(f"LMTP {host}:24 never answered: {e}")
            time.sleep(0.05)
    message = f"From: tester@example.net\r\nTo: {rcpt}\r\nSubject: hello box\r\n\r\nfirst message\r\n"
    refused = lmtp.sendmail("tester@example.net", [rcpt], message)
    lmtp.quit()
    print("lmtp-delivered", refused, flush=True)
else:
    login, password = sys.argv[3:5]
    imap = imaplib.IMAP4(host, 143, timeout=10)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    imap.starttls(context)
    print("imap-tls", imap.sock.version(), flush=True)
    typ, _ = imap.login(login, password)
    print("imap-login", typ, flush=True)
    typ, data = imap.select("INBOX")
    print("imap-messages", data[0].decode(), flush=True)
    imap.logout()
"#;

/// Runs the client in the host namespace; its stdout, or a panic with everything known.
fn run_client(lab: &Lab, args: &[&str], log: &Path) -> String {
    let output = lab
        .host
        .exec("python3")
        .args(["-c", CLIENT])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "client {args:?} failed:\n{stdout}{}\nbox log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_receives_mail_over_lmtp_and_serves_imap_after_starttls() {
    let test = "a_box_receives_mail_over_lmtp_and_serves_imap_after_starttls";
    if !common::is_root() {
        common::skip(test, "needs root (containerd, network namespaces, mounts)");
        return;
    }
    let bin = common::trixie_containerd().join("root/usr/bin");
    if !bin.join("containerd").is_file() || !common::trixie_containerd().join("bin/runc").is_file()
    {
        common::skip(
            test,
            "trixie's containerd and runc are not in .cache/containerd-trixie (make containerd-trixie fetches them)",
        );
        return;
    }
    if !common::built_mail_image().join("index.json").is_file() {
        common::skip(
            test,
            &format!(
                "the mail image is not in {} (make mail-image builds it)",
                common::built_mail_image().display()
            ),
        );
        return;
    }
    if !common::installed(test, "python3") {
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let containerd = Containerd::under(dir.path(), bin.join("containerd"), vec![bin]);
    containerd.prepare().unwrap();
    let supervisor = Supervisor::new(Reaper::start(Scope::Spawned).unwrap());
    let lab = Lab {
        host: common::Netns::new("mbox"),
        containerd: containerd.clone(),
        supervisor,
        cgroup: format!("/letterbox/box-alice-{}", common::unique_id()),
        dir,
    };
    lab.supervisor
        .start(Unit::process("containerd", move || containerd.command()))
        .unwrap();
    let client = Client::connect(&lab.containerd.socket, common::TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "containerd did not come up: {}\n{}",
                letterbox::error_chain(&e),
                lab.containerd_log()
            )
        });
    let started = Instant::now();
    let image =
        containers::import_oci_layout(&client, &common::built_mail_image(), "letterbox-mail:test")
            .await
            .unwrap_or_else(|e| panic!("{}", letterbox::error_chain(&e)));
    let imported = started.elapsed();

    let plan = plan(&letterbox::passwd::hash(PASSWORD).unwrap());
    let alice = plan.find("alice").unwrap().clone();
    let data = lab.dir.path().join("data");

    // The box's network: the bridge with the front's address, then the box's namespace.
    let bridge = Bridge {
        name: "lbbr0".into(),
        ipv4: ipnet::Ipv4Net::new(plan.front_ipv4, 24).unwrap(),
        ipv6_gateway: None,
    };
    let net = BoxNet {
        name: alice.name.clone(),
        ipv4: alice.ipv4,
        ipv6: None,
    };
    let netns_dir = lab.dir.path().join("netns");
    let netns = lab.host.block_on_inside(async {
        boxes::ensure_bridge(&bridge).await.expect("bridge");
        let (path, _) = boxes::ensure_box_netns(&bridge, &netns_dir, &net)
            .await
            .expect("box network");
        path
    });

    // Its files: the rendered Dovecot config, the TLS pair, the home with its Maildir.
    let dovecot_dir = data.join("boxes/alice");
    std::fs::create_dir_all(&dovecot_dir).unwrap();
    std::fs::write(
        dovecot_dir.join("dovecot.conf"),
        dovecot::box_conf(&plan, &alice),
    )
    .unwrap();
    let passwd = dovecot_dir.join("passwd");
    std::fs::write(&passwd, dovecot::box_passwd(&alice)).unwrap();
    // Dovecot's auth process reads it as the image's dovecot group (gid 101).
    std::os::unix::fs::chown(&passwd, Some(0), Some(101)).unwrap();
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o640)).unwrap();
    for d in [lab.dir.path(), &data, &data.join("boxes"), &dovecot_dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tls_dir = data.join("tls");
    tls::ensure_self_signed(&tls_dir, &plan.certificate_names, SystemTime::now()).unwrap();
    let home = maildir::ensure_maildir(&data.join("homes"), &alice.name, alice.id).unwrap();
    let files = BoxFiles {
        dovecot_dir,
        tls_dir,
        home: home.path.clone(),
    };

    let mut runtime = spec::box_spec(&alice, &netns, &files, 64 << 20).unwrap();
    // Unique, as cgroups are the machine's: another run of this test may be under way.
    if let Some(linux) = runtime.linux_mut() {
        linux.set_cgroups_path(Some(PathBuf::from(&lab.cgroup)));
    }
    let placement = Placement {
        id: spec::box_id(&alice),
        image: image.name.clone(),
        chain_id: image.chain_id.clone(),
        runc: common::trixie_containerd().join("bin/runc"),
        runc_root: lab.containerd.state.join("runc"),
    };
    let log = lab.dir.path().join("box.log");
    let created = Instant::now();
    task::create_container_with(&client, &placement, &runtime)
        .await
        .unwrap_or_else(|e| panic!("{}", letterbox::error_chain(&e)));
    task::start_task(&client, &placement.id, &log)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}\nbox log:\n{}\ncontainerd:\n{}",
                letterbox::error_chain(&e),
                std::fs::read_to_string(&log).unwrap_or_default(),
                lab.containerd_log()
            )
        });
    let task_started = created.elapsed();

    let box_ip = alice.ipv4.to_string();
    let delivered = run_client(&lab, &["lmtp", &box_ip, &alice.address], &log);
    let delivered_after = created.elapsed();
    assert_eq!(
        delivered.trim(),
        "lmtp-delivered {}",
        "no recipient refused"
    );

    // The message is a file in alice's Maildir/new, owned by her box's uid (read before
    // IMAP, whose SELECT moves it to cur/).
    let new: Vec<PathBuf> = std::fs::read_dir(home.maildir().join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let meta = std::fs::metadata(&new[0]).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (alice.id, alice.id));
    let text = std::fs::read_to_string(&new[0]).unwrap();
    assert!(text.contains("Subject: hello box"), "{text}");

    let imap = run_client(&lab, &["imap", &box_ip, &alice.address, PASSWORD], &log);
    let login_works = created.elapsed();
    assert!(imap.contains("imap-tls TLS"), "{imap}");
    assert!(imap.contains("imap-login OK"), "{imap}");
    assert!(imap.contains("imap-messages 1"), "{imap}");

    task::kill_task(&client, &placement.id, 15, true)
        .await
        .unwrap();
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        task::wait_task(&client, &placement.id),
    )
    .await
    .expect("Dovecot stops on SIGTERM")
    .unwrap();
    task::delete_container(&client, &placement.id)
        .await
        .unwrap();
    lab.host
        .block_on_inside(async { boxes::remove_box_netns(&netns_dir, &net).await.unwrap() });
    lab.supervisor.stop("containerd").await.unwrap();
    eprintln!(
        "{test}: image imported in {imported:?}; after create: task started {task_started:?}, \
         delivered {delivered_after:?}, IMAP login done {login_works:?}; Dovecot exited with {}",
        exit.status
    );
}
