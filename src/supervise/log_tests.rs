//! The logger: its ring, its taps, and sinks that stall or come back.

use super::*;
use std::os::unix::fs::OpenOptionsExt;

/// A logger of the test's own: the process-wide one is shared with tests that log
/// thousands of lines in parallel.
fn own_logger() -> &'static Logger {
    static OWN: OnceLock<Logger> = OnceLock::new();
    OWN.get_or_init(|| Logger::new(|| OWN.get()))
}

#[test]
fn ring_keeps_the_most_recent_lines() {
    let l = own_logger();
    for i in 0..(RING_LINES + 5) {
        l.write_line("letterbox", log::Level::Info, &format!("ring test {i}"));
    }
    assert_eq!(l.recent(2).len(), 2);
    let recent = l.recent(usize::MAX);
    assert_eq!(recent.len(), RING_LINES);
    assert!(recent[0].ends_with("ring test 5"), "{}", recent[0]);
    assert!(recent
        .last()
        .unwrap()
        .ends_with(&format!("ring test {}", RING_LINES + 4)));
}

#[test]
fn a_tap_keeps_the_lines_of_its_modules_only() {
    let l = own_logger();
    let ring = Arc::new(OutputRing::new(10));
    l.tap(vec!["letterbox::dns".into()], ring.clone());
    l.write_line(
        "letterbox::dns::server",
        log::Level::Info,
        "tap: server line",
    );
    l.write_line("letterbox::dns", log::Level::Warn, "tap: module line");
    l.write_line("letterbox::dnsx", log::Level::Info, "tap: other module");
    l.write_line("letterbox::console", log::Level::Info, "tap: console line");
    l.untap(&ring);
    l.write_line("letterbox::dns", log::Level::Info, "tap: after untap");
    let kept = ring.recent(10);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept[0].ends_with("INFO  tap: server line"), "{kept:?}");
    assert!(kept[1].ends_with("WARN  tap: module line"), "{kept:?}");
}

/// A pty: its master (non-blocking), and its slave opened as the console's log handle.
fn console_pty() -> (File, File) {
    let pair = nix::pty::openpty(None, None).unwrap();
    let slave_path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pair.slave)
    ))
    .unwrap();
    let slave = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(&slave_path)
        .unwrap();
    let flags = nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&pair.master, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
    (File::from(pair.master), slave)
}

/// What the pty's master reads up to and including `needle`: the pty hands the
/// slave's output over asynchronously.
fn read_until(mut master: &File, needle: &str) -> String {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while !text.contains(needle) {
        let mut chunk = [0u8; 4096];
        match master.read(&mut chunk) {
            Ok(n) => text.push_str(&String::from_utf8_lossy(&chunk[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "{needle:?} not in {text:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}: {needle:?} not in {text:?}"),
        }
    }
    text
}

#[test]
fn a_reopened_console_gets_the_lines_from_then_on() {
    static MINE: OnceLock<Logger> = OnceLock::new();
    let l = MINE.get_or_init(|| Logger::new(|| MINE.get()));
    let (first_master, first) = console_pty();
    l.write_line("letterbox", log::Level::Info, "reopen: before");
    l.log_to_console(first, false);
    l.write_line("letterbox", log::Level::Info, "reopen: first console");
    // The first console is replayed to, as the kernel's console is.
    let seen = read_until(&first_master, "reopen: first console");
    assert!(seen.contains("reopen: before"), "{seen:?}");

    // The device goes away (its handle is dead: writes fail) and comes back.
    drop(first_master);
    let (second_master, second) = console_pty();
    l.write_line("letterbox", log::Level::Info, "reopen: while away");
    l.log_to_console(second, false);
    l.write_line("letterbox", log::Level::Info, "reopen: back");
    // Not replayed to again (a replay comes first): the lines before are in `logs`.
    let seen = read_until(&second_master, "reopen: back");
    assert!(!seen.contains("reopen: while away"), "{seen:?}");
    assert!(!seen.contains("reopen: before"), "{seen:?}");
}

#[test]
fn a_console_nobody_reads_does_not_hold_up_logging() {
    // A pty whose master is never read: its buffer fills and a blocking write stalls.
    let pair = nix::pty::openpty(None, None).unwrap();
    let slave_path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pair.slave)
    ))
    .unwrap();
    let stalled = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(&slave_path)
        .unwrap();
    let l = logger();
    l.log_to_console(stalled, false);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Far more than the pty buffer and the queue hold together.
        for i in 0..(QUEUE_LINES * 20) {
            log::info!("stall test line {i} {}", "x".repeat(200));
        }
        let _ = done.send(());
    });
    // Generous: the calls only queue, but CI machines stall; a blocked logger never ends.
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("logging blocked on a console nobody reads");
    let last = format!("stall test line {} ", QUEUE_LINES * 20 - 1);
    assert!(l.recent(RING_LINES).iter().any(|line| line.contains(&last)));
    // Keeps the master open (an unread pty, not a hung-up one) until the end.
    drop(pair.master);
}
