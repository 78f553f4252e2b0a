//! The running server: UDP on worker threads, TCP on Tokio tasks, and one atomically
//! swapped [`Answers`] that every query reads.
//!
//! UDP is served by blocking threads sharing each socket (NSD's model): a query is one
//! `recvfrom`, a lookup and one `sendto`, with no task spawn or channel hop, which is
//! what lets it keep up with NSD. TCP (large answers, AXFR) is a small accept loop of
//! our own, so that connections can be capped (globally and per source) and our
//! response bytes go out as they are, with no decode and re-encode.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::answer::{Answers, Reply, Transport};
use super::notify::notify_secondaries;
use super::rrl::{RateLimiter, Verdict};
use super::zone::Zone;
use super::DnsError;
use crate::config::Config;

/// How often idle UDP workers look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(250);
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Concurrent TCP connections, in all and from one source address: past these a new
/// connection is closed at once, so a client holding connections open cannot starve
/// the rest (or exhaust file descriptors).
const TCP_MAX_CONNECTIONS: usize = 256;
const TCP_MAX_PER_SOURCE: usize = 16;
/// UDP socket buffers, as NSD sizes them: bursts queue instead of being dropped.
const UDP_BUFFER: usize = 1 << 20;

/// What every query reads: swapped as a whole, so a query sees one consistent zone.
struct Current {
    answers: Answers,
    rrl: Option<Arc<RateLimiter>>,
    secondaries: Vec<SocketAddr>,
}

struct Shared {
    current: ArcSwap<Current>,
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

/// The running server; dropping it stops the UDP workers.
pub struct DnsServer {
    handle: DnsHandle,
    stop: Arc<AtomicBool>,
    udp_workers: Vec<JoinHandle<()>>,
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
    /// address of `listen`, starts `udp_workers` threads per UDP socket, and sends
    /// NOTIFY to the secondaries. Must be called inside a Tokio runtime.
    pub async fn start(
        cfg: &Config,
        state: PathBuf,
        listen: &[SocketAddr],
        udp_workers: usize,
    ) -> Result<DnsServer, DnsError> {
        let current = load(cfg, &state, None)?;
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(current),
            state,
            listen: listen.to_vec(),
            reloading: Mutex::new(()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut tcp = JoinSet::new();
        let limits = Arc::new(TcpLimits {
            all: Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS)),
            per_source: Mutex::new(std::collections::HashMap::new()),
        });
        let mut workers = Vec::new();
        let mut server = |workers: &mut Vec<JoinHandle<()>>| -> Result<(), DnsError> {
            for addr in listen {
                let bind = |proto, source| DnsError::Bind {
                    addr: *addr,
                    proto,
                    source,
                };
                let udp = std::net::UdpSocket::bind(addr).map_err(|e| bind("UDP", e))?;
                udp.set_read_timeout(Some(STOP_POLL))
                    .map_err(|e| bind("UDP", e))?;
                enlarge_buffers(&udp);
                // Port 0 means "any": TCP takes the port UDP got, so both match.
                let tcp_addr = udp.local_addr().map_err(|e| bind("UDP", e))?;
                let listener = std::net::TcpListener::bind(tcp_addr).map_err(|e| bind("TCP", e))?;
                listener.set_nonblocking(true).map_err(|e| bind("TCP", e))?;
                let listener = TcpListener::from_std(listener).map_err(|e| bind("TCP", e))?;
                tcp.spawn(accept_tcp(listener, shared.clone(), limits.clone()));
                for n in 0..udp_workers.max(1) {
                    let socket = udp.try_clone().map_err(|e| bind("UDP", e))?;
                    let shared = shared.clone();
                    let stop = stop.clone();
                    let worker = std::thread::Builder::new()
                        .name(format!("dns-udp-{n}"))
                        .spawn(move || udp_worker(&socket, &shared, &stop))
                        .map_err(|e| bind("UDP", e))?;
                    workers.push(worker);
                }
                log::info!(
                    "dns: serving {} on {tcp_addr} (UDP and TCP)",
                    cfg.system.domain
                );
            }
            Ok(())
        };
        let started = server(&mut workers);
        let dns = DnsServer {
            handle: DnsHandle { shared },
            stop,
            udp_workers: workers,
            tcp,
        };
        started?;
        dns.handle.notify();
        Ok(dns)
    }

    pub fn handle(&self) -> DnsHandle {
        self.handle.clone()
    }

    /// Serves until stopped (dropped); an accept loop only ends by panicking, which is
    /// the error. UDP workers and accept loops log and carry on past I/O errors.
    pub async fn run(mut self) -> Result<(), DnsError> {
        match self.tcp.join_next().await {
            Some(Err(source)) => Err(DnsError::Listener { source }),
            Some(Ok(())) | None => std::future::pending().await,
        }
    }
}

impl Drop for DnsServer {
    /// Tells the UDP workers to stop; they notice within `STOP_POLL`. Joining them on a
    /// runtime worker would block it, so inside a runtime they are joined on the
    /// blocking pool.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let workers = std::mem::take(&mut self.udp_workers);
        let join = move || {
            for w in workers {
                let _ = w.join();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(join)),
            Err(_) => join(),
        }
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

/// Datagrams taken (and answers sent) per system call when queries queue up: with
/// recvmmsg/sendmmsg a loaded server spends far fewer syscalls per query, as NSD does.
const BATCH: usize = 32;
/// Larger queries are cut short by the kernel and then fail to parse: FORMERR.
const MAX_QUERY: usize = 4096;

fn udp_worker(socket: &std::net::UdpSocket, shared: &Shared, stop: &AtomicBool) {
    use nix::errno::Errno;
    use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;

    let fd = socket.as_raw_fd();
    let mut queries = vec![[0u8; MAX_QUERY]; BATCH];
    let mut responses: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(MAX_QUERY)).collect();
    let mut received: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
    let mut destinations: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut failures = SendFailures {
        count: 0,
        logged: None,
    };
    while !stop.load(Ordering::Relaxed) {
        received.clear();
        {
            let mut slices: Vec<[IoSliceMut; 1]> =
                queries.iter_mut().map(|q| [IoSliceMut::new(q)]).collect();
            // Waits for one datagram (or the read timeout), then takes what else is queued.
            match recvmmsg(
                fd,
                &mut recv_headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => received.extend(results.map(|r| (r.bytes, r.address))),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("dns: UDP receive failed: {e}");
                    continue;
                }
            }
        }
        let current = shared.current.load();
        destinations.clear();
        for (query, (len, from)) in queries.iter().zip(&received) {
            let Some(src) = from.as_ref().and_then(socket_addr) else {
                continue;
            };
            if src.port() == 0 {
                continue; // cannot be answered
            }
            let query = &query[..*len];
            let out = &mut responses[destinations.len()];
            // An IPv4 client on an IPv6 socket counts as its IPv4 prefix.
            let reply = match current
                .rrl
                .as_ref()
                .map(|r| r.check(src.ip().to_canonical()))
            {
                Some(Verdict::Drop) => continue,
                Some(Verdict::Slip) => current.answers.truncated(query, out),
                Some(Verdict::Answer) | None => {
                    current.answers.respond(query, src, Transport::Udp, out)
                }
            };
            if reply == Reply::Send {
                destinations.push(*from);
            }
        }
        if destinations.is_empty() {
            continue;
        }
        let slices: Vec<[IoSlice; 1]> = responses[..destinations.len()]
            .iter()
            .map(|r| [IoSlice::new(r)])
            .collect();
        // sendmmsg stops at the first datagram that fails (and reports that error on
        // the next call, where it comes first): skip it and send the rest.
        let mut from = 0;
        while from < destinations.len() {
            match sendmmsg(
                fd,
                &mut send_headers,
                slices[from..].iter(),
                &destinations[from..],
                [],
                MsgFlags::empty(),
            ) {
                Ok(results) => from += results.count().max(1),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    failures.record(e, destinations[from].as_ref().and_then(socket_addr));
                    from += 1;
                }
            }
        }
    }
}

/// Failed UDP sends, logged at most once per `SEND_FAILURE_LOG_INTERVAL` with a count:
/// a flood of unreachable sources must not flood the log too.
struct SendFailures {
    count: u64,
    logged: Option<std::time::Instant>,
}

const SEND_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl SendFailures {
    fn record(&mut self, e: nix::errno::Errno, to: Option<SocketAddr>) {
        self.count += 1;
        if self
            .logged
            .is_some_and(|at| at.elapsed() < SEND_FAILURE_LOG_INTERVAL)
        {
            return;
        }
        let to = to.map_or_else(|| "?".to_string(), |a| a.to_string());
        log::warn!(
            "dns: {} UDP response(s) not sent since the last report; latest to {to}: {e}",
            self.count
        );
        self.count = 0;
        self.logged = Some(std::time::Instant::now());
    }
}

fn socket_addr(addr: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
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
async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>, limits: Arc<TcpLimits>) {
    // Owned here, so that aborting this loop also ends its connections.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, src)) => match limits.admit(src.ip().to_canonical()) {
                    Some(slot) => {
                        connections.spawn(serve_tcp(stream, src, shared.clone(), slot));
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

/// One TCP connection: length-prefixed queries answered in order, until the client
/// closes, sends garbage or stays idle for `TCP_IDLE`.
async fn serve_tcp(mut stream: TcpStream, src: SocketAddr, shared: Arc<Shared>, _slot: TcpSlot) {
    let mut query = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 2];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        query.resize(usize::from(u16::from_be_bytes(len)), 0);
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let current = shared.current.load_full();
        let messages = match current
            .answers
            .respond(&query, src, Transport::Tcp, &mut out)
        {
            Reply::Send => vec![std::mem::take(&mut out)],
            Reply::Drop => Vec::new(),
            Reply::Transfer(messages) => messages,
        };
        for message in messages {
            let Ok(len) = u16::try_from(message.len()) else {
                return; // cannot happen: responses are built to fit a TCP frame
            };
            let mut frame = Vec::with_capacity(2 + message.len());
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&message);
            if !matches!(
                tokio::time::timeout(TCP_IDLE, stream.write_all(&frame)).await,
                Ok(Ok(()))
            ) {
                log::debug!("dns: TCP send to {src} failed or timed out");
                return;
            }
        }
    }
}
