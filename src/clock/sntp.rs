//! One SNTP exchange (RFC 4330) with `sntpc`, over a tokio UDP socket, timed by the
//! [`Clock`] being kept: its offset is that clock's, whatever time it now says.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sntpc::{NtpContext, NtpTimestampGenerator, NtpUdpSocket};
use tokio::net::UdpSocket;

use super::Clock;

const NTP_PORT: u16 = 123;

/// How far a clock is behind a server (negative: ahead), in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Offset(i64);

impl Offset {
    pub const fn from_micros(micros: i64) -> Offset {
        Offset(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn abs(self) -> Offset {
        Offset(self.0.saturating_abs())
    }

    /// `time` moved by this offset.
    pub fn apply(self, time: SystemTime) -> SystemTime {
        let by = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            time + by
        } else {
            time.checked_sub(by)
                .filter(|t| *t >= SystemTime::UNIX_EPOCH)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }
}

/// `+0.003 s`, `-12.500 s`.
impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { '-' } else { '+' };
        let abs = self.0.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:03} s",
            abs / 1_000_000,
            abs % 1_000_000 / 1000
        )
    }
}

/// A server's answer.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub address: SocketAddr,
    pub offset: Offset,
    pub round_trip: Duration,
    pub stratum: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum SntpError {
    #[error("cannot resolve the name")]
    Resolve(#[source] std::io::Error),
    #[error("the name has no address")]
    NoAddress,
    #[error("cannot open a UDP socket")]
    Socket(#[source] std::io::Error),
    #[error("network error")]
    Network(#[source] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer was refused: {0}")]
    BadAnswer(String),
}

/// The addresses of a server given by name or address, on NTP's port.
pub async fn resolve(server: &str) -> Result<Vec<SocketAddr>, SntpError> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((server, NTP_PORT))
        .await
        .map_err(SntpError::Resolve)?
        .collect();
    if addresses.is_empty() {
        return Err(SntpError::NoAddress);
    }
    Ok(addresses)
}

/// Asks `address` for the time; the offset is `clock`'s.
pub async fn query(
    address: SocketAddr,
    clock: &dyn Clock,
    timeout: Duration,
) -> Result<Sample, SntpError> {
    let local: SocketAddr = match address {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = Socket {
        udp: UdpSocket::bind(local).await.map_err(SntpError::Socket)?,
        error: Mutex::new(None),
    };
    // Connected: the kernel drops datagrams from anyone else.
    socket
        .udp
        .connect(address)
        .await
        .map_err(SntpError::Network)?;
    let context = NtpContext::new(Stamps {
        clock,
        since_epoch: Duration::ZERO,
    });
    let answer = tokio::time::timeout(timeout, sntpc::get_time(address, &socket, context)).await;
    let result = match answer {
        Err(_) => return Err(SntpError::Timeout(timeout)),
        Ok(Err(sntpc::Error::Network)) => {
            let io = socket.error.lock().expect("socket error").take();
            return Err(SntpError::Network(
                io.unwrap_or_else(|| std::io::Error::other("short send")),
            ));
        }
        Ok(Err(e)) => return Err(SntpError::BadAnswer(format!("{e:?}"))),
        Ok(Ok(result)) => result,
    };
    Ok(Sample {
        address,
        offset: Offset(result.offset()),
        round_trip: Duration::from_micros(result.roundtrip()),
        stratum: result.stratum(),
    })
}

/// The kept clock's time, as sntpc asks for it.
#[derive(Clone, Copy)]
struct Stamps<'a> {
    clock: &'a dyn Clock,
    since_epoch: Duration,
}

impl NtpTimestampGenerator for Stamps<'_> {
    fn init(&mut self) {
        self.since_epoch = self
            .clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
    }

    fn timestamp_sec(&self) -> u64 {
        self.since_epoch.as_secs()
    }

    fn timestamp_subsec_micros(&self) -> u32 {
        self.since_epoch.subsec_micros()
    }
}

/// A connected UDP socket for sntpc, which keeps only "network error" of a failure: the
/// I/O error itself is kept here.
struct Socket {
    udp: UdpSocket,
    error: Mutex<Option<std::io::Error>>,
}

impl Socket {
    fn keep<T>(&self, result: std::io::Result<T>) -> sntpc::Result<T> {
        result.map_err(|e| {
            *self.error.lock().expect("socket error") = Some(e);
            sntpc::Error::Network
        })
    }
}

impl NtpUdpSocket for Socket {
    async fn send_to(&self, buf: &[u8], _: SocketAddr) -> sntpc::Result<usize> {
        self.keep(self.udp.send(buf).await)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> sntpc::Result<(usize, SocketAddr)> {
        self.keep(self.udp.recv_from(buf).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_read_in_seconds_with_their_sign() {
        assert_eq!(Offset(3_000).to_string(), "+0.003 s");
        assert_eq!(Offset(-12_500_000).to_string(), "-12.500 s");
        assert_eq!(Offset(0).to_string(), "+0.000 s");
    }

    #[test]
    fn an_offset_moves_a_time_either_way() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(Offset(1_500_000).apply(t), t + Duration::from_millis(1500));
        assert_eq!(Offset(-1_500_000).apply(t), t - Duration::from_millis(1500));
        assert_eq!(
            Offset(-200_000_000).apply(t),
            SystemTime::UNIX_EPOCH,
            "never before 1970"
        );
    }

    #[tokio::test]
    async fn addresses_resolve_without_a_lookup() {
        let got = resolve("192.0.2.1").await.unwrap();
        assert_eq!(got, vec!["192.0.2.1:123".parse::<SocketAddr>().unwrap()]);
        let got = resolve("2001:db8::1").await.unwrap();
        assert_eq!(
            got,
            vec!["[2001:db8::1]:123".parse::<SocketAddr>().unwrap()]
        );
    }
}
