//! One MTA connection: the commands of each message gathered into a [`Message`], judged
//! at its end, and the verdict sent back as header changes and a final reply.

use std::future::Future;
use std::net::IpAddr;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::codec::{self, CodecError, Command, Reply};

/// A message larger than this is tempfailed rather than buffered: above Postfix's
/// `message_size_limit` (10 MB by default) with room for the headers Postfix counts
/// apart, so it only bounds memory.
pub const MAX_MESSAGE: usize = 12 << 20;

/// What the MTA told about one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The client's address; `None` for a local (non-SMTP) submission.
    pub client: Option<IpAddr>,
    pub helo: String,
    /// MAIL FROM's address, without angle brackets (empty for the null sender).
    pub sender: String,
    /// The SASL login (`{auth_authen}`), when the client authenticated.
    pub login: Option<String>,
    /// The headers as received, values with their leading space.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Message {
    /// The message as it would be sent: headers and body, CRLF line ends.
    pub fn raw(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.body.len() + 64 * self.headers.len());
        for (name, value) in &self.headers {
            raw.extend_from_slice(name.as_bytes());
            raw.push(b':');
            // Folded lines come with bare LF.
            for (i, line) in value.split(|&b| b == b'\n').enumerate() {
                if i > 0 {
                    raw.extend_from_slice(b"\r\n");
                }
                raw.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
            }
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&self.body);
        raw
    }
}

/// What to do with a message at its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Headers removed: the name and which one of that name (from 1).
    pub remove: Vec<(String, u32)>,
    /// Headers added on top, in this order (the first ends up first), values without
    /// their leading space.
    pub insert: Vec<(String, String)>,
    pub action: Action,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Action {
    #[default]
    Accept,
    /// Refused with this SMTP reply (`550 5.7.1 ...`).
    Reject(String),
    /// Deferred: the client tries again later.
    TempFail,
}

/// Decides what happens to each message.
pub trait Judge {
    fn judge(&self, message: &Message) -> impl Future<Output = Verdict> + Send;
}

/// Serves one connection until the MTA quits or closes it; a malformed packet ends it
/// with the error.
pub async fn serve<S, J>(stream: &mut S, judge: &J) -> Result<(), CodecError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    J: Judge,
{
    let mut state = State::default();
    // Buffered: unanswered steps come in bursts, a read each would cost two system calls.
    let mut stream = BufReader::new(stream);
    while let Some(command) = codec::read_command(&mut stream).await? {
        let replies = match command {
            Command::Quit => return Ok(()),
            Command::EndOfMessage(last) => {
                state.add_body(&last);
                let replies = match state.too_big {
                    true => vec![Reply::TempFail],
                    false => state.replies(judge.judge(&state.message).await),
                };
                state.next_message();
                replies
            }
            other => state.take(other),
        };
        if !replies.is_empty() {
            let packets: Vec<u8> = replies.iter().flat_map(Reply::encode).collect();
            stream.write_all(&packets).await?;
        }
    }
    Ok(())
}

/// The steps Postfix may leave out: nothing is judged by the recipients, the DATA command,
/// unknown commands or the end of the headers.
const SKIPPED: u32 =
    codec::SMFIP_NORCPT | codec::SMFIP_NOUNKNOWN | codec::SMFIP_NODATA | codec::SMFIP_NOEOH;
/// The steps Postfix need not wait for: only the message's end gets a verdict, so every
/// other step would cost a round trip (a dozen a message) for nothing.
const UNANSWERED: u32 = codec::SMFIP_NR_CONN
    | codec::SMFIP_NR_HELO
    | codec::SMFIP_NR_MAIL
    | codec::SMFIP_NR_HDR
    | codec::SMFIP_NR_BODY;

#[derive(Default)]
struct State {
    leading_space: bool,
    /// The `UNANSWERED` steps the MTA agreed to: a reply to one of them would be taken
    /// as the reply to a later step.
    unanswered: u32,
    message: Message,
    /// The message's bytes so far, kept as they come (summing them at each header would
    /// cost a sender of many tiny headers quadratic time).
    size: usize,
    too_big: bool,
}

impl State {
    /// The replies to a command other than the message's end.
    fn take(&mut self, command: Command) -> Vec<Reply> {
        let step = match command {
            Command::Connect { .. } => codec::SMFIP_NR_CONN,
            Command::Helo(_) => codec::SMFIP_NR_HELO,
            Command::Mail(_) => codec::SMFIP_NR_MAIL,
            Command::Header { .. } => codec::SMFIP_NR_HDR,
            Command::Body(_) => codec::SMFIP_NR_BODY,
            _ => 0,
        };
        match command {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                // The MTA offers the flags it knows; the milter takes those it wants.
                let taken = protocol & (codec::SMFIP_HDR_LEADSPC | SKIPPED | UNANSWERED);
                self.leading_space = taken & codec::SMFIP_HDR_LEADSPC != 0;
                self.unanswered = taken & UNANSWERED;
                return vec![Reply::OptNeg {
                    version: version.min(codec::VERSION),
                    actions: actions & (codec::SMFIF_ADDHDRS | codec::SMFIF_CHGHDRS),
                    protocol: taken,
                }];
            }
            Command::Macro { pairs, .. } => {
                for (name, value) in pairs {
                    if name == "{auth_authen}" && !value.is_empty() {
                        self.message.login = Some(value);
                    }
                }
                return Vec::new();
            }
            Command::Connect { address, .. } => {
                self.message = Message {
                    client: address,
                    ..Message::default()
                };
            }
            Command::Helo(helo) => self.message.helo = helo,
            Command::Mail(args) => {
                let address = &args[0];
                self.message.sender = address
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string();
            }
            Command::Header { name, mut value } => {
                if !self.leading_space {
                    value.insert(0, b' ');
                }
                self.grow(name.len() + value.len());
                if !self.too_big {
                    self.message.headers.push((name, value));
                }
            }
            Command::Body(chunk) => self.add_body(&chunk),
            Command::Abort => {
                self.next_message();
                return Vec::new();
            }
            Command::QuitNewConnection => {
                *self = State {
                    leading_space: self.leading_space,
                    unanswered: self.unanswered,
                    ..State::default()
                };
                return Vec::new();
            }
            Command::Rcpt(_)
            | Command::Data
            | Command::EndOfHeaders
            | Command::Unknown(_)
            | Command::Quit
            | Command::EndOfMessage(_) => {}
        }
        match self.unanswered & step {
            0 => vec![Reply::Continue],
            _ => Vec::new(),
        }
    }

    fn add_body(&mut self, chunk: &[u8]) {
        self.grow(chunk.len());
        if !self.too_big {
            self.message.body.extend_from_slice(chunk);
        }
    }

    fn grow(&mut self, by: usize) {
        self.size = self.size.saturating_add(by);
        if self.size > MAX_MESSAGE {
            self.too_big = true;
            self.message.headers.clear();
            self.message.body = Vec::new();
        }
    }

    /// The connection's facts stay (client, HELO); the message's go.
    fn next_message(&mut self) {
        self.message = Message {
            client: self.message.client,
            helo: std::mem::take(&mut self.message.helo),
            ..Message::default()
        };
        self.size = 0;
        self.too_big = false;
    }

    fn replies(&self, verdict: Verdict) -> Vec<Reply> {
        let space = if self.leading_space { " " } else { "" };
        let mut replies = Vec::new();
        for (name, index) in verdict.remove {
            replies.push(Reply::ChangeHeader {
                index,
                name,
                value: String::new(),
            });
        }
        // Each inserted on top: the last inserted ends up first.
        for (name, value) in verdict.insert.into_iter().rev() {
            replies.push(Reply::InsertHeader {
                index: 0,
                name,
                value: format!("{space}{}", value.replace("\r\n", "\n")),
            });
        }
        replies.push(match verdict.action {
            Action::Accept => Reply::Continue,
            Action::Reject(text) => Reply::ReplyCode(text),
            Action::TempFail => Reply::TempFail,
        });
        replies
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::AsyncReadExt;

    /// Records the messages and answers with a fixed verdict.
    struct Recorder {
        seen: Mutex<Vec<Message>>,
        verdict: Verdict,
    }

    impl Judge for Recorder {
        fn judge(&self, message: &Message) -> impl Future<Output = Verdict> + Send {
            self.seen.lock().unwrap().push(message.clone());
            std::future::ready(self.verdict.clone())
        }
    }

    fn packet(code: u8, data: &[u8]) -> Vec<u8> {
        let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(code);
        p.extend_from_slice(data);
        p
    }

    /// Sends `input`, then returns what came back and how the session ended.
    async fn converse(input: Vec<u8>, judge: &Recorder) -> (Vec<Vec<u8>>, Result<(), CodecError>) {
        let (mut mta, mut milter) = tokio::io::duplex(1 << 20);
        mta.write_all(&input).await.unwrap();
        mta.shutdown().await.unwrap();
        let result = serve(&mut milter, judge).await;
        drop(milter);
        let mut out = Vec::new();
        mta.read_to_end(&mut out).await.unwrap();
        let mut replies = Vec::new();
        let mut rest = &out[..];
        while rest.len() >= 4 {
            let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            replies.push(rest[4..4 + n].to_vec());
            rest = &rest[4 + n..];
        }
        (replies, result)
    }

    /// The MTA's option negotiation, offering the `protocol` flags.
    fn optneg(protocol: u32) -> Vec<u8> {
        let mut data = Vec::new();
        for w in [6u32, 0x1ff, protocol] {
            data.extend_from_slice(&w.to_be_bytes());
        }
        packet(b'O', &data)
    }

    #[tokio::test]
    async fn a_message_is_gathered_judged_and_its_verdict_sent() {
        let judge = Recorder {
            seen: Mutex::new(Vec::new()),
            verdict: Verdict {
                remove: vec![("Authentication-Results".into(), 1)],
                insert: vec![("A".into(), "1".into()), ("B".into(), "x\r\n\ty".into())],
                action: Action::Reject("550 5.7.1 no".into()),
            },
        };
        // An MTA that offers no steps to skip or leave unanswered: each one is answered.
        let input = [
            optneg(codec::SMFIP_HDR_LEADSPC),
            packet(b'D', b"C{daemon_name}\0smtpd\0"),
            packet(b'C', b"client\x004\x00\x19192.0.2.20\x00"),
            packet(b'H', b"client.example.net\0"),
            packet(b'D', b"M{auth_authen}\0alice\0"),
            packet(b'M', b"<alice@example.org>\0"),
            packet(b'R', b"<bob@example.org>\0"),
            packet(b'T', b""),
            packet(b'L', b"From\0 alice@example.org\0"),
            packet(b'L', b"Subject\0 two\n\tlines\0"),
            packet(b'N', b""),
            packet(b'B', b"hello\r\n"),
            packet(b'E', b""),
            packet(b'Q', b""),
        ]
        .concat();
        let (replies, result) = converse(input, &judge).await;
        result.unwrap();
        let seen = judge.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let m = &seen[0];
        assert_eq!(m.client, Some("192.0.2.20".parse().unwrap()));
        assert_eq!(m.helo, "client.example.net");
        assert_eq!(m.sender, "alice@example.org");
        assert_eq!(m.login.as_deref(), Some("alice"));
        assert_eq!(
            String::from_utf8(m.raw()).unwrap(),
            "From: alice@example.org\r\nSubject: two\r\n\tlines\r\n\r\nhello\r\n"
        );
        let codes: Vec<u8> = replies.iter().map(|r| r[0]).collect();
        // OPTNEG, then CONNECT HELO MAIL RCPT DATA HEADER HEADER EOH BODY continue; the
        // end: delete, two inserts (B first, so A ends on top), the reply code.
        assert_eq!(codes, b"Occcccccccmiiy");
        assert_eq!(&replies[0][1..], [0, 0, 0, 6, 0, 0, 0, 0x11, 0, 0x10, 0, 0]);
        assert_eq!(replies[12], b"i\0\0\0\0A\0 1\0");
        assert_eq!(replies[11], b"i\0\0\0\0B\0 x\n\ty\0");
    }

    #[tokio::test]
    async fn offered_by_postfix_steps_are_skipped_or_left_unanswered_and_only_the_end_answered() {
        let judge = Recorder {
            seen: Mutex::new(Vec::new()),
            verdict: Verdict {
                insert: vec![("A".into(), "1".into())],
                ..Verdict::default()
            },
        };
        // Postfix 3.10 offers every flag of protocol version 6; it then leaves out the
        // skipped steps (no RCPT, DATA or end of headers here) and sends the unanswered
        // ones without waiting.
        let input = [
            optneg(0x1f_ffff),
            packet(b'C', b"client\x004\x00\x19192.0.2.20\x00"),
            packet(b'H', b"client.example.net\0"),
            packet(b'M', b"<alice@example.org>\0"),
            packet(b'L', b"Subject\0 one\0"),
            packet(b'B', b"hello\r\n"),
            packet(b'E', b""),
            packet(b'M', b"<alice@example.org>\0"),
            packet(b'L', b"Subject\0 two\0"),
            packet(b'B', b"again\r\n"),
            packet(b'E', b""),
            packet(b'Q', b""),
        ]
        .concat();
        let (replies, result) = converse(input, &judge).await;
        result.unwrap();
        let taken = u32::from_be_bytes(replies[0][9..13].try_into().unwrap());
        assert_eq!(
            taken,
            codec::SMFIP_HDR_LEADSPC | SKIPPED | UNANSWERED,
            "flags taken: {taken:#x}"
        );
        let codes: Vec<u8> = replies.iter().map(|r| r[0]).collect();
        assert_eq!(
            codes, b"Oicic",
            "an insert and a continue at each end, nothing else"
        );
        let seen = judge.seen.lock().unwrap();
        let bodies: Vec<&[u8]> = seen.iter().map(|m| &m.body[..]).collect();
        assert_eq!(bodies, [&b"hello\r\n"[..], b"again\r\n"]);
        assert_eq!(seen[1].headers, [("Subject".to_string(), b" two".to_vec())]);
        assert_eq!(seen[1].helo, "client.example.net");
    }

    #[tokio::test]
    async fn an_aborted_message_is_forgotten_and_a_malformed_packet_ends_the_session() {
        let judge = Recorder {
            seen: Mutex::new(Vec::new()),
            verdict: Verdict::default(),
        };
        let input = [
            optneg(codec::SMFIP_HDR_LEADSPC),
            packet(b'C', b"client\x004\x00\x19192.0.2.20\x00"),
            packet(b'M', b"<a@example.net>\0"),
            packet(b'L', b"Subject\0 first\0"),
            packet(b'A', b""),
            packet(b'M', b"<b@example.net>\0"),
            packet(b'E', b""),
            packet(b'L', b"no value"),
            packet(b'E', b""),
        ]
        .concat();
        let (replies, result) = converse(input, &judge).await;
        let e = result.unwrap_err().to_string();
        assert!(e.contains("'L'") && e.contains("name and value"), "{e}");
        let seen = judge.seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "only the message before the bad packet");
        assert_eq!(seen[0].sender, "b@example.net");
        assert!(seen[0].headers.is_empty(), "the aborted message's header");
        assert_eq!(seen[0].client, Some("192.0.2.20".parse().unwrap()));
        assert_eq!(replies.last().unwrap(), b"c");
    }
}
