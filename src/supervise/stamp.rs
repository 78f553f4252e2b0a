//! The time stamp on every log and output line: seconds since boot like the kernel's
//! own lines (so they line up with `dmesg`), plus the wall clock once it is plausible
//! (the Pi has no RTC and starts in 1970).

use nix::time::{clock_gettime, ClockId};

/// Before this (2020-01-01) the clock was never set: the Pi boots at 1970.
const PLAUSIBLE_EPOCH_SECS: i64 = 1_577_836_800;

/// `[   12.345678]` like the kernel, then the UTC wall clock when it has been set.
pub fn timestamp() -> String {
    let mono = clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9);
    let wall = clock_gettime(ClockId::CLOCK_REALTIME).map_or(0, |t| t.tv_sec());
    if wall >= PLAUSIBLE_EPOCH_SECS {
        format!("[{mono:12.6}] {}", utc(wall))
    } else {
        format!("[{mono:12.6}]")
    }
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, days-from-civil
/// inverted as in Howard Hinnant's date algorithms).
fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_like_date() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        // `date -u -d @1795398986 +%FT%TZ`
        assert_eq!(utc(1_795_398_986), "2026-11-23T01:56:26Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
