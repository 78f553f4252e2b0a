//! What `net::apply` did, per interface and for the system files; printed by the CLI and the
//! console's `status`/`net` commands.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::NetError;

/// One piece of state letterbox manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    LinkUp,
    Mtu(u32),
    /// An IPv6 sysctl of the interface (`accept_ra`, `autoconf`) and the value it must have.
    Sysctl {
        name: &'static str,
        value: u8,
    },
    Address(IpNet),
    DefaultRoute(IpAddr),
    File(PathBuf),
    Hostname(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Added,
    Removed,
    /// Set to the value the file asks for.
    Changed,
    /// Already as the file asks.
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub item: Item,
    pub outcome: Outcome,
}

impl Entry {
    /// `outcome` if the step `changed` anything, `Unchanged` otherwise.
    pub fn new(item: Item, changed: bool, outcome: Outcome) -> Entry {
        Entry {
            item,
            outcome: if changed { outcome } else { Outcome::Unchanged },
        }
    }

    pub fn unchanged(item: Item) -> Entry {
        Entry {
            item,
            outcome: Outcome::Unchanged,
        }
    }
}

/// One interface: listed in the file, or holding letterbox's leftovers from an earlier file.
#[derive(Debug)]
pub struct LinkReport {
    pub name: String,
    pub entries: Vec<Entry>,
    pub errors: Vec<NetError>,
}

impl LinkReport {
    pub fn new(name: &str) -> LinkReport {
        LinkReport {
            name: name.into(),
            entries: Vec::new(),
            errors: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub links: Vec<LinkReport>,
    /// Files under the root and the host name.
    pub system: Vec<Entry>,
    pub system_errors: Vec<NetError>,
}

impl Report {
    /// True when anything was added, removed or set.
    pub fn changed(&self) -> bool {
        self.links
            .iter()
            .flat_map(|l| &l.entries)
            .chain(&self.system)
            .any(|e| e.outcome != Outcome::Unchanged)
    }

    /// True when any interface or system step failed.
    pub fn failed(&self) -> bool {
        !self.system_errors.is_empty() || self.links.iter().any(|l| !l.errors.is_empty())
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::LinkUp => write!(f, "link up"),
            Item::Mtu(mtu) => write!(f, "mtu {mtu}"),
            Item::Sysctl { name, value } => write!(f, "{name} = {value}"),
            Item::Address(net) => write!(f, "address {net}"),
            Item::DefaultRoute(gw) => write!(f, "default via {gw}"),
            Item::File(path) => write!(f, "file {}", path.display()),
            Item::Hostname(name) => write!(f, "hostname {name}"),
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (sign, what) = match self.outcome {
            Outcome::Added => ('+', "added"),
            Outcome::Removed => ('-', "removed"),
            Outcome::Changed => ('~', "set"),
            Outcome::Unchanged => ('=', "unchanged"),
        };
        write!(f, "  {sign} {} ({what})", self.item)
    }
}

fn write_section(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    entries: &[Entry],
    errors: &[NetError],
) -> fmt::Result {
    writeln!(f, "{name}:")?;
    for entry in entries {
        writeln!(f, "{entry}")?;
    }
    for error in errors {
        writeln!(f, "  ! error: {}", crate::error_chain(error))?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for link in &self.links {
            write_section(f, &link.name, &link.entries, &link.errors)?;
        }
        write_section(f, "system", &self.system, &self.system_errors)?;
        write!(
            f,
            "{}",
            if self.changed() {
                "changes applied"
            } else {
                "no changes"
            }
        )?;
        let failed: Vec<&str> = self
            .links
            .iter()
            .filter(|l| !l.errors.is_empty())
            .map(|l| l.name.as_str())
            .collect();
        if !failed.is_empty() {
            write!(f, "; failed interfaces: {}", failed.join(", "))?;
        }
        if !self.system_errors.is_empty() {
            write!(f, "; system settings failed")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_matches_golden() {
        let report = Report {
            links: vec![
                LinkReport {
                    name: "eth0".into(),
                    entries: vec![
                        Entry {
                            item: Item::Sysctl {
                                name: "accept_ra",
                                value: 0,
                            },
                            outcome: Outcome::Unchanged,
                        },
                        Entry {
                            item: Item::Mtu(1400),
                            outcome: Outcome::Changed,
                        },
                        Entry {
                            item: Item::Address("192.0.2.10/24".parse().unwrap()),
                            outcome: Outcome::Added,
                        },
                        Entry {
                            item: Item::Address("2001:db8::11/64".parse().unwrap()),
                            outcome: Outcome::Removed,
                        },
                        Entry {
                            item: Item::DefaultRoute("2001:db8::1".parse().unwrap()),
                            outcome: Outcome::Unchanged,
                        },
                    ],
                    errors: vec![],
                },
                LinkReport {
                    name: "eth1".into(),
                    entries: vec![],
                    errors: vec![NetError::LinkNotFound {
                        name: "eth1".into(),
                    }],
                },
            ],
            system: vec![
                Entry {
                    item: Item::File("/etc/hosts".into()),
                    outcome: Outcome::Changed,
                },
                Entry {
                    item: Item::Hostname("mail".into()),
                    outcome: Outcome::Unchanged,
                },
            ],
            system_errors: vec![],
        };
        assert!(report.changed());
        assert!(report.failed());
        crate::golden::check("net/report.txt", &format!("{report}\n"));
    }

    #[test]
    fn unchanged_report_says_no_changes() {
        let report = Report {
            system: vec![Entry {
                item: Item::Hostname("mail".into()),
                outcome: Outcome::Unchanged,
            }],
            ..Report::default()
        };
        assert!(!report.changed());
        assert!(!report.failed());
        assert!(report.to_string().ends_with("\nno changes"), "{report}");
    }
}
