//! The running server: hickory-server's request handling over UDP and TCP, answering
//! through [`ZoneHandler`] from one atomically swapped zone that every query reads.
//!
//! UDP: worker threads share each socket and answer in batches (see `udp`), so that
//! DNS load stays off the agent's runtime and no query hops between threads.
//! TCP: hickory's `Server` has no connection limit, so connections are accepted here,
//! capped in all and per source (a client holding connections open must not starve
//! the rest or exhaust PID 1's descriptors), and then served by hickory-server's TCP
//! framing, request parsing and response handle.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use hickory_server::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{ResponseHandle, TimeoutStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::answer::Answers;
use super::handler::{Current, ZoneHandler};
use super::notify::notify_secondaries;
use super::rrl::RateLimiter;
use super::udp;
use super::zone::Zone;
use super::DnsError;
use crate::config::Config;

/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection, at least: a transfer's messages are all queued
/// before the first is written, so a connection gets room for the current zone's.
const TCP_RESPONSE_BUFFER: usize = 64;
/// Concurrent TCP connections, in all and from one source address: past these a new
/// connection is closed at once.
const TCP_MAX_CONNECTIONS: usize = 256;
const TCP_MAX_PER_SOURCE: usize = 16;
/// UDP socket buffers, as NSD sizes them: bursts queue instead of being dropped.
const UDP_BUFFER: usize = 1 << 20;

struct Shared {
    current: Arc<ArcSwap<Current>>,
    state: PathBuf,
    /// The addresses served on: NOTIFY goes out from the one of the secondary's family.
    listen: Vec<SocketAddr>,
    /// Reloads run one at a time, so serials are assigned in order.
    reloading: Mutex<()>,
}

/// Swaps in a new zone while the server runs; cheap to clone.
#[derive(Clone)]
pub struct DnsHandle {
    shared: Arc<Shared>,
}

/// The running server; dropping it stops it.
pub struct DnsServer {
    handle: DnsHandle,
    /// Stops the UDP workers.
    stop: CancellationToken,
    udp_workers: Vec<JoinHandle<()>>,
    /// Why a UDP worker ended: it only ends early when its socket failed.
    udp_ended: mpsc::UnboundedReceiver<String>,
    /// One accept loop per address; dropping the set aborts them and their connections.
    tcp: JoinSet<()>,
}

/// The addresses to serve on: `[dns] listen`, else port 53 on every static address.
pub fn listen_addrs(cfg: &Config) -> Vec<SocketAddr> {
    if !cfg.dns.listen.is_empty() {
        return cfg.dns.listen.clone();
    }
    cfg.interfaces
        .iter()
        .flat_map(|i| {
            i.ipv4
                .iter()
                .map(|n| IpAddr::V4(n.addr()))
                .chain(i.ipv6.iter().map(|n| IpAddr::V6(n.addr())))
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl DnsServer {
    /// Loads the zone for `cfg` (serial from `state`), binds UDP and TCP on every
    /// address of `listen`, starts `udp_workers` UDP threads per address, and sends
    /// NOTIFY to the secondaries. Must be called inside a Tokio runtime (TCP runs on it).
    pub async fn start(
        cfg: &Config,
        state: PathBuf,
        listen: &[SocketAddr],
        udp_workers: usize,
    ) -> Result<DnsServer, DnsError> {
        let current = load(cfg, &state, None)?;
        let shared = Arc::new(Shared {
            current: Arc::new(ArcSwap::from_pointee(current)),
            state,
            listen: listen.to_vec(),
            reloading: Mutex::new(()),
        });
        let handler = ZoneHandler {
            current: shared.current.clone(),
        };
        let limits = Arc::new(TcpLimits {
            all: Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS)),
            per_source: Mutex::new(std::collections::HashMap::new()),
        });
        let (ended, udp_ended) = mpsc::unbounded_channel();
        let mut dns = DnsServer {
            handle: DnsHandle { shared },
            stop: CancellationToken::new(),
            udp_workers: Vec::new(),
            udp_ended,
            tcp: JoinSet::new(),
        };
        let mut udp_sockets = Vec::new();
        for addr in listen {
            let bind = |proto, source| DnsError::Bind {
                addr: *addr,
                proto,
                source,
            };
            let udp = std::net::UdpSocket::bind(addr).map_err(|e| bind("UDP", e))?;
            udp::prepare(&udp).map_err(|e| bind("UDP", e))?;
            enlarge_buffers(&udp);
            // Port 0 means "any": TCP takes the port UDP got, so both match.
            let tcp_addr = udp.local_addr().map_err(|e| bind("UDP", e))?;
            let listener = std::net::TcpListener::bind(tcp_addr).map_err(|e| bind("TCP", e))?;
            listener.set_nonblocking(true).map_err(|e| bind("TCP", e))?;
            let listener = TcpListener::from_std(listener).map_err(|e| bind("TCP", e))?;
            dns.tcp
                .spawn(accept_tcp(listener, handler.clone(), limits.clone()));
            udp_sockets.push((tcp_addr, udp));
        }
        for (addr, udp) in &udp_sockets {
            for n in 0..udp_workers.max(1) {
                let socket = udp.try_clone().map_err(|source| DnsError::Bind {
                    addr: *addr,
                    proto: "UDP",
                    source,
                })?;
                let (handler, stop, ended) = (handler.clone(), dns.stop.clone(), ended.clone());
                let worker = std::thread::Builder::new()
                    .name(format!("dns-udp-{n}"))
                    .spawn(move || {
                        let why = udp::serve(socket, handler, stop);
                        let _ = ended.send(why);
                    })
                    .map_err(|source| DnsError::Worker { source })?;
                dns.udp_workers.push(worker);
            }
        }
        for (addr, _) in &udp_sockets {
            log::info!("dns: serving {} on {addr} (UDP and TCP)", cfg.system.domain);
        }
        dns.handle.notify();
        Ok(dns)
    }

    pub fn handle(&self) -> DnsHandle {
        self.handle.clone()
    }

    /// Serves until stopped (dropped, or [`DnsServer::shutdown`]). It returns only when
    /// part of the server died: a UDP worker's socket failed, or a TCP accept loop panicked.
    pub async fn run(&mut self) -> Result<(), DnsError> {
        tokio::select! {
            Some(why) = self.udp_ended.recv() => Err(DnsError::UdpWorker { why }),
            Some(joined) = self.tcp.join_next() => match joined {
                Err(source) => Err(DnsError::Listener { source }),
                Ok(()) => unreachable!("accept loops run until aborted"),
            },
            // Nothing to serve on: nothing can fail either.
            else => std::future::pending().await,
        }
    }

    /// Stops serving and returns once every socket is closed, so that the same
    /// addresses can be bound again at once.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        self.tcp.shutdown().await;
        let workers = std::mem::take(&mut self.udp_workers);
        let _ = tokio::task::spawn_blocking(move || join_all(workers)).await;
    }
}

impl Drop for DnsServer {
    /// Stops the UDP workers. Joining the threads on a runtime worker would
    /// block it, so inside a runtime they are joined on the blocking pool.
    fn drop(&mut self) {
        self.stop.cancel();
        let workers = std::mem::take(&mut self.udp_workers);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || join_all(workers))),
            Err(_) => join_all(workers),
        }
    }
}

fn join_all(workers: Vec<JoinHandle<()>>) {
    for w in workers {
        let _ = w.join();
    }
}

impl DnsHandle {
    /// The serial currently served.
    pub fn serial(&self) -> u32 {
        self.shared.current.load().answers.zone().serial()
    }

    /// Rebuilds the zone from `cfg` and swaps it in; queries in flight finish on the old
    /// one. Sends NOTIFY when the serial changed. Returns the serial now served.
    pub fn reload(&self, cfg: &Config) -> Result<u32, DnsError> {
        let _one_at_a_time = self
            .shared
            .reloading
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let old = self.shared.current.load_full();
        let new = load(cfg, &self.shared.state, old.rrl.as_ref())?;
        let serial = new.answers.zone().serial();
        let changed = serial != old.answers.zone().serial();
        self.shared.current.store(Arc::new(new));
        if changed {
            log::info!("dns: zone {} now at serial {serial}", cfg.system.domain);
            self.notify();
        }
        Ok(serial)
    }

    /// NOTIFY in the background: a slow secondary must not hold up a reload.
    fn notify(&self) {
        let current = self.shared.current.load_full();
        if current.secondaries.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            log::warn!(
                "dns: not sending NOTIFY for serial {} (no async runtime here); the \
                 secondaries will see the change at their next SOA refresh",
                current.answers.zone().serial()
            );
            return;
        };
        let sources = self.shared.listen.clone();
        rt.spawn(async move {
            let zone = current.answers.zone();
            notify_secondaries(&zone.origin, &zone.soa, &current.secondaries, &sources).await;
        });
    }
}

/// Builds what queries read; keeps the rate limiter's state when its rate is unchanged.
fn load(
    cfg: &Config,
    state: &std::path::Path,
    old_rrl: Option<&Arc<RateLimiter>>,
) -> Result<Current, DnsError> {
    let zone = Zone::load(cfg, state)?;
    let secondaries = cfg.dns.secondaries.clone();
    let answers = Answers::new(zone, secondaries.iter().map(SocketAddr::ip).collect())?;
    let rate = cfg.dns.rate_limit;
    let rrl = match old_rrl {
        _ if rate == 0 => None,
        Some(old) if old.rate() == rate => Some(old.clone()),
        _ => Some(Arc::new(RateLimiter::new(rate))),
    };
    Ok(Current {
        answers,
        rrl,
        secondaries,
    })
}

/// Past `net.core.rmem_max` when privileged (the FORCE options); else as far as allowed.
fn enlarge_buffers(udp: &std::net::UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(udp, sockopt::RcvBufForce, &UDP_BUFFER).is_err() {
        let _ = setsockopt(udp, sockopt::RcvBuf, &UDP_BUFFER);
    }
    if setsockopt(udp, sockopt::SndBufForce, &UDP_BUFFER).is_err() {
        let _ = setsockopt(udp, sockopt::SndBuf, &UDP_BUFFER);
    }
}

/// The TCP connection caps: a global semaphore and a count per source address.
struct TcpLimits {
    all: Arc<Semaphore>,
    per_source: Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// A connection's place under both caps, given back when the connection ends.
struct TcpSlot {
    limits: Arc<TcpLimits>,
    source: IpAddr,
    _all: tokio::sync::OwnedSemaphorePermit,
}

impl TcpLimits {
    fn admit(self: &Arc<Self>, source: IpAddr) -> Option<TcpSlot> {
        let all = self.all.clone().try_acquire_owned().ok()?;
        let mut per_source = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_source.entry(source).or_insert(0);
        if *n >= TCP_MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(TcpSlot {
            limits: self.clone(),
            source,
            _all: all,
        })
    }
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut per_source = self
            .limits
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

/// Accepts connections until aborted; connections over a cap are closed at once.
async fn accept_tcp(listener: TcpListener, handler: ZoneHandler, limits: Arc<TcpLimits>) {
    // Owned here, so that aborting this loop also ends its connections.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, src)) => match limits.admit(src.ip().to_canonical()) {
                    Some(slot) => {
                        connections.spawn(serve_tcp(stream, src, handler.clone(), slot));
                    }
                    None => log::debug!("dns: TCP connection from {src} over the limit"),
                },
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    log::warn!("dns: TCP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One TCP connection, as hickory's `Server` serves one: its framing, with queries
/// answered in order, until the client closes, sends garbage or has neither sent a
/// query nor taken its answers (a whole transfer) for `TCP_IDLE`.
async fn serve_tcp(stream: TcpStream, src: SocketAddr, handler: ZoneHandler, _slot: TcpSlot) {
    let transfer = handler.current.load().answers.transfer_messages();
    let (stream, responses) = hickory_server::net::tcp::TcpStream::from_stream_with_buffer_size(
        AsyncIoTokioAsStd(stream),
        src,
        TCP_RESPONSE_BUFFER.max(transfer + 1),
    );
    let mut queries = TimeoutStream::new(stream, TCP_IDLE);
    while let Some(Ok(message)) = queries.next().await {
        let (bytes, src) = message.into_parts();
        let response = ResponseHandle::new(src, responses.clone(), Protocol::Tcp);
        handler
            .answer_raw(bytes, src, Protocol::Tcp, response)
            .await;
    }
}
