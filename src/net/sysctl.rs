//! Network sysctls under /proc/sys/net (per-interface IPv6 ones under ipv6/conf); they
//! belong to the network namespace of the thread that opens them, like the links themselves.

use std::path::PathBuf;

use super::NetError;

fn path(link: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/ipv6/conf/{link}/{name}"))
}

/// Sets an integer sysctl of `link`; returns whether it had another value before.
pub fn ensure(link: &str, name: &str, value: u8) -> Result<bool, NetError> {
    ensure_at(path(link, name), value)
}

/// Sets the integer sysctl at `path`; returns whether it had another value before.
pub fn ensure_at(path: PathBuf, value: u8) -> Result<bool, NetError> {
    let err = |source| NetError::Sysctl {
        path: path.clone(),
        source,
    };
    let current = std::fs::read_to_string(&path).map_err(err)?;
    if current.trim() == value.to_string() {
        return Ok(false);
    }
    std::fs::write(&path, format!("{value}\n")).map_err(err)?;
    Ok(true)
}
