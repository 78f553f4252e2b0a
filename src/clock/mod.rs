//! The system clock. The Pi has no real-time clock: it starts in 1970. Early at boot the
//! time saved on the data partition, or the image's build time when that is later, is
//! restored ([`restore_at_boot`]), so the clock never runs backwards across boots; the
//! agent's clock unit then sets it from the configured NTP servers ([`synchronise`]) and
//! saves it again ([`saved`]).
//!
//! [`ClockStatus`] is the one answer to "can the clock be trusted yet", for everything
//! that stamps or judges times: TLS certificates, ACME, DKIM signatures.
//!
//! Only the machine's own init sets the clock ([`owns_system_clock`]): `CLOCK_REALTIME`
//! belongs to no namespace, so the agent as PID 1 of a namespace, or under `letterbox
//! run`, leaves the host's clock alone and only measures it.

pub mod saved;
pub mod sntp;
mod status;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

pub use saved::{restore, Restore, RestoredFrom};
pub use sntp::{Offset, Sample, SntpError};
pub use status::{ClockState, ClockStatus, Synced};

/// An offset larger than this is stepped; a smaller one is slewed (ntpd's threshold):
/// the clock then never jumps back by a fraction of a second, which Dovecot resents.
pub const STEP_THRESHOLD: Offset = Offset::from_micros(128_000);
/// How long one server has to answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("cannot set the clock to {}", utc(*.to))]
    Set { to: SystemTime, source: nix::Error },
    #[error("cannot slew the clock by {offset}")]
    Slew { offset: Offset, source: nix::Error },
    #[error("reading the clock")]
    Read(#[source] nix::Error),
}

/// The clock being kept: the system's, or a test's own.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
    /// Sets the clock to `to` at once.
    fn step_to(&self, to: SystemTime) -> Result<(), ClockError>;
    /// Moves the clock by `offset`: stepped when large, slewed when small.
    fn correct(&self, offset: Offset) -> Result<Correction, ClockError>;
}

/// How a correction was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    Stepped,
    Slewed,
}

impl Correction {
    pub fn for_offset(offset: Offset) -> Correction {
        if offset.abs() > STEP_THRESHOLD {
            Correction::Stepped
        } else {
            Correction::Slewed
        }
    }
}

/// The machine's `CLOCK_REALTIME`. Setting it needs CAP_SYS_TIME and changes the time of
/// every namespace: only for the machine's own init ([`owns_system_clock`]).
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn step_to(&self, to: SystemTime) -> Result<(), ClockError> {
        let since = to
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let spec = nix::sys::time::TimeSpec::from_duration(since);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, spec)
            .map_err(|source| ClockError::Set { to, source })
    }

    fn correct(&self, offset: Offset) -> Result<Correction, ClockError> {
        let how = Correction::for_offset(offset);
        match how {
            Correction::Stepped => {
                let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
                    .map_err(ClockError::Read)?;
                let now = SystemTime::UNIX_EPOCH + Duration::from(now);
                self.step_to(offset.apply(now))?;
            }
            Correction::Slewed => slew(offset)?,
        }
        Ok(how)
    }
}

/// adjtime(3): the kernel runs the clock a little fast or slow (0.5 ms a second) until
/// `offset` is made up.
fn slew(offset: Offset) -> Result<(), ClockError> {
    let micros = offset.as_micros();
    let delta = nix::libc::timeval {
        tv_sec: micros.div_euclid(1_000_000) as nix::libc::time_t,
        tv_usec: micros.rem_euclid(1_000_000) as nix::libc::suseconds_t,
    };
    // SAFETY: `delta` is a valid timeval for the call's duration; the old delta is not
    // asked for (null).
    let rc = unsafe { nix::libc::adjtime(&delta, std::ptr::null_mut()) };
    nix::Error::result(rc)
        .map(drop)
        .map_err(|source| ClockError::Slew { offset, source })
}

/// From /proc/self/ns/pid of the initial PID namespace (PROC_PID_INIT_INO, linux/proc_ns.h).
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// Whether this process is the machine's init, which alone may set the machine's clock:
/// PID 1 of the initial PID namespace (the appliance's agent; not the agent as PID 1 of a
/// namespace in tests, nor `letterbox run`).
pub fn owns_system_clock() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::process::id() == 1
        && std::fs::metadata("/proc/self/ns/pid").is_ok_and(|ns| ns.ino() == INITIAL_PID_NAMESPACE)
}

/// When this program was built: its own file's modification time. In the image every file
/// is stamped with the build's SOURCE_DATE_EPOCH, so this is the image's build time.
pub fn build_time() -> Option<SystemTime> {
    // The link itself, not the path it names: PID 1's /init is deleted with the initramfs,
    // and /proc/self/exe still reaches the file.
    std::fs::metadata("/proc/self/exe").ok()?.modified().ok()
}

/// What [`restore_at_boot`] did, for `status`.
static BOOT_RESTORE: OnceLock<Restore> = OnceLock::new();

/// PID 1's boot step, once the data partition is mounted: sets the clock to the saved time
/// or the build time, whichever is later, when it is behind both. Anything but the
/// machine's own init leaves the clock alone.
pub fn restore_at_boot(state_dir: &std::path::Path) {
    if !owns_system_clock() {
        log::info!("clock: not the machine's init, so the clock is left as it is");
        return;
    }
    match restore(state_dir, build_time(), &SystemClock) {
        Ok(done) => {
            log::info!("clock: {done}");
            let _ = BOOT_RESTORE.set(done);
        }
        Err(e) => log::error!("clock: {}", crate::error_chain(&e)),
    }
}

/// What the boot step did, when this process ran it.
pub fn boot_restore() -> Option<Restore> {
    BOOT_RESTORE.get().cloned()
}

/// Asks the servers in turn (each name's every address) until one answers, and corrects
/// `clock` by its offset.
pub async fn synchronise(
    servers: &[String],
    clock: &dyn Clock,
    timeout: Duration,
) -> Result<(Synced, Correction), SyncError> {
    let synced = ask(servers, clock, timeout).await?;
    let correction = clock.correct(synced.offset)?;
    Ok((synced, correction))
}

/// The first answer from the servers, in turn (each name's every address), measured
/// against `clock`; the error names what each server did.
pub async fn ask(
    servers: &[String],
    clock: &dyn Clock,
    timeout: Duration,
) -> Result<Synced, SyncError> {
    let mut problems = Vec::new();
    for server in servers {
        let addresses = match sntp::resolve(server).await {
            Ok(addresses) => addresses,
            Err(e) => {
                problems.push(format!("{server}: {}", crate::error_chain(&e)));
                continue;
            }
        };
        for address in addresses {
            match sntp::query(address, clock, timeout).await {
                Ok(sample) => return Ok(Synced::new(server, &sample)),
                Err(e) => problems.push(format!(
                    "{}: {}",
                    describe(server, address),
                    crate::error_chain(&e)
                )),
            }
        }
    }
    Err(SyncError::NoAnswer(problems))
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no NTP server answered ({})", .0.join("; "))]
    NoAnswer(Vec<String>),
    #[error(transparent)]
    Clock(#[from] ClockError),
}

/// `name (address)`, or the address alone when the name is one.
fn describe(server: &str, address: SocketAddr) -> String {
    if server == address.ip().to_string() {
        server.to_string()
    } else {
        format!("{server} ({})", address.ip())
    }
}

/// `2026-11-30T18:06:23Z`.
pub fn utc(time: SystemTime) -> String {
    let t = time::OffsetDateTime::from(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_offsets_are_slewed_and_large_ones_stepped() {
        assert_eq!(
            Correction::for_offset(Offset::from_micros(3_000)),
            Correction::Slewed
        );
        assert_eq!(
            Correction::for_offset(Offset::from_micros(-128_000)),
            Correction::Slewed
        );
        assert_eq!(
            Correction::for_offset(Offset::from_micros(-128_001)),
            Correction::Stepped
        );
        assert_eq!(
            Correction::for_offset(Offset::from_micros(1_796_000_000_000_000)),
            Correction::Stepped
        );
    }

    #[test]
    fn a_test_process_never_owns_the_clock() {
        assert!(!owns_system_clock());
    }

    #[test]
    fn times_read_as_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_062_303);
        assert_eq!(utc(t), "2026-11-30T18:11:43Z");
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_server_given_by_address_is_named_once() {
        let a: SocketAddr = "192.0.2.1:123".parse().unwrap();
        assert_eq!(describe("192.0.2.1", a), "192.0.2.1");
        assert_eq!(
            describe("ntp.example.org", a),
            "ntp.example.org (192.0.2.1)"
        );
    }
}
