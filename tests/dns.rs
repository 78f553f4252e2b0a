//! The zone and the authoritative server, driven from outside: `letterbox zone` against
//! goldens and the BIND and Knot zone checkers; `letterbox dns serve` against dig,
//! hickory-resolver and raw sockets.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dns");
const SERIAL: &str = "2025010100";
const HASH: &str = "$6$rounds=5000$D2qZzs.Rnw9kukJH$sow4kApAYL9XT4PkGJ1FxWfMC4ZMuT7dGDJEie/ewJ6R7FP3jsLNzbzYuuEarHS3E/c0DvdIU0Mgsihx2495h0";

fn letterbox(args: &[&str]) -> Output {
    Command::new(common::letterbox_bin())
        .args(args)
        .output()
        .expect("run letterbox")
}

fn zone_text(file: Option<&str>) -> String {
    let state = format!("{FIXTURES}/state");
    let mut args = vec!["zone", "--state", &state, "--serial", SERIAL];
    if let Some(f) = file {
        args.insert(1, f);
    }
    let out = letterbox(&args);
    assert!(
        out.status.success(),
        "letterbox zone failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn accounts_file() -> String {
    format!("{FIXTURES}/accounts.toml")
}

#[test]
fn zone_of_default_file_matches_golden() {
    // With the fixture state's DKIM key, which is published whenever the state has one.
    letterbox::golden::check("dns/default.zone", &zone_text(None));
}

#[test]
fn zone_with_accounts_and_extra_records_matches_golden() {
    letterbox::golden::check("dns/accounts.zone", &zone_text(Some(&accounts_file())));
}

#[test]
fn zone_passes_named_checkzone() {
    if !common::installed("zone_passes_named_checkzone", "named-checkzone") {
        return;
    }
    for file in [None, Some(accounts_file())] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("example.org.zone");
        std::fs::write(&path, zone_text(file.as_deref())).unwrap();
        let out = Command::new("named-checkzone")
            // Every check that can fail, failing: names, NS, MX and SRV targets (no
            // CNAMEs, addresses present), DNSSEC-equal records, full integrity.
            .args([
                "-k", "fail", "-n", "fail", "-m", "fail", "-M", "fail", "-S", "fail",
            ])
            .args([
                "-r",
                "fail",
                "-i",
                "full",
                "-T",
                "warn",
                "-W",
                "warn",
                "example.org",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "named-checkzone rejected {file:?}:\n{report}"
        );
        assert!(
            !report.to_lowercase().contains("warning") && !report.contains("TTL set to prior"),
            "named-checkzone warned about {file:?}:\n{report}"
        );
    }
}

#[test]
fn zone_passes_knot_check() {
    if !common::installed("zone_passes_knot_check", "knotc") {
        return;
    }
    for file in [None, Some(accounts_file())] {
        let dir = tempfile::tempdir().unwrap();
        let zone = dir.path().join("example.org.zone");
        std::fs::write(&zone, zone_text(file.as_deref())).unwrap();
        let d = dir.path().display();
        let conf = dir.path().join("knot.conf");
        std::fs::write(
            &conf,
            format!(
                "server:\n  rundir: \"{d}\"\ndatabase:\n  storage: \"{d}\"\n\
                 zone:\n  - domain: example.org\n    file: \"{}\"\n",
                zone.display()
            ),
        )
        .unwrap();
        let out = Command::new("knotc")
            .arg("-c")
            .arg(&conf)
            .args(["zone-check", "example.org"])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "knot rejected {file:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---- the running server ----

/// `letterbox dns serve` on 127.0.0.1 (a port of its choosing), killed on drop; its
/// stderr lines are collected for `wait_for_line`.
struct Served {
    child: Child,
    port: u16,
    file: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

const BASE: &str = r#"version = 1
[system]
hostname = "mail"
domain = "example.org"
[[interface]]
name = "eth0"
ipv4 = ["192.0.2.10/24"]
ipv6 = ["2001:db8::10/64"]
[dns]
rate_limit = RATE
secondaries = [SECONDARIES]
[[account]]
name = "alice"
password_hash = "HASH"
"#;

fn config(rate: u32, secondaries: &[String]) -> String {
    let list: Vec<String> = secondaries.iter().map(|s| format!("\"{s}\"")).collect();
    BASE.replace("RATE", &rate.to_string())
        .replace("SECONDARIES", &list.join(", "))
        .replace("HASH", HASH)
}

impl Served {
    fn start(toml: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let mut served = Served::start_in(dir.path(), toml);
        served._dir = Some(dir);
        served
    }

    /// Serves `toml` with `dir/state` as the state directory (made with the fixture's
    /// DKIM key when missing), so that a second server can reuse the state.
    fn start_in(dir: &std::path::Path, toml: &str) -> Served {
        let state = dir.join("state");
        if !state.exists() {
            std::fs::create_dir_all(state.join("dkim")).unwrap();
            std::fs::copy(
                format!("{FIXTURES}/state/dkim/letterbox.pub"),
                state.join("dkim/letterbox.pub"),
            )
            .unwrap();
        }
        let file = dir.join("letterbox.toml");
        std::fs::write(&file, toml).unwrap();
        // Port 0: the server binds a free port itself and logs it, so no other test can
        // take the port between our choosing it and the server binding it.
        let mut child = Command::new(common::letterbox_bin())
            .args(["dns", "serve"])
            .arg(&file)
            .args(["--listen", "127.0.0.1:0", "--threads", "2"])
            .arg("--state")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        {
            let lines = stderr.clone();
            let pipe = BufReader::new(child.stderr.take().unwrap());
            std::thread::spawn(move || {
                for line in pipe.lines().map_while(Result::ok) {
                    eprintln!("server: {line}");
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut served = Served {
            child,
            port: 0,
            file,
            stderr,
            _dir: None,
        };
        let line = served.wait_for_line("serving example.org on ");
        let addr: SocketAddr = line
            .split(" on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        served.port = addr.port();
        let deadline = Instant::now() + Duration::from_secs(10);
        while served.query("example.org.", RecordType::SOA).is_none() {
            assert!(served.alive(), "the server exited");
            assert!(Instant::now() < deadline, "server did not start answering");
        }
        served
    }

    /// The first stderr line containing `needle` (waiting up to 10 s for it); the
    /// server must stay alive meanwhile.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(self.alive(), "the server exited before logging {needle:?}");
            assert!(
                Instant::now() < deadline,
                "the server never logged {needle:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// One UDP query without EDNS; None when no answer came within a second.
    fn query(&self, name: &str, rtype: RecordType) -> Option<Message> {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        socket.send_to(&m.to_vec().unwrap(), self.addr()).unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        Message::from_vec(&buf[..n]).ok()
    }

    fn dig(&self, args: &[&str]) -> String {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+time=2",
                "+tries=1",
                "+norec",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn serial(&self) -> u32 {
        let m = self.query("example.org.", RecordType::SOA).expect("SOA");
        match &m.answers[0].data {
            RData::SOA(soa) => soa.serial,
            other => panic!("not a SOA: {other:?}"),
        }
    }

    fn reload(&self, toml: &str) {
        std::fs::write(&self.file, toml).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn dig_gets_every_derived_record_over_udp_and_tcp() {
    if !common::installed("dig_gets_every_derived_record_over_udp_and_tcp", "dig") {
        return;
    }
    let s = Served::start(&config(0, &[]));
    for transport in ["+notcp", "+tcp"] {
        let short = |name: &str, t: &str| s.dig(&[transport, "+short", name, t]);
        assert!(
            short("example.org", "SOA").starts_with("ns1.example.org. hostmaster.example.org. ")
        );
        assert_eq!(short("example.org", "NS"), "ns1.example.org.\n");
        assert_eq!(short("example.org", "MX"), "10 mail.example.org.\n");
        assert_eq!(short("alice.example.org", "MX"), "10 mail.example.org.\n");
        assert_eq!(short("ns1.example.org", "MX"), "0 .\n");
        for name in ["example.org", "mail.example.org", "ns1.example.org"] {
            assert_eq!(short(name, "A"), "192.0.2.10\n", "{name} A");
            assert_eq!(short(name, "AAAA"), "2001:db8::10\n", "{name} AAAA");
        }
        assert_eq!(short("example.org", "TXT"), "\"v=spf1 mx -all\"\n");
        assert_eq!(short("mail.example.org", "TXT"), "\"v=spf1 a -all\"\n");
        assert_eq!(short("alice.example.org", "TXT"), "\"v=spf1 mx -all\"\n");
        assert_eq!(short("ns1.example.org", "TXT"), "\"v=spf1 -all\"\n");
        let dkim = short("letterbox._domainkey.example.org", "TXT");
        assert!(
            dkim.starts_with("\"v=DKIM1; k=rsa; p=MII"),
            "DKIM over {transport}: {dkim}"
        );
        assert_eq!(
            short("_dmarc.example.org", "TXT"),
            "\"v=DMARC1; p=reject; adkim=s; aspf=s; psd=n\"\n"
        );
        let full = s.dig(&[transport, "example.org", "NS"]);
        assert!(full.contains("flags: qr aa;"), "AA set, RA clear:\n{full}");
        assert!(
            full.contains("ns1.example.org.\t3600\tIN\tA\t192.0.2.10"),
            "glue in the additional section:\n{full}"
        );
    }
}

#[test]
fn dig_finds_the_webmails_mail_name_beside_a_host_called_otherwise() {
    if !common::installed(
        "dig_finds_the_webmails_mail_name_beside_a_host_called_otherwise",
        "dig",
    ) {
        return;
    }
    let host_mx = config(0, &[]).replace("hostname = \"mail\"", "hostname = \"mx\"");
    let s = Served::start(&host_mx);
    for transport in ["+notcp", "+tcp"] {
        let short = |name: &str, t: &str| s.dig(&[transport, "+short", name, t]);
        for name in ["example.org", "mail.example.org", "mx.example.org"] {
            assert_eq!(short(name, "A"), "192.0.2.10\n", "{name} A");
            assert_eq!(short(name, "AAAA"), "2001:db8::10\n", "{name} AAAA");
        }
        // A web name: no mail to it, none from it.
        assert_eq!(short("mail.example.org", "MX"), "0 .\n");
        assert_eq!(short("mail.example.org", "TXT"), "\"v=spf1 -all\"\n");
        assert_eq!(short("example.org", "MX"), "10 mx.example.org.\n");
    }
    drop(s);
    let off = Served::start(&format!("{host_mx}[webmail]\nenabled = false\n"));
    let nx = off.dig(&["mail.example.org", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "without the webmail: {nx}");
}

#[test]
fn long_dkim_is_whole_over_tcp_and_truncated_over_udp() {
    if !common::installed("long_dkim_is_whole_over_tcp_and_truncated_over_udp", "dig") {
        return;
    }
    let s = Served::start(&config(0, &[]));
    let name = "letterbox._domainkey.example.org";
    let pem = std::fs::read_to_string(format!("{FIXTURES}/state/dkim/letterbox.pub")).unwrap();
    let key: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let tcp = s.dig(&["+tcp", "+short", name, "TXT"]);
    let joined: String = tcp
        .trim()
        .split("\" \"")
        .map(|p| p.trim_matches('"'))
        .collect();
    assert_eq!(joined, format!("v=DKIM1; k=rsa; p={key}"));
    assert!(tcp.contains("\" \""), "split into 255-byte strings: {tcp}");
    let udp = s.dig(&["+notcp", "+noedns", "+ignore", name, "TXT"]);
    assert!(udp.contains("flags: qr aa tc;"), "TC over UDP:\n{udp}");
    assert!(udp.contains("ANSWER: 0"), "no partial answer:\n{udp}");
}

#[test]
fn nxdomain_nodata_and_refused() {
    if !common::installed("nxdomain_nodata_and_refused", "dig") {
        return;
    }
    let s = Served::start(&config(0, &[]));
    let nx = s.dig(&["nobody.example.org", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(
        nx.contains("example.org.\t\t300\tIN\tSOA\tns1.example.org."),
        "{nx}"
    );
    let nodata = s.dig(&["alice.example.org", "A"]);
    assert!(nodata.contains("status: NOERROR"), "{nodata}");
    assert!(nodata.contains("ANSWER: 0, AUTHORITY: 1"), "{nodata}");
    // An empty non-terminal exists: NODATA, not NXDOMAIN.
    let ent = s.dig(&["_domainkey.example.org", "TXT"]);
    assert!(ent.contains("status: NOERROR"), "{ent}");
    let foreign = s.dig(&["example.com", "A"]);
    assert!(foreign.contains("status: REFUSED"), "{foreign}");
    assert!(!foreign.contains(" ra"), "no recursion offered: {foreign}");
    let any = s.dig(&["example.org", "ANY"]);
    assert!(any.contains("HINFO\t\"RFC8482\""), "minimal ANY: {any}");
}

#[test]
fn hickory_resolver_over_udp_and_tcp() {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::Resolver;

    let s = Served::start(&config(0, &[]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for make in [NameServerConfig::udp, NameServerConfig::tcp] {
        let mut ns = make("127.0.0.1".parse().unwrap());
        for c in &mut ns.connections {
            c.port = s.port;
        }
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.recursion_desired = false;
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .unwrap();
        rt.block_on(async {
            let get = |name: &'static str, t: RecordType| {
                let resolver = &resolver;
                async move {
                    let lookup = resolver.lookup(name, t).await.unwrap();
                    lookup
                        .answers()
                        .iter()
                        .filter(|r| r.record_type() == t)
                        .map(|r| r.data.to_string())
                        .collect::<Vec<_>>()
                }
            };
            assert_eq!(
                get("example.org.", RecordType::NS).await,
                ["ns1.example.org."]
            );
            assert_eq!(
                get("alice.example.org.", RecordType::MX).await,
                ["10 mail.example.org."]
            );
            assert_eq!(
                get("mail.example.org.", RecordType::A).await,
                ["192.0.2.10"]
            );
            assert_eq!(
                get("mail.example.org.", RecordType::AAAA).await,
                ["2001:db8::10"]
            );
            assert_eq!(
                get("example.org.", RecordType::TXT).await,
                ["v=spf1 mx -all"]
            );
            let soa = get("example.org.", RecordType::SOA).await;
            assert!(soa[0].starts_with("ns1.example.org. hostmaster.example.org."));
            // The whole key arrives: over UDP it fits hickory's EDNS payload of 1232 bytes.
            let dkim = get("letterbox._domainkey.example.org.", RecordType::TXT).await;
            assert!(dkim[0].starts_with("v=DKIM1; k=rsa; p=MII") && dkim[0].len() > 700);
        });
    }
}

#[test]
fn axfr_only_for_secondaries() {
    if !common::installed("axfr_only_for_secondaries", "dig") {
        return;
    }
    let s = Served::start(&config(0, &["127.0.0.2".to_string()]));
    let allowed = s.dig(&["-b", "127.0.0.2", "example.org", "AXFR"]);
    assert!(
        allowed.contains("alice.example.org.\t3600\tIN\tMX\t10 mail.example.org."),
        "{allowed}"
    );
    assert_eq!(
        allowed.matches("\tSOA\t").count(),
        2,
        "SOA first and last:\n{allowed}"
    );
    let refused = s.dig(&["-b", "127.0.0.1", "example.org", "AXFR"]);
    assert!(refused.contains("Transfer failed"), "{refused}");
    assert!(!refused.contains("\tMX\t"), "{refused}");
}

#[test]
fn notify_reaches_a_secondary_on_start_and_on_change() {
    let secondary = UdpSocket::bind("127.0.0.3:0").unwrap();
    secondary
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let at = secondary.local_addr().unwrap().to_string();
    let s = Served::start(&config(0, std::slice::from_ref(&at)));

    let receive_and_answer = |rcode: ResponseCode| -> (u32, SocketAddr) {
        let mut buf = [0u8; 4096];
        let (n, from) = secondary.recv_from(&mut buf).expect("a NOTIFY arrives");
        let m = Message::from_vec(&buf[..n]).expect("NOTIFY parses");
        assert_eq!(m.metadata.op_code, OpCode::Notify);
        assert_eq!(m.metadata.message_type, MessageType::Query);
        assert!(m.metadata.authoritative, "AA set");
        assert_eq!(m.queries[0].query_type(), RecordType::SOA);
        assert_eq!(m.queries[0].name().to_string(), "example.org.");
        let serial = match &m.answers[0].data {
            RData::SOA(soa) => soa.serial,
            other => panic!("expected the SOA hint, got {other:?}"),
        };
        let mut ack = Message::response(m.metadata.id, OpCode::Notify);
        ack.metadata.authoritative = true;
        ack.metadata.response_code = rcode;
        ack.add_queries(m.queries.iter().cloned());
        secondary.send_to(&ack.to_vec().unwrap(), from).unwrap();
        (serial, from)
    };
    let receive_and_ack = || receive_and_answer(ResponseCode::NoError);
    // REFUSED is no acknowledgement: the NOTIFY comes again.
    let (first, _) = receive_and_answer(ResponseCode::Refused);
    assert_eq!(first, s.serial());
    let (again, _) = receive_and_ack();
    assert_eq!(again, first, "NOTIFY retried after REFUSED");

    let mut changed = config(0, std::slice::from_ref(&at));
    changed.push_str(&format!(
        "[[account]]\nname = \"dave\"\npassword_hash = \"{HASH}\"\n"
    ));
    s.reload(&changed);
    // A retransmission of the start-up NOTIFY may still arrive: acknowledge everything
    // until the new serial comes.
    let second = loop {
        let (serial, _) = receive_and_ack();
        if serial != first {
            break serial;
        }
    };
    assert!(second > first, "NOTIFY carries the new serial");
    // Acknowledged: no retransmission follows, where one would come after
    // NOTIFY_RETRY_AFTER (waited for twice over, so a slow machine does not hide it).
    secondary
        .set_read_timeout(Some(2 * letterbox::dns::NOTIFY_RETRY_AFTER))
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(
        secondary.recv_from(&mut buf).is_err(),
        "NOTIFY retried after ack"
    );
}

#[test]
fn rate_limiting_starts_under_a_flood() {
    const RATE: u32 = 10;
    let s = Served::start(&config(RATE, &[]));
    // A fresh prefix: the start-up probes came from 127.0.0.1.
    let socket = UdpSocket::bind("127.0.1.1:0").unwrap();
    // The flood is over when nothing more comes for this long.
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_ascii("example.org.").unwrap(),
        RecordType::MX,
    ));
    let sent = 200;
    let started = Instant::now();
    for id in 0..sent {
        m.metadata.id = id;
        socket.send_to(&m.to_vec().unwrap(), s.addr()).unwrap();
    }
    let (mut answered, mut truncated) = (0, 0);
    let mut last = started;
    let mut buf = [0u8; 4096];
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        last = Instant::now();
        let r = Message::from_vec(&buf[..n]).unwrap();
        if r.metadata.truncation {
            truncated += 1;
        } else {
            answered += 1;
        }
    }
    assert!(
        answered >= RATE,
        "the burst allowance (a second's worth) is answered: {answered}"
    );
    // A second's worth at once, then RATE a second for as long as the flood was being
    // answered: a bound from the time the server took, whatever its speed.
    let allowed = f64::from(RATE) * (1.0 + last.duration_since(started).as_secs_f64());
    assert!(
        f64::from(answered) <= allowed + 1.0,
        "the flood is limited: {answered} of {sent} answered, {allowed:.1} allowed"
    );
    assert!(truncated > 0, "some responses slip through truncated");
    assert!(
        answered + truncated < u32::from(sent),
        "the rest are dropped"
    );
    // Another source is unaffected.
    assert!(s.query("example.org.", RecordType::MX).is_some());
}

#[test]
fn live_change_loses_no_query() {
    let s = Served::start(&config(0, &[]));
    let before = s.serial();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = s.addr();
    let looper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut m = Message::query();
            m.add_query(Query::query(
                Name::from_ascii("example.org.").unwrap(),
                RecordType::MX,
            ));
            let (mut ok, mut failed) = (0u32, 0u32);
            let mut buf = [0u8; 4096];
            let mut id = 0u16;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                id = id.wrapping_add(1);
                m.metadata.id = id;
                socket.send_to(&m.to_vec().unwrap(), addr).unwrap();
                match socket.recv_from(&mut buf) {
                    Ok((n, _)) => match Message::from_vec(&buf[..n]) {
                        Ok(r)
                            if r.metadata.id == id
                                && r.metadata.response_code == ResponseCode::NoError
                                && r.answers.len() == 1 =>
                        {
                            ok += 1
                        }
                        _ => failed += 1,
                    },
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut changed = config(0, &[]);
    changed.push_str(&format!(
        "[[account]]\nname = \"erin\"\npassword_hash = \"{HASH}\"\n"
    ));
    s.reload(&changed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mx = s.query("erin.example.org.", RecordType::MX).unwrap();
        if mx.answers.len() == 1 {
            assert_eq!(mx.answers[0].data.to_string(), "10 mail.example.org.");
            break;
        }
        assert!(Instant::now() < deadline, "the new account never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let added = s.serial();
    assert!(added > before, "serial increased");
    // And an account removed: alice's MX goes, the serial moves on again.
    s.reload(&changed.replacen("name = \"alice\"", "name = \"alyssa\"", 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while s
        .query("alice.example.org.", RecordType::MX)
        .unwrap()
        .metadata
        .response_code
        != ResponseCode::NXDomain
    {
        assert!(Instant::now() < deadline, "the removed account stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.serial() > added);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = looper.join().unwrap();
    assert_eq!(failed, 0, "{failed} queries failed ({ok} answered)");
    assert!(ok > 10, "the loop ran: {ok}");
}

#[test]
fn malformed_packets_do_not_stop_the_server() {
    let mut s = Served::start(&config(0, &[]));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut q = Message::query();
    q.metadata.id = 7;
    q.add_query(Query::query(
        Name::from_ascii("alice.example.org.").unwrap(),
        RecordType::MX,
    ));
    let real = q.to_vec().unwrap();
    let mut corpus: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0xff; 12],
        vec![0xff; 600],
        // A compression loop in the question.
        [&real[..12], &[0xc0, 12, 0, 1, 0, 1]].concat(),
        // A label length running past the end.
        [&real[..12], &[63, b'a']].concat(),
        // Counts far larger than the message.
        [
            &real[..4],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ]
        .concat(),
    ];
    for cut in 0..real.len() {
        corpus.push(real[..cut].to_vec());
    }
    // Deterministic pseudo-random bytes and bit flips of the real query.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..500 {
        let len = (next() % 300) as usize;
        corpus.push((0..len).map(|_| next() as u8).collect());
        let mut flipped = real.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % flipped.len();
            flipped[i] ^= 1 << (next() % 8);
        }
        corpus.push(flipped);
    }
    for packet in &corpus {
        socket.send_to(packet, s.addr()).unwrap();
    }
    // TCP too: garbage after a length prefix, and a truncated frame.
    for packet in corpus.iter().take(50) {
        if let Ok(mut tcp) = std::net::TcpStream::connect(s.addr()) {
            use std::io::Write;
            let _ = tcp.write_all(&(packet.len() as u16).to_be_bytes());
            let _ = tcp.write_all(packet);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(s.alive(), "the server process died");
    let answer = s
        .query("alice.example.org.", RecordType::MX)
        .expect("still answering");
    assert_eq!(answer.answers.len(), 1);
}

#[test]
fn an_invalid_file_on_reload_keeps_the_old_zone() {
    let mut s = Served::start(&config(0, &[]));
    let before = s.serial();
    s.reload("version = 1\n[system]\nhostname = \"-bad-\"\n");
    s.wait_for_line("invalid file, still serving the old zone");
    let mx = s
        .query("alice.example.org.", RecordType::MX)
        .expect("still answering");
    assert_eq!(mx.answers.len(), 1, "the old zone is still served");
    assert_eq!(s.serial(), before);
    // A good file afterwards is taken again.
    let mut changed = config(0, &[]);
    changed.push_str(&format!(
        "[[account]]\nname = \"gina\"\npassword_hash = \"{HASH}\"\n"
    ));
    s.reload(&changed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s
        .query("gina.example.org.", RecordType::MX)
        .unwrap()
        .answers
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the good file was not taken");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serial_survives_restarts_and_grows_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let serial_file = dir.path().join("state/dns/serial");
    let serve = |toml: &str| -> u32 { Served::start_in(dir.path(), toml).serial() };
    let first = serve(&config(0, &[]));
    assert_eq!(serve(&config(0, &[])), first, "same content, same serial");
    let mut changed = config(0, &[]);
    changed.push_str(&format!(
        "[[account]]\nname = \"frank\"\npassword_hash = \"{HASH}\"\n"
    ));

    // `letterbox zone --state` shows the serial the server would serve, recording nothing.
    let recorded = std::fs::read(&serial_file).unwrap();
    let file = dir.path().join("preview.toml");
    std::fs::write(&file, &changed).unwrap();
    let state = dir.path().join("state");
    let out = letterbox(&[
        "zone",
        file.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let soa = text.lines().find(|l| l.contains(" SOA ")).unwrap();
    let previewed: u32 = soa.split_whitespace().nth(6).unwrap().parse().unwrap();
    assert_eq!(
        std::fs::read(&serial_file).unwrap(),
        recorded,
        "zone wrote the serial"
    );

    let second = serve(&changed);
    assert!(second > first);
    assert_eq!(
        previewed, second,
        "the preview matched what the server serves"
    );
    assert!(
        serve(&config(0, &[])) > second,
        "going back is a change too"
    );
}

/// One raw UDP exchange: the response, or None after a second.
fn exchange(s: &Served, bytes: &[u8]) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    socket.send_to(bytes, s.addr()).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Some(Message::from_vec(&buf[..n]).expect("the response parses"))
}

#[test]
fn wire_edge_cases() {
    if !common::installed("wire_edge_cases", "dig") {
        return;
    }
    let s = Served::start(&config(0, &[]));
    // EDNS version 1: BADVERS, with our OPT (version 0).
    let badvers = s.dig(&["+edns=1", "+noednsnegotiation", "example.org", "SOA"]);
    assert!(badvers.contains("status: BADVERS"), "{badvers}");
    assert!(badvers.contains("; EDNS: version: 0"), "{badvers}");
    // EDNS echoed with our payload size; the DO bit copied.
    let opt = s.dig(&["+dnssec", "example.org", "SOA"]);
    assert!(
        opt.contains("; EDNS: version: 0, flags: do; udp: 1232"),
        "{opt}"
    );
    // CD echoed.
    let cd = s.dig(&["+cdflag", "example.org", "SOA"]);
    assert!(cd.contains("flags: qr aa cd;"), "{cd}");
    // A small payload: the DKIM record does not fit, TC.
    let tc = s.dig(&[
        "+bufsize=512",
        "+ignore",
        "letterbox._domainkey.example.org",
        "TXT",
    ]);
    assert!(tc.contains("flags: qr aa tc;"), "{tc}");
    // Class CH: not ours.
    let chaos = s.dig(&["-c", "CH", "version.bind", "TXT"]);
    assert!(chaos.contains("status: REFUSED"), "{chaos}");
    // ANY over TCP: the same minimal answer as over UDP (RFC 8482).
    let any = s.dig(&["+tcp", "example.org", "ANY"]);
    assert!(any.contains("HINFO\t\"RFC8482\""), "{any}");

    // QDCOUNT 0 and 2: FORMERR.
    let mut none = Message::query();
    none.metadata.id = 11;
    let mut two = Message::query();
    two.metadata.id = 12;
    for name in ["example.org.", "mail.example.org."] {
        two.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    }
    for m in [none, two] {
        let r = exchange(&s, &m.to_vec().unwrap()).expect("an answer");
        assert_eq!(r.metadata.id, m.metadata.id);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    }
    // QTYPE OPT: FORMERR, not silence.
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("example.org.").unwrap(),
        RecordType::OPT,
    ));
    let r = exchange(&s, &q.to_vec().unwrap()).expect("an answer to QTYPE OPT");
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // AXFR over UDP: refused, even for the loopback.
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("example.org.").unwrap(),
        RecordType::AXFR,
    ));
    let r = exchange(&s, &q.to_vec().unwrap()).expect("an answer to AXFR over UDP");
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(r.answers.is_empty());
    let mx = |id: u16| {
        let mut q = Message::query();
        q.metadata.id = id;
        q.add_query(Query::query(
            Name::from_ascii("example.org.").unwrap(),
            RecordType::MX,
        ));
        q
    };
    // Opcodes other than QUERY (here UPDATE): NOTIMP.
    let mut update = mx(13);
    update.metadata.op_code = OpCode::Update;
    let r = exchange(&s, &update.to_vec().unwrap()).expect("an answer to UPDATE");
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    // A response is never answered: two servers must not bounce messages forever.
    let mut response = mx(14);
    response.metadata.message_type = MessageType::Response;
    assert!(exchange(&s, &response.to_vec().unwrap()).is_none());
    // Records a query carries besides OPT do not change its answer.
    let mut extra = mx(15);
    extra.add_additional(hickory_proto::rr::Record::from_rdata(
        Name::from_ascii("x.").unwrap(),
        0,
        RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1)),
    ));
    let r = exchange(&s, &extra.to_vec().unwrap()).expect("an answer");
    assert_eq!(r.answers[0].data.to_string(), "10 mail.example.org.");
}

#[test]
fn kdig_over_udp_and_tcp_and_axfr() {
    if !common::installed("kdig_over_udp_and_tcp_and_axfr", "kdig") {
        return;
    }
    let s = Served::start(&config(0, &["127.0.0.4".to_string()]));
    let kdig = |args: &[&str]| {
        let out = Command::new("kdig")
            .args([
                "@127.0.0.1",
                "-p",
                &s.port.to_string(),
                "+time=2",
                "+retry=0",
                "+norec",
            ])
            .args(args)
            .output()
            .unwrap();
        // kdig reports a failed transfer on stderr.
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    for transport in ["+notcp", "+tcp"] {
        let short = |name: &str, t: &str| kdig(&[transport, "+short", name, t]);
        assert!(
            short("example.org", "SOA").starts_with("ns1.example.org. hostmaster.example.org. "),
            "{transport}"
        );
        assert_eq!(short("example.org", "MX"), "10 mail.example.org.\n");
        assert_eq!(short("alice.example.org", "TXT"), "\"v=spf1 mx -all\"\n");
        let full = kdig(&[transport, "example.org", "MX"]);
        assert!(full.contains("NOERROR"), "{full}");
        assert!(full.contains(" aa"), "authoritative: {full}");
    }
    let allowed = kdig(&["-b", "127.0.0.4", "example.org", "AXFR"]);
    assert_eq!(allowed.matches("\tSOA\t").count(), 2, "{allowed}");
    // kdig pads the owner column: compare with whitespace collapsed.
    let lines: Vec<String> = allowed
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l == "alice.example.org. 3600 IN MX 10 mail.example.org."),
        "{allowed}"
    );
    let refused = kdig(&["-b", "127.0.0.1", "example.org", "AXFR"]);
    assert!(!refused.contains("\tMX\t"), "{refused}");
    assert!(refused.contains("REFUSED"), "{refused}");
}

#[test]
fn tcp_connections_are_capped_per_source() {
    if !common::installed("tcp_connections_are_capped_per_source", "dig") {
        return;
    }
    use std::io::{Read, Write};
    let s = Served::start(&config(0, &[]));
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("example.org.").unwrap(),
        RecordType::SOA,
    ));
    let query = q.to_vec().unwrap();
    let frame = [&(query.len() as u16).to_be_bytes()[..], &query].concat();
    // Answers one query on `tcp`: Some(response length), None when closed or silent.
    let ask = |tcp: &mut std::net::TcpStream| -> Option<usize> {
        tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        tcp.write_all(&frame).ok()?;
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).ok()?;
        let mut body = vec![0u8; u16::from_be_bytes(len).into()];
        tcp.read_exact(&mut body).ok()?;
        Some(body.len())
    };
    // As many connections from 127.0.0.1 as one source may have, each in use
    // (answered), held open.
    let mut held = Vec::new();
    for i in 0..letterbox::dns::TCP_MAX_PER_SOURCE {
        let mut tcp = std::net::TcpStream::connect(s.addr()).unwrap();
        assert!(ask(&mut tcp).is_some(), "connection {i} is answered");
        held.push(tcp);
    }
    let mut extra = std::net::TcpStream::connect(s.addr()).unwrap();
    assert_eq!(
        ask(&mut extra),
        None,
        "a connection past the limit from one source is closed"
    );
    // Another source is still served over TCP.
    let other = s.dig(&["+tcp", "-b", "127.0.0.5", "+short", "example.org", "MX"]);
    assert_eq!(other, "10 mail.example.org.\n");
    // Closing one frees its place.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = std::net::TcpStream::connect(s.addr()).unwrap();
        if ask(&mut again).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was not given back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connections from `ip`, each sending one byte (a length prefix cut short) and going
/// idle; a connection the server refused is left out.
fn idle_connections(server: SocketAddr, ip: std::net::Ipv4Addr, n: usize) -> Vec<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    (0..n)
        .filter_map(|_| {
            let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            tcp.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
            tcp.connect(&server.into()).ok()?;
            tcp.send(&[0]).ok()?;
            Some(tcp)
        })
        .collect()
}

/// How many of `connections` the server has closed.
fn closed_by_server(connections: &[socket2::Socket]) -> usize {
    connections
        .iter()
        .filter(|tcp| {
            tcp.set_nonblocking(true).unwrap();
            let mut byte = [std::mem::MaybeUninit::new(0u8)];
            match tcp.recv(&mut byte) {
                Ok(_) => true, // end of stream
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count()
}

#[test]
fn a_tcp_query_and_a_secondarys_axfr_are_answered_while_idle_connections_hold_the_slots() {
    let test =
        "a_tcp_query_and_a_secondarys_axfr_are_answered_while_idle_connections_hold_the_slots";
    if !common::installed(test, "dig") {
        return;
    }
    use letterbox::dns::{TCP_IDLE, TCP_MAX_CONNECTIONS, TCP_MAX_PER_SOURCE};
    let s = Served::start(&config(0, &["127.0.0.4".to_string()]));
    // Idle connections from enough addresses, each within the per-source limit, to take
    // every place and then some.
    let sources = TCP_MAX_CONNECTIONS / TCP_MAX_PER_SOURCE + 4;
    let started = Instant::now();
    let idle: Vec<socket2::Socket> = (0..sources)
        .flat_map(|n| {
            let ip = std::net::Ipv4Addr::new(127, 0, 2, n as u8 + 1);
            idle_connections(s.addr(), ip, TCP_MAX_PER_SOURCE)
        })
        .collect();
    assert_eq!(
        idle.len(),
        sources * TCP_MAX_PER_SOURCE,
        "every idle client connected"
    );
    // Every place is held: those past them closed the ones idle longest.
    let full = idle.len() - TCP_MAX_CONNECTIONS;
    assert!(
        common::wait_until(Duration::from_secs(5), || closed_by_server(&idle) == full),
        "expected {full} idle connections closed to make room, {} were",
        closed_by_server(&idle)
    );

    let tcp = s.dig(&["+tcp", "-b", "127.0.0.5", "+short", "example.org", "MX"]);
    assert_eq!(
        tcp, "10 mail.example.org.\n",
        "a TCP query while the places are held"
    );
    let axfr = s.dig(&["-b", "127.0.0.4", "example.org", "AXFR"]);
    assert_eq!(
        axfr.matches("\tSOA\t").count(),
        2,
        "the secondary's AXFR:\n{axfr}"
    );
    assert!(
        axfr.contains("alice.example.org.\t3600\tIN\tMX\t10 mail.example.org."),
        "{axfr}"
    );
    // The places stayed held throughout: the query's connection took the place of one
    // more idle connection, the secondary's took none.
    assert!(
        started.elapsed() < TCP_IDLE,
        "too slow to tell: the idle connections timed out meanwhile"
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || closed_by_server(&idle)
            == full + 1),
        "expected {} idle connections closed, {} were",
        full + 1,
        closed_by_server(&idle)
    );
}

#[test]
fn a_corrupt_dkim_key_or_serial_file_leaves_dns_serving() {
    if !common::installed(
        "a_corrupt_dkim_key_or_serial_file_leaves_dns_serving",
        "dig",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let served = Served::start_in(dir.path(), &config(0, &[])).serial();
    // A serial file whose hash is damaged, and an unreadable key beside the good one.
    std::fs::write(state.join("dns/serial"), format!("{served} 0xnot-a-hash\n")).unwrap();
    std::fs::write(
        state.join("dkim/broken.pub"),
        "-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let mut s = Served::start_in(dir.path(), &config(0, &[]));
    let warning = s.wait_for_line("broken.pub");
    assert!(warning.contains("not published"), "{warning}");
    s.wait_for_line("serial is corrupt");
    assert!(
        s.serial() > served,
        "re-seeded past the serial served before"
    );
    let dkim =
        |selector: &str| s.dig(&["+tcp", &format!("{selector}._domainkey.example.org"), "TXT"]);
    assert!(
        dkim("letterbox").contains("v=DKIM1; k=rsa; p=MII"),
        "the good key is published"
    );
    assert!(
        dkim("broken").contains("status: NXDOMAIN"),
        "the bad key is left out"
    );
    drop(s);

    // Nothing left to read: at least today's last date-based serial.
    std::fs::write(state.join("dns/serial"), b"\0\0\xff garbage").unwrap();
    let mut s = Served::start_in(dir.path(), &config(0, &[]));
    s.wait_for_line("serial is corrupt");
    assert!(s.serial() >= letterbox::dns::today_serial() + 99);
}
