//! The milter wire format (Sendmail's libmilter protocol, version 6, as Postfix speaks it):
//! each packet is a 4-byte big-endian length, then a command byte and its data. Parsing
//! is bounded: a packet longer than [`MAX_PACKET`] or one whose data does not fit its
//! command is an error, and the connection is closed (Postfix then applies
//! `milter_default_action`).

use std::net::IpAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest packet accepted. Postfix sends the body in chunks of at most 64 KiB; the
/// other packets are a header or a few strings.
pub const MAX_PACKET: usize = 1 << 20;

/// The protocol version spoken (Postfix 2.6 and later speak 6).
pub const VERSION: u32 = 6;
/// Actions: add (and insert) headers; change (here: delete) headers.
pub const SMFIF_ADDHDRS: u32 = 0x01;
pub const SMFIF_CHGHDRS: u32 = 0x10;
/// Protocol flag: header values are sent and taken with their leading space, so that the
/// message is rebuilt byte for byte as signed.
pub const SMFIP_HDR_LEADSPC: u32 = 0x0010_0000;
/// Protocol flags: steps the MTA leaves out (the milter judges nothing by them).
pub const SMFIP_NORCPT: u32 = 0x08;
pub const SMFIP_NOUNKNOWN: u32 = 0x100;
pub const SMFIP_NODATA: u32 = 0x200;
pub const SMFIP_NOEOH: u32 = 0x40;
/// Protocol flags: steps the MTA sends without waiting for a reply (`SMFIP_NR_*`).
pub const SMFIP_NR_HDR: u32 = 0x80;
pub const SMFIP_NR_CONN: u32 = 0x1000;
pub const SMFIP_NR_HELO: u32 = 0x2000;
pub const SMFIP_NR_MAIL: u32 = 0x4000;
pub const SMFIP_NR_BODY: u32 = 0x8_0000;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("reading from the MTA")]
    Io(#[from] std::io::Error),
    #[error("a packet of {0} bytes: expected 1 to {MAX_PACKET}")]
    Length(usize),
    #[error("command {command:?}: {what}")]
    Malformed { command: char, what: &'static str },
    #[error("unknown command byte 0x{0:02x}")]
    UnknownCommand(u8),
}

/// A command from the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    /// Macros for the command `stage` that follows.
    Macro {
        stage: u8,
        pairs: Vec<(String, String)>,
    },
    /// The client; no address for a local (non-SMTP) submission.
    Connect {
        hostname: String,
        address: Option<IpAddr>,
    },
    Helo(String),
    /// MAIL FROM's arguments, the address (in angle brackets) first.
    Mail(Vec<String>),
    Rcpt(Vec<String>),
    Data,
    Header {
        name: String,
        value: Vec<u8>,
    },
    EndOfHeaders,
    Body(Vec<u8>),
    /// End of the message, with a last body chunk (Postfix sends none).
    EndOfMessage(Vec<u8>),
    Abort,
    Quit,
    /// Quit this message's connection and start a new one on the same socket.
    QuitNewConnection,
    Unknown(Vec<u8>),
}

/// A reply to the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    Continue,
    Accept,
    TempFail,
    /// An SMTP reply, such as `550 5.7.1 ...`.
    ReplyCode(String),
    /// A header inserted at `index` (0: on top).
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// The `index`th (from 1) header called `name` changed; an empty value deletes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
}

/// Reads one command; `None` when the MTA closed the connection between packets.
pub async fn read_command<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Command>, CodecError> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let length = u32::from_be_bytes(length) as usize;
    if !(1..=MAX_PACKET).contains(&length) {
        return Err(CodecError::Length(length));
    }
    let mut packet = vec![0u8; length];
    reader.read_exact(&mut packet).await?;
    parse(packet[0], &packet[1..]).map(Some)
}

/// The command `code` with its `data`.
pub fn parse(code: u8, data: &[u8]) -> Result<Command, CodecError> {
    let bad = |what| CodecError::Malformed {
        command: code as char,
        what,
    };
    Ok(match code {
        b'O' => {
            let word = |i: usize| -> Result<u32, CodecError> {
                let bytes = data
                    .get(i * 4..i * 4 + 4)
                    .ok_or_else(|| bad("expected three 32-bit words"))?;
                Ok(u32::from_be_bytes(bytes.try_into().expect("four bytes")))
            };
            Command::OptNeg {
                version: word(0)?,
                actions: word(1)?,
                protocol: word(2)?,
            }
        }
        b'D' => {
            let (&stage, rest) = data.split_first().ok_or_else(|| bad("expected a stage"))?;
            let strings = strings(rest).ok_or_else(|| bad("expected NUL-ended strings"))?;
            if strings.len() % 2 != 0 {
                return Err(bad("expected name and value pairs"));
            }
            let pairs = strings
                .chunks(2)
                .map(|p| (text(p[0]), text(p[1])))
                .collect();
            Command::Macro { stage, pairs }
        }
        b'C' => {
            let end = data
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| bad("expected a NUL-ended host name"))?;
            let hostname = text(&data[..end]);
            let rest = &data[end + 1..];
            let address = match rest.first() {
                Some(b'4' | b'6') => {
                    // The family, a 16-bit port, then the address as text.
                    let address = rest
                        .get(3..)
                        .and_then(strings)
                        .and_then(|s| s.first().map(|a| text(a)))
                        .ok_or_else(|| bad("expected a port and a NUL-ended address"))?;
                    let address = address.strip_prefix("IPv6:").unwrap_or(&address);
                    Some(address.parse().map_err(|_| bad("expected an IP address"))?)
                }
                Some(_) => None,
                None => return Err(bad("expected an address family")),
            };
            Command::Connect { hostname, address }
        }
        b'H' => Command::Helo(one_string(data).ok_or_else(|| bad("expected a NUL-ended name"))?),
        b'M' | b'R' => {
            let args: Vec<String> = strings(data)
                .ok_or_else(|| bad("expected NUL-ended arguments"))?
                .into_iter()
                .map(text)
                .collect();
            if args.is_empty() {
                return Err(bad("expected an address"));
            }
            match code {
                b'M' => Command::Mail(args),
                _ => Command::Rcpt(args),
            }
        }
        b'T' => Command::Data,
        b'L' => {
            let parts = strings(data).filter(|p| p.len() == 2);
            let parts = parts.ok_or_else(|| bad("expected a NUL-ended name and value"))?;
            Command::Header {
                name: text(parts[0]),
                value: parts[1].to_vec(),
            }
        }
        b'N' => Command::EndOfHeaders,
        b'B' => Command::Body(data.to_vec()),
        b'E' => Command::EndOfMessage(data.to_vec()),
        b'A' => Command::Abort,
        b'Q' => Command::Quit,
        b'K' => Command::QuitNewConnection,
        b'U' => Command::Unknown(data.to_vec()),
        other => return Err(CodecError::UnknownCommand(other)),
    })
}

/// NUL-ended strings, every one ended; `None` if the last is not.
fn strings(data: &[u8]) -> Option<Vec<&[u8]>> {
    if data.is_empty() {
        return Some(Vec::new());
    }
    let body = data.strip_suffix(&[0])?;
    Some(body.split(|&b| b == 0).collect())
}

fn one_string(data: &[u8]) -> Option<String> {
    let parts = strings(data)?;
    (parts.len() == 1).then(|| text(parts[0]))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Reply {
    /// The packet: length, code, data.
    pub fn encode(&self) -> Vec<u8> {
        let mut data = Vec::new();
        let code = match self {
            Reply::OptNeg {
                version,
                actions,
                protocol,
            } => {
                for word in [version, actions, protocol] {
                    data.extend_from_slice(&word.to_be_bytes());
                }
                b'O'
            }
            Reply::Continue => b'c',
            Reply::Accept => b'a',
            Reply::TempFail => b't',
            Reply::ReplyCode(text) => {
                push_string(&mut data, text);
                b'y'
            }
            Reply::InsertHeader { index, name, value } => {
                data.extend_from_slice(&index.to_be_bytes());
                push_string(&mut data, name);
                push_string(&mut data, value);
                b'i'
            }
            Reply::ChangeHeader { index, name, value } => {
                data.extend_from_slice(&index.to_be_bytes());
                push_string(&mut data, name);
                push_string(&mut data, value);
                b'm'
            }
        };
        let mut packet = Vec::with_capacity(5 + data.len());
        packet.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
        packet.push(code);
        packet.extend_from_slice(&data);
        packet
    }
}

/// A string and its NUL; a NUL inside would end it early on the other side, so none is
/// written.
fn push_string(data: &mut Vec<u8>, text: &str) {
    data.extend(text.bytes().filter(|&b| b != 0));
    data.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u8, data: &[u8]) -> Vec<u8> {
        let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(code);
        p.extend_from_slice(data);
        p
    }

    async fn read(bytes: &[u8]) -> Result<Option<Command>, CodecError> {
        read_command(&mut &bytes[..]).await
    }

    #[tokio::test]
    async fn commands_postfix_sends_are_parsed() {
        let mut optneg = Vec::new();
        for w in [6u32, 0x1ff, 0x1f_ffff] {
            optneg.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(
            read(&packet(b'O', &optneg)).await.unwrap(),
            Some(Command::OptNeg {
                version: 6,
                actions: 0x1ff,
                protocol: 0x1f_ffff
            })
        );
        assert_eq!(
            read(&packet(
                b'C',
                b"client.example.net\x004\x00\x19192.0.2.20\x00"
            ))
            .await
            .unwrap(),
            Some(Command::Connect {
                hostname: "client.example.net".into(),
                address: Some("192.0.2.20".parse().unwrap())
            })
        );
        assert_eq!(
            read(&packet(b'C', b"h\x006\x00\x19IPv6:2001:db8::20\x00"))
                .await
                .unwrap(),
            Some(Command::Connect {
                hostname: "h".into(),
                address: Some("2001:db8::20".parse().unwrap())
            })
        );
        assert_eq!(
            read(&packet(b'C', b"localhost\x00U")).await.unwrap(),
            Some(Command::Connect {
                hostname: "localhost".into(),
                address: None
            })
        );
        assert_eq!(
            read(&packet(b'D', b"M{auth_authen}\x00alice\x00i\x00ABC\x00"))
                .await
                .unwrap(),
            Some(Command::Macro {
                stage: b'M',
                pairs: vec![
                    ("{auth_authen}".into(), "alice".into()),
                    ("i".into(), "ABC".into())
                ]
            })
        );
        assert_eq!(
            read(&packet(b'M', b"<a@example.net>\x00SIZE=10\x00"))
                .await
                .unwrap(),
            Some(Command::Mail(vec![
                "<a@example.net>".into(),
                "SIZE=10".into()
            ]))
        );
        assert_eq!(
            read(&packet(b'L', b"Subject\x00 hi\x00")).await.unwrap(),
            Some(Command::Header {
                name: "Subject".into(),
                value: b" hi".to_vec()
            })
        );
        assert_eq!(read(&[]).await.unwrap(), None, "a clean close");
    }

    #[tokio::test]
    async fn malformed_and_oversized_packets_are_clear_errors() {
        // A length past the limit is refused before anything is allocated for it.
        let huge = [0xff, 0xff, 0xff, 0xff, b'B'];
        assert!(matches!(
            read(&huge).await,
            Err(CodecError::Length(0xffff_ffff))
        ));
        assert!(matches!(
            read(&[0, 0, 0, 0]).await,
            Err(CodecError::Length(0))
        ));
        // Cut short: the length promises more than comes.
        assert!(matches!(
            read(&[0, 0, 0, 9, b'B', 1]).await,
            Err(CodecError::Io(_))
        ));
        let cases: [(u8, &[u8], &str); 7] = [
            (b'O', b"\0\0\0\x06", "three 32-bit words"),
            (b'D', b"", "a stage"),
            (b'D', b"Mname\0", "pairs"),
            (b'C', b"no-nul", "host name"),
            (b'C', b"h\x004\x00", "port and a NUL-ended address"),
            (b'L', b"Subject\0hi", "name and value"),
            (b'M', b"", "an address"),
        ];
        for (code, data, expected) in cases {
            let e = read(&packet(code, data)).await.unwrap_err().to_string();
            assert!(e.contains(expected), "{:?}: {e}", code as char);
        }
        let e = read(&packet(b'C', b"h\x004\x00\x19not-an-ip\x00"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("an IP address"), "{e}");
        let e = read(&packet(b'Z', b"")).await.unwrap_err();
        assert_eq!(e.to_string(), "unknown command byte 0x5a");
    }

    #[test]
    fn replies_are_encoded_with_their_length() {
        assert_eq!(Reply::Continue.encode(), [0, 0, 0, 1, b'c']);
        assert_eq!(
            Reply::ReplyCode("550 5.7.1 no".into()).encode(),
            packet(b'y', b"550 5.7.1 no\0")
        );
        assert_eq!(
            Reply::InsertHeader {
                index: 0,
                name: "X".into(),
                value: " v".into()
            }
            .encode(),
            packet(b'i', b"\0\0\0\0X\0 v\0")
        );
        assert_eq!(
            Reply::ChangeHeader {
                index: 2,
                name: "X".into(),
                value: String::new()
            }
            .encode(),
            packet(b'm', b"\0\0\0\x02X\0\0")
        );
    }
}
