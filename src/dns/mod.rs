//! The authoritative DNS server for the appliance's own zone.
//!
//! `zone` derives the records from the provisioning file (with `dkim`'s keys from the
//! state), `serial` keeps the SOA serial across restarts, `answer` finds what a
//! question gets (gathered when the zone loads), `handler` is hickory-server's request
//! handler (rate limiting and header rules included), `rrl` limits responses per
//! source, `notify` tells secondaries about changes, `server` runs it over UDP and TCP
//! with zone swaps that never drop a query, on sockets `bind` binds to addresses that
//! may arrive late; `udp` batches UDP socket I/O beneath hickory-server's request
//! handling, and `tcp` accepts connections within limits no idle client can lock
//! others out of.
//!
//! In the agent: `DnsServer::start(&cfg, state, &listen_addrs(&cfg), threads).await`
//! inside the Tokio runtime, keep `server.handle()` to call `DnsHandle::reload(&cfg)`
//! when the configuration changes (accounts, console `dns reload`), and supervise
//! `server.run()`. `reload` reads files and fsyncs the serial: from async code, call it
//! through `tokio::task::spawn_blocking`. Dropping the server stops it.

mod answer;
mod bind;
mod challenge;
mod dkim;
mod handler;
mod notify;
mod rrl;
mod serial;
mod server;
mod tcp;
mod udp;
mod zone;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use challenge::{
    read_acme_challenges, write_acme_challenges, AcmeAnswer, ACME_CHALLENGE_FILE,
    ACME_CHALLENGE_LABEL,
};
pub use dkim::{read as read_dkim_keys, DkimKey, ED25519_SPKI};
pub use notify::RETRY_AFTER as NOTIFY_RETRY_AFTER;
pub use serial::today_serial;
pub use server::{listen_addrs, DnsHandle, DnsServer};
pub use tcp::{
    IDLE as TCP_IDLE, MAX_CONNECTIONS as TCP_MAX_CONNECTIONS, MAX_PER_SOURCE as TCP_MAX_PER_SOURCE,
};
pub use zone::{build, Sources, Zone};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt; expected \"<serial> <hash>\" (remove it to start a new serial)")]
    SerialCorrupt { path: PathBuf },
    #[error("{path}:{line}: not an ACME DNS-01 answer; expected the name certified, a space and 43 base64url characters a line")]
    AcmeChallenge { path: PathBuf, line: usize },
    #[error("DKIM key {path}: {why}")]
    DkimKey { path: PathBuf, why: String },
    #[error("invalid DNS name {name:?}: {why}")]
    Name { name: String, why: String },
    #[error("cannot encode the response for {name} {rtype}")]
    Encode {
        name: String,
        rtype: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("cannot listen on {addr} ({proto})")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the DNS zone load stopped")]
    Load {
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("a DNS TCP listener stopped")]
    Listener {
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("cannot start a DNS UDP worker thread")]
    Worker {
        #[source]
        source: std::io::Error,
    },
    #[error("a DNS UDP worker ended: {why}")]
    UdpWorker { why: String },
}
