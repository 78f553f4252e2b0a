//! The agent's logger: every line goes to the kernel log (appliance), to the console
//! device and/or stderr, and into a ring buffer that the console's `logs` command shows.
//!
//! Lines carry the kernel's kind of timestamp (seconds since boot) so they line up with
//! `dmesg`, plus the wall clock once it is plausible (the Pi has no RTC).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use nix::time::{clock_gettime, ClockId};

/// How many recent lines `logs` can show.
const RING_LINES: usize = 500;
/// Before this (2020-01-01) the clock was never set: the Pi boots at 1970.
const PLAUSIBLE_EPOCH_SECS: i64 = 1_577_836_800;

/// Where log lines go besides the ring buffer.
#[derive(Default)]
struct Sinks {
    kmsg: Option<File>,
    console: Option<File>,
    stderr: bool,
}

pub struct Logger {
    sinks: Mutex<Sinks>,
    ring: Mutex<VecDeque<Line>>,
}

/// One logged line, kept for `logs` and for sinks that join late.
#[derive(Clone)]
struct Line {
    level: log::Level,
    message: String,
    /// With timestamp, prefix and level: what the console and `logs` show.
    stamped: String,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// The process-wide logger, installed as the `log` facade's logger on first use.
pub fn logger() -> &'static Logger {
    let mut fresh = false;
    let logger = LOGGER.get_or_init(|| {
        fresh = true;
        Logger {
            sinks: Mutex::new(Sinks::default()),
            ring: Mutex::new(VecDeque::with_capacity(RING_LINES)),
        }
    });
    if fresh && log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    logger
}

impl Logger {
    /// Also writes to the kernel log (`/dev/kmsg`); appliance only, where dmesg is the log.
    pub fn log_to_kmsg(&self) -> std::io::Result<()> {
        let mut kmsg = std::fs::OpenOptions::new().write(true).open("/dev/kmsg")?;
        let mut sinks = self.sinks.lock().expect("log sinks");
        for line in self.recent_lines(RING_LINES) {
            write_kmsg(&mut kmsg, line.level, &line.message);
        }
        sinks.kmsg = Some(kmsg);
        Ok(())
    }

    /// Also writes to the console device (a second handle of the console's tty), starting
    /// with the lines logged before it was known, as the kernel's console does.
    pub fn log_to_console(&self, mut console: File) {
        let mut sinks = self.sinks.lock().expect("log sinks");
        for line in self.recent_lines(RING_LINES) {
            let _ = console.write_all(format!("{}\r\n", line.stamped).as_bytes());
        }
        sinks.console = Some(console);
    }

    /// Also writes to stderr (run mode, where the caller collects it).
    pub fn log_to_stderr(&self) {
        self.sinks.lock().expect("log sinks").stderr = true;
    }

    /// The most recent `n` lines, oldest first.
    pub fn recent(&self, n: usize) -> Vec<String> {
        self.recent_lines(n)
            .into_iter()
            .map(|l| l.stamped)
            .collect()
    }

    fn recent_lines(&self, n: usize) -> Vec<Line> {
        let ring = self.ring.lock().expect("log ring");
        ring.iter()
            .skip(ring.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    fn write_line(&self, level: log::Level, message: &str) {
        let stamped = format!("{} letterbox: {level:<5} {message}", timestamp());
        {
            let mut ring = self.ring.lock().expect("log ring");
            if ring.len() == RING_LINES {
                ring.pop_front();
            }
            ring.push_back(Line {
                level,
                message: message.to_string(),
                stamped: stamped.clone(),
            });
        }
        let mut sinks = self.sinks.lock().expect("log sinks");
        // A sink that fails (console unplugged, kmsg rate limit) must not stop the others.
        if let Some(kmsg) = sinks.kmsg.as_mut() {
            write_kmsg(kmsg, level, message);
        }
        if let Some(console) = sinks.console.as_mut() {
            let _ = console.write_all(format!("{stamped}\r\n").as_bytes());
        }
        if sinks.stderr {
            let _ = writeln!(std::io::stderr(), "{stamped}");
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Library crates (netlink, hickory) log at info too; only ours and warnings+ are shown.
        if record.level() > log::Level::Warn && !record.target().starts_with("letterbox") {
            return;
        }
        for line in record.args().to_string().lines() {
            self.write_line(record.level(), line);
        }
    }

    fn flush(&self) {}
}

/// The kernel adds its own timestamp; `<N>` is the syslog level.
fn write_kmsg(kmsg: &mut File, level: log::Level, message: &str) {
    let priority = match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    };
    let _ = kmsg.write_all(format!("<{priority}>letterbox: {message}\n").as_bytes());
}

/// `[   12.345678]` like the kernel, then the UTC wall clock when it has been set.
fn timestamp() -> String {
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

    #[test]
    fn ring_keeps_the_most_recent_lines() {
        let l = logger();
        for i in 0..(RING_LINES + 5) {
            l.write_line(log::Level::Info, &format!("ring test {i}"));
        }
        let recent = l.recent(2);
        assert_eq!(recent.len(), 2);
        assert!(recent[1].ends_with(&format!("ring test {}", RING_LINES + 4)));
        assert!(l.recent(usize::MAX).len() <= RING_LINES);
    }
}
