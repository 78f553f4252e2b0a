//! The running server: hickory-server's request handling over UDP and TCP, answering
//! through [`ZoneHandler`] from one atomically swapped zone that every query reads.
//!
//! UDP: worker threads share each socket and answer in batches (see `udp`), so that
//! DNS load stays off the agent's runtime and no query hops between threads.
//! TCP: accepted within limits that no idle client can lock others out of (see `tcp`).
//! Every socket is bound with IP_FREEBIND (see `bind`), so an address that arrives late
//! is served once it does.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::answer::Answers;
use super::handler::{Current, ZoneHandler};
use super::notify::notify_secondaries;
use super::rrl::RateLimiter;
use super::tcp::Connections;
use super::zone::Zone;
use super::DnsError;
use super::{bind, tcp, udp};
use crate::config::Config;

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
    /// An address on no interface yet is bound all the same, and served once it is.
    pub async fn start(
        cfg: &Config,
        state: PathBuf,
        listen: &[SocketAddr],
        udp_workers: usize,
    ) -> Result<DnsServer, DnsError> {
        // Reading the state and fsyncing the serial would block a runtime worker.
        let current = {
            let (cfg, state) = (cfg.clone(), state.clone());
            tokio::task::spawn_blocking(move || load(&cfg, &state, None))
                .await
                .map_err(|source| DnsError::Load { source })??
        };
        let shared = Arc::new(Shared {
            current: Arc::new(ArcSwap::from_pointee(current)),
            state,
            listen: listen.to_vec(),
            reloading: Mutex::new(()),
        });
        let handler = ZoneHandler {
            current: shared.current.clone(),
        };
        let connections = Arc::new(Connections::default());
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
            let failed = |proto, source| DnsError::Bind {
                addr: *addr,
                proto,
                source,
            };
            let udp = bind::udp(*addr).map_err(|e| failed("UDP", e))?;
            udp::prepare(&udp).map_err(|e| failed("UDP", e))?;
            enlarge_buffers(&udp);
            // Port 0 means "any": TCP takes the port UDP got, so both match.
            let tcp_addr = udp.local_addr().map_err(|e| failed("UDP", e))?;
            let listener = bind::tcp(tcp_addr).map_err(|e| failed("TCP", e))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| failed("TCP", e))?;
            let listener = TcpListener::from_std(listener).map_err(|e| failed("TCP", e))?;
            dns.tcp
                .spawn(tcp::accept(listener, handler.clone(), connections.clone()));
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
            if !bind::is_local(*addr) {
                log::warn!(
                    "dns: {} is on no interface yet; it is served once it is",
                    addr.ip()
                );
            }
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

    /// The zone currently served (the milter answers its questions about our own names
    /// from it).
    pub fn zone(&self) -> super::Zone {
        self.shared.current.load().answers.zone().clone()
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
