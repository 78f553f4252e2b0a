//! The SOA serial: increases whenever the zone's content changes and survives restarts.
//!
//! `STATE/dns/serial` holds "<serial> <content hash>". A new hash moves the serial to
//! today's date-based value (YYYYMMDD00) or, when that is not higher, to the old serial
//! plus one, so it never goes backwards even with a wrong clock.

use std::path::{Path, PathBuf};

use super::DnsError;

/// Returns the serial for zone content with hash `hash`, recording it when it changes.
/// A corrupt file is re-seeded (see [`reseed`]) with a warning, not an error: one bad
/// byte in the state must not take DNS down.
pub fn serial_for(state: &Path, hash: u64) -> Result<u32, DnsError> {
    let path = serial_path(state);
    let serial = match read(&path)? {
        Stored::Valid(serial, old) if old == hash => return Ok(serial),
        Stored::Valid(serial, _) => next_serial(Some(serial), today_serial()),
        Stored::Missing => next_serial(None, today_serial()),
        Stored::Corrupt { salvaged } => {
            let serial = reseed(salvaged, today_serial());
            log::warn!(
                "dns: {} is corrupt (expected \"<serial> <hash>\"); serial re-seeded at \
                 {serial}, past any date-based serial served until today",
                path.display()
            );
            serial
        }
    };
    write_atomically(&path, &format!("{serial} {hash:016x}\n"))?;
    Ok(serial)
}

/// The serial `serial_for` would return for `hash`, without recording anything. A check
/// (`letterbox zone --state`), so a corrupt file is an error here.
pub fn peek_serial(state: &Path, hash: u64) -> Result<u32, DnsError> {
    let path = serial_path(state);
    Ok(match read(&path)? {
        Stored::Valid(serial, old) if old == hash => serial,
        Stored::Valid(serial, _) => next_serial(Some(serial), today_serial()),
        Stored::Missing => next_serial(None, today_serial()),
        Stored::Corrupt { .. } => return Err(DnsError::SerialCorrupt { path }),
    })
}

/// What the serial file holds.
enum Stored {
    Missing,
    Valid(u32, u64),
    /// Unreadable as "<serial> <hash>"; `salvaged` is its leading number, if any.
    Corrupt {
        salvaged: Option<u32>,
    },
}

fn read(path: &Path) -> Result<Stored, DnsError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            Ok(match parse(&text) {
                Some((serial, hash)) => Stored::Valid(serial, hash),
                None => Stored::Corrupt {
                    salvaged: text.split_whitespace().next().and_then(|s| s.parse().ok()),
                },
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::Missing),
        Err(source) => Err(DnsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The serial after a corrupt file. The serial served before is lost, and a secondary
/// ignores a zone whose serial went backwards, so this must exceed it: the number
/// the file still starts with, if any, plus one; and at least today's last date-based
/// serial (YYYYMMDD99), which exceeds every serial this scheme gave out until today
/// unless a day saw more than a hundred changes or the clock was wrong.
fn reseed(salvaged: Option<u32>, today: u32) -> u32 {
    next_serial(salvaged, today + LAST_OF_DAY)
}

/// The highest change counter of a date-based serial.
const LAST_OF_DAY: u32 = 99;

fn serial_path(state: &Path) -> PathBuf {
    state.join("dns").join("serial")
}

fn parse(text: &str) -> Option<(u32, u64)> {
    let mut it = text.split_whitespace();
    let serial = it.next()?.parse().ok()?;
    let hash = u64::from_str_radix(it.next()?, 16).ok()?;
    it.next().is_none().then_some((serial, hash))
}

/// The next serial after `old`: the date-based one when higher, else old + 1 (RFC 1982
/// arithmetic wraps, but a u32 from dates will not reach the top before year 4294).
pub fn next_serial(old: Option<u32>, today: u32) -> u32 {
    match old {
        Some(old) if old >= today => old.wrapping_add(1),
        _ => today,
    }
}

/// Today's first date-based serial, YYYYMMDD00 (UTC).
pub fn today_serial() -> u32 {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    (y as u32) * 1_000_000 + m * 10_000 + d * 100
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A crash never leaves a torn or lost serial.
fn write_atomically(path: &Path, text: &str) -> Result<(), DnsError> {
    crate::atomic_file::replace(path, text.as_bytes()).map_err(|source| DnsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_become_serials() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(next_serial(None, 2025112300), 2025112300);
        assert_eq!(next_serial(Some(2025112300), 2025112300), 2025112301);
        assert_eq!(next_serial(Some(2025112399), 2025112200), 2025112400);
        assert_eq!(next_serial(Some(7), 2025112300), 2025112300);
    }

    #[test]
    fn serial_is_stable_for_same_content_and_increases_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let a = serial_for(dir.path(), 1).unwrap();
        assert_eq!(serial_for(dir.path(), 1).unwrap(), a);
        let b = serial_for(dir.path(), 2).unwrap();
        assert!(b > a);
        assert!(peek_serial(dir.path(), 1).unwrap() > b);
        assert_eq!(
            peek_serial(dir.path(), 2).unwrap(),
            b,
            "peeking records nothing"
        );
        let c = serial_for(dir.path(), 1).unwrap();
        assert!(c > b, "going back to old content still moves forward");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("dns"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["serial"], "no temporary file left behind");
    }

    #[test]
    fn a_reseed_exceeds_what_the_file_still_shows_and_todays_serials() {
        let today = 2025112300;
        assert_eq!(reseed(None, today), 2025112399);
        assert_eq!(reseed(Some(2025112305), today), 2025112399);
        assert_eq!(reseed(Some(2025112399), today), 2025112400);
        assert_eq!(
            reseed(Some(2031010100), today),
            2031010101,
            "a serial ahead"
        );
    }

    #[test]
    fn a_corrupt_serial_file_is_reseeded_and_repaired_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dns/serial");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let ahead = today_serial() + 500; // a busy past, ahead of today's date
        for (corrupt, at_least) in [
            (format!("{ahead} not-a-hash\n"), ahead + 1),
            ("\0\0garbage".to_string(), today_serial() + LAST_OF_DAY),
        ] {
            std::fs::write(&path, &corrupt).unwrap();
            assert!(
                matches!(
                    peek_serial(dir.path(), 1),
                    Err(DnsError::SerialCorrupt { .. })
                ),
                "the check reports it"
            );
            let serial = serial_for(dir.path(), 1).unwrap();
            assert!(serial >= at_least, "{corrupt:?}: {serial} < {at_least}");
            assert_eq!(
                serial_for(dir.path(), 1).unwrap(),
                serial,
                "the file repaired"
            );
        }
    }
}
