//! Each unit's recent output, kept in a bounded ring for `logs UNIT`: what a process unit
//! wrote to stdout and stderr, and the log lines of the modules that make up the unit.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

/// Lines a unit keeps; older ones are dropped.
pub const UNIT_LINES: usize = 200;
/// A longer line is cut: one runaway line must not hold a unit's whole budget.
const LINE_BYTES: usize = 1000;

/// A bounded ring of recent lines.
#[derive(Debug)]
pub struct OutputRing {
    lines: Mutex<VecDeque<String>>,
    capacity: usize,
}

impl OutputRing {
    pub fn new(capacity: usize) -> OutputRing {
        OutputRing {
            lines: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    pub fn push(&self, mut line: String) {
        if line.len() > LINE_BYTES {
            let mut cut = LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The most recent `n` lines, oldest first.
    pub fn recent(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

/// Copies a child's stream into `ring`, line by line, stamped and labelled (`stdout`,
/// `stderr`), on a thread of its own: a blocking pipe read must not hold up the runtime.
/// The thread ends when the child (and whatever inherited the pipe) closes it.
pub fn capture(ring: Arc<OutputRing>, stream: impl Read + Send + 'static, label: &'static str) {
    let spawned = std::thread::Builder::new()
        .name(format!("unit {label}"))
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(1..)) {
                let text = String::from_utf8_lossy(&line);
                ring.push(format!(
                    "{} {label}: {}",
                    super::stamp::timestamp(),
                    text.trim_end()
                ));
                line.clear();
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot keep a unit's {label}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_and_cuts_long_ones() {
        let ring = OutputRing::new(3);
        for i in 0..5 {
            ring.push(format!("line {i}"));
        }
        assert_eq!(ring.recent(10), ["line 2", "line 3", "line 4"]);
        assert_eq!(ring.recent(1), ["line 4"]);
        ring.push("é".repeat(LINE_BYTES));
        let long = ring.recent(1).pop().unwrap();
        assert!(long.len() <= LINE_BYTES + '…'.len_utf8(), "{}", long.len());
        assert!(long.ends_with('…'));
    }

    #[test]
    fn captures_a_stream_line_by_line() {
        let ring = Arc::new(OutputRing::new(10));
        capture(ring.clone(), &b"one\ntwo\nthree"[..], "stdout");
        let done = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            ring.recent(10).len() == 3
        });
        assert!(done, "{:?}", ring.recent(10));
        let lines = ring.recent(10);
        assert!(lines[0].ends_with(" stdout: one"), "{lines:?}");
        assert!(lines[2].ends_with(" stdout: three"), "{lines:?}");
    }
}
