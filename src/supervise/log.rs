//! The agent's logger: every line goes to the kernel log (appliance), to the console
//! device and/or stderr, and into a ring buffer that the `logs` command shows. A unit can
//! tap the lines of its own modules into its own ring ([`Logger::tap`]).
//!
//! Logging never waits for a device: a `log!` call stores the line in the ring and queues
//! it for a writer thread, the only code that writes to the sinks. A stalled tty (a pty
//! nobody reads, flow control, a slow line) then holds up that thread alone; when its
//! queue is full further lines are dropped, counted and reported as "N lines dropped".

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use super::output::OutputRing;
use super::stamp::timestamp;

/// How many recent lines `logs` can show.
const RING_LINES: usize = 500;
/// How many lines may wait for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 1000;
/// How long the last lines may take to reach the console before a prompt, an exit or a
/// reboot: long enough to be seen, short enough that a stalled tty cannot stop either.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// A sink to attach; handed to the writer thread, which owns the sinks.
enum Attach {
    Kmsg(File),
    Console {
        file: File,
        /// Whether the ring's earlier lines are written first (the kernel console's replay).
        replay: bool,
        /// The console is the tty stderr has been writing to: stderr stops, no replay.
        replaces_stderr: bool,
    },
    Stderr {
        /// CR LF: as PID 1, stderr is the kernel's console, whose tty may be raw.
        crlf: bool,
    },
}

/// What the writer thread owns: each file sink with the sequence number of its first
/// queued line (the lines before it were replayed or are not its business).
#[derive(Default)]
struct Sinks {
    kmsg: Option<(File, u64)>,
    console: Option<(File, u64)>,
    /// Whether lines go to stderr: the CR LF flag and the sequence number of the first
    /// line stderr no longer gets, once the console took over.
    stderr: Option<(bool, Option<u64>)>,
}

enum Message {
    Line(Line),
    /// A sink is waiting in `Logger::attach`.
    Attach,
    /// Answers once every line queued before it is written.
    Flush(Sender<()>),
}

pub struct Logger {
    ring: Mutex<Ring>,
    queue: SyncSender<Message>,
    /// Sinks waiting for the writer thread, each with the sequence number of the next
    /// line when it was attached. Kept here rather than queued: a sink is never dropped.
    attach: Mutex<Vec<(Attach, u64)>>,
    /// Lines dropped because the queue was full, not yet reported.
    dropped: AtomicU64,
    /// Units' rings, each with the log targets (module paths) whose lines it keeps.
    taps: RwLock<Vec<(Vec<String>, Arc<OutputRing>)>>,
}

struct Ring {
    lines: VecDeque<Line>,
    /// Sequence number of the next line.
    next: u64,
}

/// One logged line, kept for `logs` and for sinks that join late.
#[derive(Clone)]
struct Line {
    seq: u64,
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
        Logger::new(|| LOGGER.get())
    });
    if fresh && log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    logger
}

impl Logger {
    /// A logger with its own writer thread, which finds the logger through `find` (it
    /// starts before the logger has its final address).
    fn new(find: fn() -> Option<&'static Logger>) -> Logger {
        let (queue, lines) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("log writer".into())
            .spawn(move || write_lines(lines, find))
            .expect("cannot start the log writer thread");
        Logger {
            ring: Mutex::new(Ring {
                lines: VecDeque::with_capacity(RING_LINES),
                next: 0,
            }),
            queue,
            attach: Mutex::default(),
            dropped: AtomicU64::new(0),
            taps: RwLock::default(),
        }
    }

    /// Also keeps, in `ring`, the lines whose log target is one of `targets` or inside
    /// one (`letterbox::dns` takes `letterbox::dns::server` too), until [`Logger::untap`].
    pub fn tap(&self, targets: Vec<String>, ring: Arc<OutputRing>) {
        self.taps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((targets, ring));
    }

    pub fn untap(&self, ring: &Arc<OutputRing>) {
        self.taps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, r)| !Arc::ptr_eq(r, ring));
    }

    /// Also writes to the kernel log (`/dev/kmsg`); appliance only, where dmesg is the log.
    pub fn log_to_kmsg(&self) -> std::io::Result<()> {
        let kmsg = std::fs::OpenOptions::new().write(true).open("/dev/kmsg")?;
        self.attach(Attach::Kmsg(kmsg));
        Ok(())
    }

    /// Also writes to the console device (a second handle of the console's tty), starting
    /// with the lines logged before it was known, as the kernel's console does; unless it
    /// is the tty stderr has been writing to, which then stops instead. Called again (the
    /// console reopened its device), the new handle replaces the old one and gets the
    /// lines from then on.
    pub fn log_to_console(&self, console: File, same_tty_as_stderr: bool) {
        self.attach(Attach::Console {
            file: console,
            replay: !same_tty_as_stderr,
            replaces_stderr: same_tty_as_stderr,
        });
    }

    /// Also writes to stderr: run mode, where the caller collects it, and PID 1 until the
    /// console takes over, where it is the kernel's console (`crlf`: end lines with CR LF).
    pub fn log_to_stderr(&self, crlf: bool) {
        self.attach(Attach::Stderr { crlf });
    }

    /// Hands a sink to the writer thread: the lines logged so far are its past (replayed
    /// or not at all), the later ones go to it as they come.
    fn attach(&self, sink: Attach) {
        let ring = self.ring.lock().expect("log ring");
        let mut waiting = self.attach.lock().expect("log sinks");
        waiting.push((sink, ring.next));
        drop((waiting, ring));
        // When the queue is full the writer is busy and picks the sink up at its next line.
        let _ = self.queue.try_send(Message::Attach);
    }

    /// Waits until the lines logged so far are written, but no longer than `limit`: the
    /// last lines before an exit or a reboot should be seen, a stalled tty must not stop it.
    pub fn flush_within(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let (done, written) = channel();
        let mut flush = Message::Flush(done);
        loop {
            match self.queue.try_send(flush) {
                Ok(()) => break,
                Err(TrySendError::Full(again)) if Instant::now() < deadline => {
                    flush = again;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// [`Logger::flush_within`] for async code: the console calls it before a prompt, so
    /// the lines logged before it come before it on the tty.
    pub async fn flushed(&'static self, limit: Duration) {
        let _ = tokio::task::spawn_blocking(move || self.flush_within(limit)).await;
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
        ring.lines
            .iter()
            .skip(ring.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    fn write_line(&self, target: &str, level: log::Level, message: &str) {
        let stamped = format!("{} letterbox: {level:<5} {message}", timestamp());
        for (targets, ring) in self.taps.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if targets.iter().any(|t| within(target, t)) {
                ring.push(stamped.clone());
            }
        }
        let line = {
            let mut ring = self.ring.lock().expect("log ring");
            if ring.lines.len() == RING_LINES {
                ring.lines.pop_front();
            }
            let line = Line {
                seq: ring.next,
                level,
                message: message.to_string(),
                stamped,
            };
            ring.next += 1;
            ring.lines.push_back(line.clone());
            line
        };
        if let Err(TrySendError::Full(_)) = self.queue.try_send(Message::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether a log target is `module` or one of its submodules.
fn within(target: &str, module: &str) -> bool {
    target
        .strip_prefix(module)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// The writer thread: the only code that writes to the sinks, so the only one a stalled
/// device can hold up.
fn write_lines(queue: Receiver<Message>, find: fn() -> Option<&'static Logger>) {
    let mut sinks = Sinks::default();
    for message in queue {
        let Some(logger) = find() else { continue };
        let waiting = std::mem::take(&mut *logger.attach.lock().expect("log sinks"));
        for (sink, next) in waiting {
            sinks.adopt(logger, sink, next);
        }
        match message {
            Message::Line(line) => sinks.write(&line),
            Message::Attach => {}
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
        let dropped = logger.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let message = format!("{dropped} log lines dropped: the console could not keep up");
            sinks.write(&Line {
                seq: u64::MAX,
                level: log::Level::Warn,
                stamped: format!("{} letterbox: WARN  {message}", timestamp()),
                message,
            });
        }
    }
}

impl Sinks {
    fn adopt(&mut self, logger: &Logger, sink: Attach, next: u64) {
        let past = || {
            logger
                .recent_lines(RING_LINES)
                .into_iter()
                .filter(move |line| line.seq < next)
        };
        match sink {
            Attach::Kmsg(mut kmsg) => {
                for line in past() {
                    write_kmsg(&mut kmsg, line.level, &line.message);
                }
                self.kmsg = Some((kmsg, next));
            }
            Attach::Console {
                mut file,
                replay,
                replaces_stderr,
            } => {
                // A console that comes back is not replayed to: the lines it missed are in
                // `logs`, and a screenful of them would bury its login prompt.
                if replay && self.console.is_none() {
                    for line in past() {
                        let _ = file.write_all(format!("{}\r\n", line.stamped).as_bytes());
                    }
                }
                if let Some((_, until @ None)) = self.stderr.as_mut().filter(|_| replaces_stderr) {
                    *until = Some(next);
                }
                self.console = Some((file, next));
            }
            Attach::Stderr { crlf } => self.stderr = Some((crlf, None)),
        }
    }

    /// A sink that fails (console unplugged, kmsg rate limit) must not stop the others.
    fn write(&mut self, line: &Line) {
        if let Some((kmsg, _)) = self.kmsg.as_mut().filter(|(_, from)| line.seq >= *from) {
            write_kmsg(kmsg, line.level, &line.message);
        }
        if let Some((console, _)) = self.console.as_mut().filter(|(_, from)| line.seq >= *from) {
            let _ = console.write_all(format!("{}\r\n", line.stamped).as_bytes());
        }
        let ending = match self.stderr {
            Some((_, Some(until))) if line.seq >= until => return,
            Some((true, _)) => "\r\n",
            Some((false, _)) => "\n",
            None => return,
        };
        let _ = write!(std::io::stderr(), "{}{ending}", line.stamped);
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
            self.write_line(record.target(), record.level(), line);
        }
    }

    fn flush(&self) {
        self.flush_within(Duration::from_secs(1));
    }
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

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
