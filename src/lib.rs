//! letterbox: the init agent and image builder of a self-hosted Raspberry Pi mail appliance.
//!
//! One module per concern, in layers that import only the ones below them: `cli` and
//! `init` at the top; `console`; `agent` (the running agent and its commands);
//! `supervise` (units, reaper, logs); and the concerns themselves (`config`, `net`,
//! `dns`, `clock`, `early_boot`, `image`, `mail`, `webmail`).
pub mod accounts;
pub mod agent;
pub mod atomic_file;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod containers;
pub mod content_hash;
pub mod dns;
pub mod early_boot;
pub mod golden;
pub mod image;
pub mod init;
pub mod mail;
pub mod net;
pub mod passwd;
pub mod paths;
pub mod supervise;
pub mod webmail;

/// Renders an error and its sources as one readable chain: "a: b: c".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
