//! The front's Postfix 3.10: `main.cf` and `master.cf`.
//!
//! The routing tables are not in these files: the agent answers them live over a socketmap
//! (`mail::socketmap`), so main.cf does not change when accounts come and go.

use std::fmt::Write as _;

use super::paths::{
    AUTH_SOCKET, FRONT_SOCKETS, MAPS_SOCKET, MILTER_SOCKET, POSTFIX_DATA, POSTFIX_QUEUE,
    RELAY_PASSWORD, TLS_CERT, TLS_KEY,
};
use super::socketmap::{ACCOUNT_SENDERS, DOMAINS, RECIPIENTS, SENDER_LOGINS, TRANSPORT};
use super::{MailPlan, GENERATED};
use crate::config::Relayhost;

/// The agent's socketmap, as main.cf names its tables.
fn maps() -> String {
    format!("socketmap:unix:{FRONT_SOCKETS}/{MAPS_SOCKET}")
}

pub fn main_cf(plan: &MailPlan) -> String {
    let mut out = String::from(GENERATED);
    let protocols = if plan.ipv6 { "all" } else { "ipv4" };
    let _ = write!(
        out,
        "\
# The front's Postfix: it receives on port 25 for every account's domain and hands
# each message to the account's box over LMTP.

compatibility_level = 3.10
myhostname = {hostname}
mydomain = {domain}
myorigin = $myhostname
smtpd_banner = $myhostname ESMTP
inet_interfaces = all
inet_protocols = {protocols}

# Nothing is delivered here: every mail domain is a box's.
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local mailboxes here
alias_maps =
alias_database =

# Only this machine is a trusted client; the boxes' network never is.
mynetworks = 127.0.0.0/8 [::1]/128

",
        hostname = plan.hostname,
        domain = plan.domain,
    );

    let _ = write!(
        out,
        "\
# Each account's domain, its route (LMTP to its box) and its one recipient, answered live
# by the agent (mail::socketmap): any other address there is refused at RCPT with 550
# 5.1.1, and an account added or deleted takes effect without a reload. While the agent
# does not answer, lookups fail softly (4xx): mail is deferred, never refused.
relay_domains = {maps}:{DOMAINS}
transport_maps = {maps}:{TRANSPORT}
relay_recipient_maps = {maps}:{RECIPIENTS}
",
        maps = maps(),
    );
    // Port 25 checks the sender with an access table, not
    // reject_unauthenticated_sender_login_mismatch: smtpd ignores that (with a warning on
    // every connection) where SASL is off.
    let _ = write!(
        out,
        "
# Senders. Submission (587 and 465, master.cf) allows a login to send only as its own
# account's address. Port 25 offers no login, so a client there (a box, or anyone)
# sending as an account's address is refused.
smtpd_sender_login_maps = {maps}:{SENDER_LOGINS}
smtpd_sender_restrictions = check_sender_access {maps}:{ACCOUNT_SENDERS}
",
        maps = maps(),
    );
    let _ = write!(
        out,
        "
# Every message passes the agent's milter (mail::milter): ours is signed with DKIM, the
# rest is checked (SPF, DKIM, DMARC) and marked with Authentication-Results. While the
# agent does not answer, mail is deferred (tempfail): never lost, never passed unchecked.
smtpd_milters = unix:{FRONT_SOCKETS}/{MILTER_SOCKET}
non_smtpd_milters = $smtpd_milters
milter_default_action = tempfail
milter_protocol = 6
"
    );
    let _ = write!(
        out,
        "
# Relaying: only for authenticated clients (submission), else only to our domains.
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = reject_non_fqdn_recipient
# The classic open-relay forms (user%outside@, outside!user@, \"user@outside\"@,
# @domain:user@outside) stay the local parts they are, never routes.
allow_percent_hack = no
swap_bangpath = no
resolve_dequoted_address = no
allow_untrusted_routing = no
strict_rfc821_envelopes = yes
smtpd_helo_required = yes
disable_vrfy_command = yes

# TLS, offered on port 25 (opportunistic: mail servers may still send without it).
smtpd_tls_security_level = may
smtpd_tls_cert_file = {TLS_CERT}
smtpd_tls_key_file = {TLS_KEY}
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1

# At most four deliveries into a box at once, over connections kept for reuse: a box is
# one Dovecot within its memory limit, and each LMTP session costs it a process (`make
# bench` found ten sessions killed by a 30 MB limit, four not).
lmtp_destination_concurrency_limit = 4
lmtp_connection_cache_on_demand = yes

# A box is down only while it restarts (a second or two): mail deferred for it is tried
# again within seconds, not after Postfix's default of 5 minutes.
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10m

# The queue and Postfix's state are on the data partition; the log is the container's
# output.
queue_directory = {POSTFIX_QUEUE}
data_directory = {POSTFIX_DATA}
maillog_file = /dev/stdout
"
    );
    outbound(&mut out, plan.relayhost.as_ref());
    out
}

/// How mail to other domains leaves: straight to each domain's MX (TLS when offered), or
/// through the smarthost, logged in, over TLS only, so no listener on the path reads the
/// password. The smarthost's certificate is not checked (the image has no CA bundle), so
/// one who can stand in the path and answer as the smarthost could still take it.
fn outbound(out: &mut String, relayhost: Option<&Relayhost>) {
    let Some(relay) = relayhost else {
        out.push_str(
            "
# Mail to other domains goes straight to each domain's MX, with TLS when offered.
smtp_tls_security_level = may
",
        );
        return;
    };
    let _ = write!(
        out,
        "
# Mail to other domains goes through the smarthost, logged in, over TLS only.
relayhost = {next_hop}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{RELAY_PASSWORD}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_tls_security_level = encrypt
",
        next_hop = next_hop(relay),
    );
    // 465 is TLS from the first byte; any other port starts in clear, then STARTTLS.
    if relay.port == 465 {
        out.push_str("smtp_tls_wrappermode = yes\n");
    }
}

/// `[host]:port`: the brackets keep Postfix from looking up the host's MX.
fn next_hop(relay: &Relayhost) -> String {
    format!("[{}]:{}", relay.host, relay.port)
}

/// The resolvers the front's Postfix asks for other domains' MX: the file's
/// `nameservers`, as the appliance itself uses them.
pub fn resolv_conf(plan: &MailPlan) -> String {
    let mut out = String::from(GENERATED);
    out.push_str("# The resolvers the front's Postfix asks for other domains' MX.\n");
    for ns in &plan.nameservers {
        let _ = writeln!(out, "nameserver {ns}");
    }
    out
}

/// The smarthost's login, for `smtp_sasl_password_maps`: `password` is read from the
/// file `[mail] relayhost` names, never from letterbox.toml.
pub fn relay_password(relay: &Relayhost, password: &str) -> String {
    format!(
        "{GENERATED}# The smarthost's login: next hop, then username:password.\n{} {}:{password}\n",
        next_hop(relay),
        relay.username
    )
}

/// Postfix's services, as Debian's master.cf.proto has them, every one with chroot off:
/// the container is the confinement, and a chroot would need copies of /etc files.
const SERVICES: &[[&str; 7]] = &[
    ["smtp", "inet", "n", "-", "n", "-", "-"],
    ["pickup", "unix", "n", "-", "n", "60", "1"],
    ["cleanup", "unix", "n", "-", "n", "-", "0"],
    ["qmgr", "unix", "n", "-", "n", "300", "1"],
    ["tlsmgr", "unix", "-", "-", "n", "1000?", "1"],
    ["rewrite", "unix", "-", "-", "n", "-", "-"],
    ["bounce", "unix", "-", "-", "n", "-", "0"],
    ["defer", "unix", "-", "-", "n", "-", "0"],
    ["trace", "unix", "-", "-", "n", "-", "0"],
    ["verify", "unix", "-", "-", "n", "-", "1"],
    ["flush", "unix", "n", "-", "n", "1000?", "0"],
    ["proxymap", "unix", "-", "-", "n", "-", "-"],
    ["proxywrite", "unix", "-", "-", "n", "-", "1"],
    ["smtp", "unix", "-", "-", "n", "-", "-"],
    ["relay", "unix", "-", "-", "n", "-", "-"],
    ["showq", "unix", "n", "-", "n", "-", "-"],
    ["error", "unix", "-", "-", "n", "-", "-"],
    ["retry", "unix", "-", "-", "n", "-", "-"],
    ["discard", "unix", "-", "-", "n", "-", "-"],
    ["local", "unix", "-", "n", "n", "-", "-"],
    ["lmtp", "unix", "-", "-", "n", "-", "-"],
    ["anvil", "unix", "-", "-", "n", "-", "1"],
    ["scache", "unix", "-", "-", "n", "-", "1"],
    ["postlog", "unix-dgram", "n", "-", "n", "-", "1"],
];

/// The program each service runs, where it differs from the service's name.
fn command(service: &str, kind: &str) -> &'static str {
    match (service, kind) {
        ("smtp", "inet") => "smtpd",
        ("rewrite", _) => "trivial-rewrite",
        ("defer" | "trace", _) => "bounce",
        ("proxywrite", _) => "proxymap",
        ("relay", _) => "smtp",
        ("retry", _) => "error",
        ("postlog", _) => "postlogd",
        _ => "",
    }
}

/// What submission (587, STARTTLS required) and submissions (465, TLS from the start)
/// change from port 25: a login through the front's Dovecot, only over TLS, the sender its
/// own account's address, and only logged-in clients, who may relay.
fn submission_overrides() -> String {
    [
        "smtpd_sasl_auth_enable=yes".to_string(),
        "smtpd_tls_auth_only=yes".into(),
        "smtpd_sasl_type=dovecot".into(),
        format!("smtpd_sasl_path={FRONT_SOCKETS}/{AUTH_SOCKET}"),
        "smtpd_sasl_security_options=noanonymous".into(),
        "smtpd_client_restrictions=permit_sasl_authenticated,reject".into(),
        "smtpd_sender_restrictions=reject_sender_login_mismatch".into(),
        "smtpd_relay_restrictions=permit_sasl_authenticated,reject".into(),
    ]
    .iter()
    .map(|o| format!("  -o {o}\n"))
    .collect()
}

pub fn master_cf() -> String {
    let mut out = String::from(GENERATED);
    out.push_str(
        "# The front's Postfix services: smtpd on port 25, submission on 587 and 465, and\n\
         # what delivers and queues. chroot is off everywhere: the container confines Postfix.\n\
         #\n\
         # service type  private unpriv  chroot  wakeup  maxproc command + args\n",
    );
    for [service, kind, private, unpriv, chroot, wakeup, maxproc] in SERVICES {
        let program = match command(service, kind) {
            "" => service,
            other => other,
        };
        let _ = writeln!(
            out,
            "{service:<9} {kind:<5} {private:<7} {unpriv:<7} {chroot:<7} {wakeup:<7} {maxproc:<7} {program}"
        );
        if (*service, *kind) == ("smtp", "inet") {
            for (name, tls) in [
                ("submission", "smtpd_tls_security_level=encrypt"),
                ("submissions", "smtpd_tls_wrappermode=yes"),
            ] {
                let _ = write!(
                    out,
                    "{name:<11} inet  n       -       n       -       -       smtpd\n  \
                     -o syslog_name=postfix/{name}\n  -o {tls}\n{}",
                    submission_overrides()
                );
            }
        }
    }
    out
}
