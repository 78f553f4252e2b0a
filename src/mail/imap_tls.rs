//! IMAP's TLS, ended in the agent in front of the front's Dovecot: 993 with TLS from the
//! start, and 143 with STARTTLS, answered here up to the handshake. Each connection then
//! goes on in clear to Dovecot's loopback listener, after a PROXY v2 header that names the
//! client and says its TLS ended here, so Dovecot checks the login as it would on its own
//! TLS and logs the client's real address.
//!
//! Why not Dovecot's own TLS: Dovecot reads a new certificate only at a reload, which
//! replaces its login processes, and a login process that proxies ends its sessions two
//! seconds after they go idle (`LOGIN_PROXY_DIE_IDLE_SECS`, not a setting): every IMAP
//! client would be cut off at each renewal. Here a renewed pair is read at the next
//! handshake ([`CertFiles`]) and open sessions carry on with theirs.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::tls::{CERT_FILE, KEY_FILE};
use crate::net::forward::{self, proxy_header};

/// Sessions at once on each port; more wait in the listener's backlog. A small
/// organisation's phones and laptops each keep a few open (Dovecot's default is 1000 per
/// login service).
const MAX_SESSIONS: usize = 1000;
/// How long a client on 143 may take before its handshake starts, and any client to
/// finish its handshake (Dovecot's login timeout is a minute).
const BEFORE_TLS_LIMIT: Duration = Duration::from_secs(60);
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);
/// The longest command line answered before TLS; a longer one ends the connection.
const MAX_LINE: u64 = 1024;
/// Bad commands before TLS after which the connection is ended (Dovecot's number).
const MAX_BAD_COMMANDS: u32 = 10;
/// What 143 offers before TLS: no login until STARTTLS (RFC 9051 §6.2.1 and §7.1).
const CAPABILITIES: &str = "IMAP4rev1 ID STARTTLS LOGINDISABLED";

/// Where each port's sessions go, and with which certificate.
pub struct ImapTls {
    acceptor: TlsAcceptor,
    /// Dovecot's listener for connections whose TLS ended here.
    dovecot: SocketAddr,
}

impl ImapTls {
    /// TLS with the pair in `tls_dir`, in front of Dovecot at `dovecot`.
    pub fn new(tls_dir: &Path, dovecot: SocketAddr) -> ImapTls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring's provider supports rustls's default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CertFiles::new(tls_dir)));
        ImapTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            dovecot,
        }
    }

    /// Serves 993 on `listener` until dropped: TLS from the first byte.
    pub async fn serve_implicit(self: Arc<Self>, listener: TcpListener) {
        forward::carry("imap :993", listener, MAX_SESSIONS, move |client, peer| {
            let edge = self.clone();
            async move { edge.implicit(client, peer).await }
        })
        .await
    }

    /// Serves 143 on `listener` until dropped: IMAP in clear up to STARTTLS.
    pub async fn serve_starttls(self: Arc<Self>, listener: TcpListener) {
        forward::carry("imap :143", listener, MAX_SESSIONS, move |client, peer| {
            let edge = self.clone();
            async move { edge.starttls(client, peer).await }
        })
        .await
    }

    async fn implicit(&self, client: TcpStream, peer: SocketAddr) -> io::Result<(u64, u64)> {
        let local = client.local_addr()?;
        let mut tls = within(HANDSHAKE_LIMIT, self.acceptor.accept(client)).await?;
        let mut dovecot = self.connect(peer, local).await?;
        tokio::io::copy_bidirectional(&mut tls, &mut dovecot).await
    }

    async fn starttls(&self, client: TcpStream, peer: SocketAddr) -> io::Result<(u64, u64)> {
        let local = client.local_addr()?;
        let Some(client) = within(BEFORE_TLS_LIMIT, until_starttls(client)).await? else {
            return Ok((0, 0));
        };
        let mut tls = within(HANDSHAKE_LIMIT, self.acceptor.accept(client)).await?;
        let mut dovecot = BufReader::new(self.connect(peer, local).await?);
        // Dovecot greets each connection, but after STARTTLS the client expects no second
        // greeting (RFC 9051 §6.2.1): an OK is dropped, a refusal is passed on.
        let mut greeting = Vec::new();
        within(
            HANDSHAKE_LIMIT,
            (&mut dovecot)
                .take(MAX_LINE)
                .read_until(b'\n', &mut greeting),
        )
        .await?;
        if !greeting.starts_with(b"* OK") {
            tls.write_all(&greeting).await?;
        }
        tokio::io::copy_bidirectional(&mut tls, &mut dovecot).await
    }

    /// A connection to Dovecot for `client`'s session to `local`, its PROXY header sent.
    async fn connect(&self, client: SocketAddr, local: SocketAddr) -> io::Result<TcpStream> {
        let mut dovecot = TcpStream::connect(self.dovecot).await?;
        dovecot
            .write_all(&proxy_header(client, local, true))
            .await?;
        Ok(dovecot)
    }
}

/// `work`, or a timed-out error once `limit` has passed.
async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
}

/// Answers a client on 143 until it asks for TLS, and returns its connection then;
/// `None` once it logged out, left, or sent a line too long or too many bad commands.
/// Whatever it sent after STARTTLS, before the handshake, is dropped with the buffer: a
/// command slipped in there must not run as if it came over TLS (CVE-2011-0411).
pub async fn until_starttls<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> io::Result<Option<S>> {
    let mut stream = BufReader::new(stream);
    let greeting = format!("* OK [CAPABILITY {CAPABILITIES}] Ready: STARTTLS, then log in.\r\n");
    stream.get_mut().write_all(greeting.as_bytes()).await?;
    let mut bad = 0;
    loop {
        let mut line = Vec::new();
        if (&mut stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?
            == 0
        {
            return Ok(None);
        }
        if !line.ends_with(b"\n") {
            stream
                .get_mut()
                .write_all(b"* BYE Command line too long.\r\n")
                .await?;
            return Ok(None);
        }
        let (reply, next) = answer(&String::from_utf8_lossy(&line));
        stream.get_mut().write_all(reply.as_bytes()).await?;
        match next {
            Next::Read => {}
            Next::Bad => {
                bad += 1;
                if bad >= MAX_BAD_COMMANDS {
                    stream
                        .get_mut()
                        .write_all(b"* BYE Too many invalid commands.\r\n")
                        .await?;
                    return Ok(None);
                }
            }
            Next::Close => return Ok(None),
            Next::StartTls => return Ok(Some(stream.into_inner())),
        }
    }
}

/// What follows a reply before TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Read,
    /// Read on, counting one more bad command.
    Bad,
    Close,
    StartTls,
}

/// The reply to one command line before TLS, and what follows it.
fn answer(line: &str) -> (String, Next) {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut words = line.splitn(3, ' ');
    let tag = words.next().unwrap_or_default();
    if !is_tag(tag) {
        return (
            "* BAD Expected a tag, then a command.\r\n".into(),
            Next::Bad,
        );
    }
    let command = words.next().unwrap_or_default().to_ascii_uppercase();
    let arguments = words.next().is_some();
    let done = |what: &str| format!("{tag} OK {what} completed.\r\n");
    match (command.as_str(), arguments) {
        ("CAPABILITY", false) => (
            format!("* CAPABILITY {CAPABILITIES}\r\n{}", done("Capability")),
            Next::Read,
        ),
        ("NOOP", false) => (done("NOOP"), Next::Read),
        ("ID", true) => (format!("* ID NIL\r\n{}", done("ID")), Next::Read),
        ("LOGOUT", false) => (
            format!("* BYE Logging out.\r\n{}", done("Logout")),
            Next::Close,
        ),
        ("STARTTLS", false) => (
            format!("{tag} OK Begin TLS negotiation now.\r\n"),
            Next::StartTls,
        ),
        ("LOGIN" | "AUTHENTICATE", _) => (
            format!("{tag} NO [PRIVACYREQUIRED] No login in clear: STARTTLS first, or use port 993.\r\n"),
            Next::Read,
        ),
        _ => (
            format!(
                "{tag} BAD Expected CAPABILITY, NOOP, ID, STARTTLS or LOGOUT before TLS.\r\n"
            ),
            Next::Bad,
        ),
    }
}

/// Whether `tag` is an IMAP tag: ASTRING-CHARs but '+' (RFC 9051 §9).
fn is_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\+]".contains(&b))
}

/// The TLS pair in a directory, read again at a handshake after either file changed: a
/// renewal, a self-signed pair remade, or one replaced by hand. A pair that cannot be used
/// (half replaced, say) is logged once, and the last good one serves meanwhile.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    good: Option<(Stamp, Arc<CertifiedKey>)>,
    /// The files' stamp when they last failed to load.
    failed: Option<Stamp>,
}

/// Identifies a version of both files: inode, modification time and size.
type Stamp = [(u64, i64, i64, u64); 2];

/// Why a pair cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the key in {path} cannot sign: {source}")]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the certificate in {cert} is not for the key in {key}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

impl CertFiles {
    pub fn new(dir: &Path) -> CertFiles {
        CertFiles {
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
            state: Mutex::new(Loaded::default()),
        }
    }

    /// The pair to serve now: the files' own if they load, else the last good one.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        let stamp = self.stamp().ok();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(stamp), Some((good, key))) = (stamp, &state.good) {
            if stamp == *good {
                return Some(key.clone());
            }
        }
        if stamp.is_some() && stamp == state.failed {
            return state.good.as_ref().map(|(_, key)| key.clone());
        }
        match self.load() {
            Ok(key) => {
                if state.good.is_some() {
                    log::info!(
                        "IMAP: serving the new certificate in {}",
                        self.cert.display()
                    );
                }
                state.failed = None;
                state.good = stamp.map(|s| (s, key.clone()));
                Some(key)
            }
            Err(e) => {
                log::warn!(
                    "IMAP: {}; {}",
                    crate::error_chain(&e),
                    if state.good.is_some() {
                        "the previous certificate serves until they are fixed"
                    } else {
                        "no TLS until they are fixed"
                    }
                );
                state.failed = stamp;
                state.good.as_ref().map(|(_, key)| key.clone())
            }
        }
    }

    fn stamp(&self) -> io::Result<Stamp> {
        let one = |path: &Path| {
            std::fs::metadata(path).map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
        };
        Ok([one(&self.cert)?, one(&self.key)?])
    }

    fn load(&self) -> Result<Arc<CertifiedKey>, CertError> {
        let read = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CertError::Read { path, source }
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(read(&self.cert))?;
        if chain.is_empty() {
            return Err(CertError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(read(&self.key))?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| {
            CertError::Key {
                path: self.key.clone(),
                source,
            }
        })?;
        let pair = CertifiedKey::new(chain, key);
        pair.keys_match().map_err(|source| CertError::Mismatch {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })?;
        Ok(Arc::new(pair))
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

#[cfg(test)]
mod tests;
