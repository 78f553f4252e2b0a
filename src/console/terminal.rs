//! Line input and output on the console tty: the console echoes and edits lines itself
//! (the tty is raw), so passwords are never echoed.

use std::fs::File;
use std::io::{self, Read, Write};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

pub struct Terminal {
    fd: AsyncFd<File>,
    /// The previous line ended with CR; a following LF belongs to it (CR LF terminals).
    after_cr: bool,
}

const BACKSPACE: u8 = 0x08;
const DELETE: u8 = 0x7f;
const CTRL_C: u8 = 0x03;
const CTRL_D: u8 = 0x04;
const CTRL_U: u8 = 0x15;
const ESCAPE: u8 = 0x1b;
const BELL: &str = "\x07";
/// The longest line kept: more than any command or password; a line noise storm or a
/// pasted file must not grow the agent's memory.
pub const MAX_LINE: usize = 1024;

/// What one line read ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Line(String),
    /// ^D on an empty line: the user leaves.
    Ended,
    /// No key came within the idle limit.
    Idle,
}

impl Terminal {
    pub fn new(file: File) -> io::Result<Terminal> {
        // SAFETY: the File owns its descriptor and is only reachable through the AsyncFd,
        // so the descriptor stays open and the same for the AsyncFd's lifetime.
        let fd = unsafe { AsyncFd::register(file) }?;
        Ok(Terminal {
            fd,
            after_cr: false,
        })
    }

    /// Writes text, turning `\n` into CR LF (the tty does no output processing).
    pub async fn write(&self, text: &str) -> io::Result<()> {
        let bytes = text.replace('\n', "\r\n").into_bytes();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().write(rest)) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// The next byte; an error of kind `TimedOut` when none comes within `idle`.
    async fn read_byte(&self, idle: Option<Duration>) -> io::Result<u8> {
        match idle {
            Some(limit) => tokio::time::timeout(limit, self.next_byte())
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?,
            None => self.next_byte().await,
        }
    }

    async fn next_byte(&self) -> io::Result<u8> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut byte = [0u8];
            match guard.try_io(|fd| fd.get_ref().read(&mut byte)) {
                // A hung-up tty reads as end of file (or EIO, below): the session ends.
                Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(_)) => return Ok(byte[0]),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads one line with backspace, ^U (erase line) and ^C (abandon line); arrow keys
    /// and other escape sequences are ignored. `echo: false` for passwords. Beyond
    /// [`MAX_LINE`] bytes further characters ring the bell and are dropped.
    pub async fn read_line(&mut self, echo: bool) -> io::Result<Input> {
        self.read_line_within(echo, None).await
    }

    /// [`Terminal::read_line`], or [`Input::Idle`] once no key has come for `idle`: each key,
    /// even one that changes nothing, starts the wait over.
    pub async fn read_line_within(
        &mut self,
        echo: bool,
        idle: Option<Duration>,
    ) -> io::Result<Input> {
        match self.edit_line(echo, idle).await {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(Input::Idle),
            other => other,
        }
    }

    async fn edit_line(&mut self, echo: bool, idle: Option<Duration>) -> io::Result<Input> {
        let mut line: Vec<u8> = Vec::new();
        loop {
            let byte = self.read_byte(idle).await?;
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            match byte {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    self.write("\n").await?;
                    return Ok(Input::Line(String::from_utf8_lossy(&line).into_owned()));
                }
                BACKSPACE | DELETE => {
                    let erased = pop_char(&mut line);
                    if erased && echo {
                        self.write("\x08 \x08").await?;
                    }
                }
                CTRL_U => {
                    while pop_char(&mut line) {
                        if echo {
                            self.write("\x08 \x08").await?;
                        }
                    }
                }
                CTRL_C => {
                    self.write("^C\n").await?;
                    return Ok(Input::Line(String::new()));
                }
                CTRL_D if line.is_empty() => {
                    self.write("\n").await?;
                    return Ok(Input::Ended);
                }
                ESCAPE => self.skip_escape_sequence(idle).await?,
                b if b >= 0x20 && line.len() >= MAX_LINE => self.write(BELL).await?,
                b if b >= 0x20 => {
                    line.push(b);
                    if echo {
                        self.write(&String::from_utf8_lossy(&[b])).await?;
                    }
                }
                _ => {}
            }
        }
    }

    /// Skips `ESC [ ... final` (CSI) or `ESC x`.
    async fn skip_escape_sequence(&self, idle: Option<Duration>) -> io::Result<()> {
        if self.read_byte(idle).await? == b'[' {
            while !(0x40..=0x7e).contains(&self.read_byte(idle).await?) {}
        }
        Ok(())
    }
}

/// Removes the last UTF-8 character; false when the line was empty.
fn pop_char(line: &mut Vec<u8>) -> bool {
    while let Some(b) = line.pop() {
        if b & 0xc0 != 0x80 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn pty() -> (File, Terminal) {
        let pair = nix::pty::openpty(None, None).unwrap();
        let slave = crate::console::device::open_for_login(
            &std::fs::read_link(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&pair.slave)
            ))
            .unwrap(),
            115_200,
        )
        .unwrap();
        let master: OwnedFd = pair.master;
        (File::from(master), Terminal::new(slave).unwrap())
    }

    #[tokio::test]
    async fn edits_lines_and_hides_passwords() {
        let (mut master, mut term) = pty();
        master
            .write_all(b"stat\x7fx\x08tus\r\nsecret\rab\x1b[Dc\x15help\n\x04")
            .unwrap();
        assert_eq!(
            term.read_line(true).await.unwrap(),
            Input::Line("status".into())
        );
        assert_eq!(
            term.read_line(false).await.unwrap(),
            Input::Line("secret".into())
        );
        assert_eq!(
            term.read_line(true).await.unwrap(),
            Input::Line("help".into())
        );
        assert_eq!(term.read_line(true).await.unwrap(), Input::Ended);
        // The pty hands the echo over asynchronously: read until the ^D's newline is in.
        let mut echoed = String::new();
        while !echoed.ends_with("help\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = master.read(&mut chunk).unwrap();
            echoed.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        assert!(
            echoed.starts_with("stat\x08 \x08x\x08 \x08tus\r\n"),
            "{echoed:?}"
        );
        assert!(!echoed.contains("secret"), "{echoed:?}");
    }

    #[tokio::test]
    async fn an_idle_line_gives_up_but_each_key_starts_the_wait_over() {
        let (mut master, mut term) = pty();
        let idle = Duration::from_millis(400);
        // Keys 150 ms apart, well inside the limit, for longer than the limit in all; then
        // nothing.
        let typist = std::thread::spawn(move || {
            for key in b"status\r" {
                std::thread::sleep(Duration::from_millis(150));
                master.write_all(&[*key]).unwrap();
            }
            master
        });
        assert_eq!(
            term.read_line_within(true, Some(idle * 2)).await.unwrap(),
            Input::Line("status".into())
        );
        let _master = typist.join().unwrap();
        let waited = std::time::Instant::now();
        assert_eq!(
            term.read_line_within(true, Some(idle)).await.unwrap(),
            Input::Idle
        );
        assert!(waited.elapsed() >= idle, "{:?}", waited.elapsed());
    }

    #[tokio::test]
    async fn a_line_stops_growing_at_the_limit() {
        let (mut master, mut term) = pty();
        let long = "a".repeat(MAX_LINE + 500);
        // From another thread: the pty buffer is smaller than the line and its echo.
        let writer = std::thread::spawn(move || {
            master.write_all(long.as_bytes()).unwrap();
            master.write_all(b"\rok\r").unwrap();
            master
        });
        let Input::Line(line) = term.read_line(false).await.unwrap() else {
            panic!("no line");
        };
        assert_eq!(line, "a".repeat(MAX_LINE));
        // The input after the cut-off line is intact.
        assert_eq!(
            term.read_line(false).await.unwrap(),
            Input::Line("ok".into())
        );
        let mut master = writer.join().unwrap();
        let mut echoed = Vec::new();
        // Both lines' ends are in: every bell was written before them.
        while echoed.windows(2).filter(|w| w == b"\r\n").count() < 2 {
            let mut chunk = [0u8; 4096];
            let n = master.read(&mut chunk).unwrap();
            echoed.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(echoed.iter().filter(|&&b| b == 0x07).count(), 500);
    }
}
