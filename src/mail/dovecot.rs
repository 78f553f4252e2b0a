//! Dovecot 2.4: the front's IMAP proxy and each box's LMTP and IMAP server, with their
//! passwd-files.
//!
//! A login is `box@<name>.<domain>` or `<name>`, in any case (`auth_username_format`
//! lowers it). Both forms are logins; the short one renames the login to the address (the
//! front through `destuser`, a box through `user`), so that a box only ever sees its
//! canonical user.
//!
//! The front keeps a passwd-file per login name, found by the name. Dovecot looks at a
//! passwd-file again at most once a second, and reloads it only when its mtime (in whole
//! seconds) or size changed: one shared file, rewritten for an account added within the
//! second of another login, would refuse the new account. A new login's file has never
//! been read, so it is read at its first login.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::paths::{
    AUTH_SOCKET, BOX_HOME, DOVECOT_LOGINS, DOVECOT_PASSWD, FRONT_SOCKETS, TLS_CERT, TLS_KEY,
};
use super::{BoxPlan, MailPlan, GENERATED};
use crate::mail::LMTP_PORT;

/// The IMAP port a box serves the front on (and, with STARTTLS, direct clients).
pub const BOX_IMAP_PORT: u16 = 143;
/// The front's IMAP listener behind the agent's TLS (`mail::imap_tls`), on loopback only:
/// each connection starts with a PROXY header naming its client.
pub const FRONT_IMAP_BEHIND_TLS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1143));

/// The settings every instance starts with: 2.4 requires the two versions first.
fn header(out: &mut String, what: &str) {
    out.push_str(GENERATED);
    let _ = write!(
        out,
        "{what}

dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
# Its output is the container's log (containerd's shim copies stdout into the file).
log_path = /dev/stdout

# No password travels in clear: 143 needs STARTTLS first, 993 is TLS from the start.
auth_allow_cleartext = no
auth_username_format = %{{user|lower}}
"
    );
}

fn passdb(out: &mut String, path: &str) {
    let _ = write!(
        out,
        "
passdb passwd-file {{
  passwd_file_path = {path}
}}
"
    );
}

/// The front: an IMAP proxy that checks the password, then logs in to the box with it;
/// and the same logins for Postfix's submission, over the shared socket directory.
pub fn front_conf() -> String {
    let mut out = String::new();
    header(
        &mut out,
        "# The front's Dovecot: the IMAP proxy behind ports 143 and 993. It checks each\n\
         # login's password itself, then forwards the login to the account's box. It also\n\
         # checks the logins of Postfix's submission (587, 465), with the same passwords.",
    );
    let _ = write!(
        out,
        "# The agent ends each client's TLS on 993 and 143 and passes the session on here,
# with its address and TLS in a PROXY header: a new certificate then never ends a
# session, as Dovecot's reload would.
ssl = no
protocols = imap
haproxy_trusted_networks = {ip}/32
service imap-login {{
  # Dovecot's own 143 and 993 are the agent's.
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
  inet_listener imap_behind_tls {{
    listen = {ip}
    port = {port}
    haproxy = yes
  }}
}}
",
        ip = FRONT_IMAP_BEHIND_TLS.ip(),
        port = FRONT_IMAP_BEHIND_TLS.port(),
    );
    let _ = write!(
        out,
        "
# Postfix asks here (smtpd_sasl_path): only its uid may connect. LOGIN beside PLAIN for
# older mail clients; both only over TLS (auth_allow_cleartext, smtpd_tls_auth_only).
auth_mechanisms = plain login
service auth {{
  unix_listener {FRONT_SOCKETS}/{AUTH_SOCKET} {{
    mode = 0600
    user = postfix
    group = postfix
  }}
}}
"
    );
    out.push_str(
        "
# A login names its passwd-file: Dovecot's default characters, with no '/', keep it
# inside the directory.
auth_username_chars = abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@
",
    );
    passdb(&mut out, &format!("{DOVECOT_LOGINS}/%{{user}}"));
    out
}

/// The front's logins: for each login name, its passwd-file (one line: user:password::::::
/// then where to forward).
pub fn front_logins(plan: &MailPlan) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for b in &plan.boxes {
        let proxy = format!(
            "proxy=y host={} port={BOX_IMAP_PORT} destuser={}",
            b.ipv4, b.address
        );
        for login in [&b.address, &b.name] {
            let mut out = String::from(GENERATED);
            let _ = writeln!(
                out,
                "# The front's IMAP login {login}: user:password:::::: then where to forward."
            );
            let _ = writeln!(out, "{login}:{{CRYPT}}{}::::::{proxy}", b.password_hash);
            files.push((login.clone(), out));
        }
    }
    files
}

/// One account's box: LMTP from the front on its private address, IMAP for the front
/// (143 on the bridge) and for IPv6 clients (143 with STARTTLS, 993) on its own address.
pub fn box_conf(plan: &MailPlan, account: &BoxPlan) -> String {
    let mut out = String::new();
    header(
        &mut out,
        &format!(
            "# The box of {}: it receives the account's mail over LMTP from the front,\n\
             # keeps it in a Maildir and serves it over IMAP.",
            account.address
        ),
    );
    let listen = match account.ipv6 {
        Some(v6) => format!("{}, {v6}", account.ipv4),
        None => account.ipv4.to_string(),
    };
    let _ = write!(
        out,
        "ssl = yes
ssl_server_cert_file = {TLS_CERT}
ssl_server_key_file = {TLS_KEY}
protocols = imap lmtp
listen = {listen}
# The front has checked the client's password and TLS; its logins carry the client's
# real address.
login_trusted_networks = {front}

# A reload (for a renewed certificate) leaves open IMAP sessions be: by default Dovecot
# then ends each at once, or once idle for 10 s. Stopping the box still ends them.
shutdown_clients = no

# The front's Received: header names the client; the hop over the bridge adds nothing.
lmtp_add_received_header = no

mail_driver = maildir
mail_path = ~/Maildir
# LMTP keeps a message over 128 kB in a temporary file while it delivers it: on the data
# partition, in the Maildir's own tmp/, not the box's /tmp, a tmpfs whose pages count
# against the box's memory limit and cannot be reclaimed.
mail_temp_dir = {BOX_HOME}/Maildir/tmp
# Only this Dovecot adds to the Maildir (the agent only takes `status`'s probe out again,
# which Dovecot notices when it cannot open it): no scan of new/ and cur/ before each
# delivery.
maildir_very_dirty_syncs = yes
# The one user's own uid and gid, and no other.
first_valid_uid = {id}
last_valid_uid = {id}
first_valid_gid = {id}
last_valid_gid = {id}

service lmtp {{
  inet_listener lmtp {{
    listen = {ipv4}
    port = {LMTP_PORT}
  }}
}}
",
        front = plan.front_ipv4,
        id = account.id,
        ipv4 = account.ipv4,
    );
    out.push_str(
        "
service imap-login {
  inet_listener imap {
    port = 143
  }
  inet_listener imaps {
    port = 993
    ssl = yes
  }
}
",
    );
    passdb(&mut out, DOVECOT_PASSWD);
    let _ = write!(
        out,
        "
userdb passwd-file {{
  passwd_file_path = {DOVECOT_PASSWD}
}}
"
    );
    out
}

/// A box's passwd-file: its one account, with uid, gid and home.
pub fn box_passwd(account: &BoxPlan) -> String {
    let mut out = String::from(GENERATED);
    out.push_str("# The box's one account: user:password:uid:gid::home::extra fields.\n");
    let user = format!(
        "{{CRYPT}}{}:{id}:{id}::{BOX_HOME}::",
        account.password_hash,
        id = account.id
    );
    let _ = writeln!(out, "{}:{user}", account.address);
    let _ = writeln!(out, "{}:{user}user={}", account.name, account.address);
    out
}
