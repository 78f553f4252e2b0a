//! The front's Postfix 3.10: `main.cf` and `master.cf`.
//!
//! The routing tables are `inline:{...}` maps inside main.cf rather than `texthash:`
//! files beside it: both are read when a process starts, so either needs `postfix
//! reload` after a change, and inline keeps the front's whole configuration in the two
//! files it must have anyway (one golden file, one atomic write). Live tables answered by
//! the agent (`socketmap:`) replace them when accounts come and go at run time.

use std::fmt::Write as _;

use super::paths::{POSTFIX_DATA, POSTFIX_QUEUE, TLS_CERT, TLS_KEY};
use super::{MailPlan, GENERATED};

/// LMTP's port on each box.
pub const LMTP_PORT: u16 = 24;

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

    out.push_str(
        "# Each account's domain, its route (LMTP to its box; [address] skips DNS) and its\n\
         # one recipient: any other address there is refused at RCPT with 550 5.1.1.\n",
    );
    let domains: Vec<&str> = plan.boxes.iter().map(|b| b.mail_domain.as_str()).collect();
    let _ = writeln!(out, "relay_domains = {}", domains.join(", "));
    let transports: Vec<String> = plan
        .boxes
        .iter()
        .map(|b| format!("{} = lmtp:inet:[{}]:{LMTP_PORT}", b.mail_domain, b.ipv4))
        .collect();
    let recipients: Vec<String> = plan
        .boxes
        .iter()
        .map(|b| format!("{} = ok", b.address))
        .collect();
    // An empty inline map is a fatal error; with no account, no domain is relayed at all.
    let _ = writeln!(out, "transport_maps ={}", inline(&transports));
    let _ = writeln!(out, "relay_recipient_maps ={}", inline(&recipients));

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
smtp_tls_security_level = may

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
    out
}

/// ` inline:{ ... }` with one entry a line (main.cf continues a line that starts with
/// white space), or nothing for no entries.
fn inline(entries: &[String]) -> String {
    if entries.is_empty() {
        return String::new();
    }
    let body: Vec<String> = entries.iter().map(|e| format!("    {{ {e} }}")).collect();
    format!(" inline:{{\n{}\n  }}", body.join(",\n"))
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

pub fn master_cf() -> String {
    let mut out = String::from(GENERATED);
    out.push_str(
        "# The front's Postfix services: smtpd on port 25, and what delivers and queues.\n\
         # chroot is off everywhere: the container confines Postfix.\n\
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
    }
    out
}
