//! `account list`: each account's address and its box's state. Offline there is no box,
//! so the state is "not running" and the mailbox figures are unknown; the agent fills
//! them in from the running boxes.

use serde::Serialize;

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxState {
    Running,
    Restarting,
    Stopped,
    /// No agent runs it: the file or image is edited offline.
    NotRunning,
}

impl BoxState {
    fn as_str(self) -> &'static str {
        match self {
            BoxState::Running => "running",
            BoxState::Restarting => "restarting",
            BoxState::Stopped => "stopped",
            BoxState::NotRunning => "not running",
        }
    }
}

/// One line of `account list`; `None` is a figure nobody could measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    pub name: String,
    pub address: String,
    pub state: BoxState,
    pub mailbox_bytes: Option<u64>,
    pub messages: Option<u64>,
    /// RFC 3339, UTC.
    pub last_delivery: Option<String>,
}

/// The accounts of `cfg` as they are offline: addresses only.
pub fn list(cfg: &Config) -> Vec<Listing> {
    cfg.accounts
        .iter()
        .map(|a| Listing {
            name: a.name.clone(),
            address: format!("box@{}.{}", a.name, cfg.system.domain),
            state: BoxState::NotRunning,
            mailbox_bytes: None,
            messages: None,
            last_delivery: None,
        })
        .collect()
}

/// The listing as aligned columns under a header, or a line saying there is none.
pub fn render_table(listings: &[Listing]) -> String {
    if listings.is_empty() {
        return "no accounts\n".to_string();
    }
    let na = || "n.a.".to_string();
    let rows: Vec<[String; 5]> = std::iter::once(
        ["ADDRESS", "STATE", "SIZE", "MESSAGES", "LAST DELIVERY"].map(str::to_string),
    )
    .chain(listings.iter().map(|l| {
        [
            l.address.clone(),
            l.state.as_str().to_string(),
            l.mailbox_bytes.map_or_else(na, |b| format!("{b} B")),
            l.messages.map_or_else(na, |m| m.to_string()),
            l.last_delivery.clone().unwrap_or_else(na),
        ]
    }))
    .collect();
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
