//! The front's milter: Postfix hands it every message (`smtpd_milters`,
//! `non_smtpd_milters`), and it signs our outgoing mail with DKIM and checks incoming mail
//! (SPF, DKIM, ARC, DMARC) with the `mail-auth` crate.
//!
//! The milter protocol is written here (`codec`, `session`) rather than taken from a
//! crate: the Rust milter crates are GPL-3.0, and this project is MIT/Apache. `keys` makes
//! and keeps the DKIM keys, `own_zone` answers the checks' questions about our own domain
//! from the zone we serve, and `policy` decides each message's fate.

pub mod codec;
pub mod keys;
pub mod own_zone;
pub mod policy;
pub mod session;
