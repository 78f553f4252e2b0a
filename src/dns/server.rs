//! The running server: UDP on worker threads, TCP through hickory-server, and one
//! atomically swapped [`Answers`] that every query reads.
//!
//! UDP is served by blocking threads sharing each socket (NSD's model): a query is one
//! `recvfrom`, a lookup and one `sendto`, with no task spawn or channel hop, which is
//! what lets it keep up with NSD. TCP (large answers, AXFR) goes through
//! hickory-server's `Server` with our handler; it is not on the hot path.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Header, HeaderCounts, Message, MessageType, Metadata, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;

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
const TCP_RESPONSE_BUFFER: usize = 64;
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
    tcp: Server<TcpHandler>,
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
        let mut tcp = Server::new(TcpHandler {
            shared: shared.clone(),
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
                let listener =
                    tokio::net::TcpListener::from_std(listener).map_err(|e| bind("TCP", e))?;
                tcp.register_listener(listener, TCP_IDLE, TCP_RESPONSE_BUFFER);
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

    /// Runs until a TCP listener fails; UDP workers log and carry on past errors.
    pub async fn run(mut self) -> Result<(), DnsError> {
        self.tcp
            .block_until_done()
            .await
            .map_err(|e| DnsError::Listener {
                addr: "TCP".into(),
                source: Box::new(e),
            })
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

struct TcpHandler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let current = self.shared.current.load_full();
        let mut out = Vec::new();
        let messages = match current.answers.respond(
            request.as_slice(),
            request.src(),
            Transport::Tcp,
            &mut out,
        ) {
            Reply::Send => vec![out],
            Reply::Drop => Vec::new(),
            Reply::Transfer(messages) => messages,
        };
        let mut info = failed(request);
        for bytes in messages {
            // Our bytes are hickory's to frame and send: decode them into its response type.
            let Ok(message) = Message::from_vec(&bytes) else {
                break;
            };
            let mut builder = MessageResponseBuilder::from_message_request(request);
            if let Some(edns) = &message.edns {
                builder.edns(edns);
            }
            let response = builder.build(
                message.metadata,
                message.answers.iter(),
                message.authorities.iter(),
                std::iter::empty(),
                message.additionals.iter(),
            );
            match response_handle.send_response(response).await {
                Ok(sent) => info = sent,
                Err(e) => {
                    log::debug!("dns: TCP send to {} failed: {e}", request.src());
                    break;
                }
            }
        }
        info
    }
}

fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
