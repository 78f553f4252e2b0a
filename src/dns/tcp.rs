//! DNS over TCP. hickory's `Server` has no connection limit, so connections are
//! accepted here, within limits, and then served by hickory-server's TCP framing,
//! request parsing and response handle.
//!
//! The limits keep a client holding connections open from exhausting PID 1's
//! descriptors, without letting it lock anyone out: past [`MAX_PER_SOURCE`] from one
//! address a new connection is closed (that source only hurts itself), and when all
//! [`MAX_CONNECTIONS`] are taken the connection idle longest is closed to make room,
//! so idle connections from many addresses cannot hold every place. A configured
//! secondary's connections take no place from the others and are never closed for
//! them, so its transfers are never refused.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hickory_server::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{ResponseHandle, TimeoutStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::handler::ZoneHandler;

/// A TCP client that sends nothing for this long is disconnected.
pub const IDLE: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection, at least: a transfer's messages are all queued
/// before the first is written, so a connection gets room for the current zone's.
const RESPONSE_BUFFER: usize = 64;
/// Connections open at once, in all (besides the secondaries') and from one address.
pub const MAX_CONNECTIONS: usize = 256;
pub const MAX_PER_SOURCE: usize = 16;

/// The TCP connections open on every address served.
#[derive(Default)]
pub struct Connections {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// Counts queries and admissions: a connection's `active` is the count at its last
    /// one, so the smallest is the connection idle longest. A count rather than a
    /// clock: the order is exact, and a test needs no waiting.
    activity: u64,
    open: HashMap<u64, Entry>,
}

struct Entry {
    source: IpAddr,
    secondary: bool,
    active: u64,
    evict: CancellationToken,
}

/// A connection's place, given back when the connection ends.
pub struct Slot {
    connections: Arc<Connections>,
    id: u64,
    evicted: CancellationToken,
}

impl Connections {
    /// A place for a new connection from `source`, or None when the source holds
    /// [`MAX_PER_SOURCE`] already. When all places are taken, the connection idle
    /// longest (never a secondary's) is told to close and its place is given here.
    pub fn admit(self: &Arc<Self>, source: IpAddr, secondary: bool) -> Option<Slot> {
        let mut table = self.lock();
        let from_source = table.open.values().filter(|e| e.source == source).count();
        if from_source >= MAX_PER_SOURCE {
            return None;
        }
        if !secondary {
            let others = table.open.values().filter(|e| !e.secondary).count();
            if others >= MAX_CONNECTIONS {
                let idlest = table
                    .open
                    .iter()
                    .filter(|(_, e)| !e.secondary)
                    .min_by_key(|(_, e)| e.active)
                    .map(|(id, _)| *id);
                if let Some(entry) = idlest.and_then(|id| table.open.remove(&id)) {
                    log::debug!(
                        "dns: TCP connections full; closing the idlest, from {}",
                        entry.source
                    );
                    entry.evict.cancel();
                }
            }
        }
        let (id, evict) = (table.next_id, CancellationToken::new());
        table.next_id += 1;
        table.activity += 1;
        let active = table.activity;
        table.open.insert(
            id,
            Entry {
                source,
                secondary,
                active,
                evict: evict.clone(),
            },
        );
        Some(Slot {
            connections: self.clone(),
            id,
            evicted: evict,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Slot {
    /// The connection is in use: it moves to the back of the eviction order.
    fn touch(&self) {
        let mut table = self.connections.lock();
        table.activity += 1;
        let now = table.activity;
        if let Some(entry) = table.open.get_mut(&self.id) {
            entry.active = now;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().open.remove(&self.id);
    }
}

/// Accepts connections until aborted; one over the per-source limit is closed at once.
pub async fn accept(listener: TcpListener, handler: ZoneHandler, connections: Arc<Connections>) {
    // Owned here, so that aborting this loop also ends its connections.
    let mut serving = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, src)) => {
                    let source = src.ip().to_canonical();
                    let secondary = handler
                        .current
                        .load()
                        .secondaries
                        .iter()
                        .any(|s| s.ip().to_canonical() == source);
                    match connections.admit(source, secondary) {
                        Some(slot) => {
                            serving.spawn(serve(stream, src, handler.clone(), slot));
                        }
                        None => log::debug!("dns: TCP connection from {src} over the limit"),
                    }
                }
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    log::warn!("dns: TCP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = serving.join_next(), if !serving.is_empty() => {}
        }
    }
}

/// One TCP connection, as hickory's `Server` serves one: its framing, with queries
/// answered in order, until the client closes, sends garbage, has neither sent a query
/// nor taken its answers (a whole transfer) for [`IDLE`], or is closed to make room.
async fn serve(stream: TcpStream, src: SocketAddr, handler: ZoneHandler, slot: Slot) {
    let transfer = handler.current.load().answers.transfer_messages();
    let (stream, responses) = hickory_server::net::tcp::TcpStream::from_stream_with_buffer_size(
        AsyncIoTokioAsStd(stream),
        src,
        RESPONSE_BUFFER.max(transfer + 1),
    );
    let mut queries = TimeoutStream::new(stream, IDLE);
    loop {
        let message = tokio::select! {
            message = queries.next() => message,
            _ = slot.evicted.cancelled() => return,
        };
        let Some(Ok(message)) = message else { return };
        slot.touch();
        let (bytes, src) = message.into_parts();
        let response = ResponseHandle::new(src, responses.clone(), Protocol::Tcp);
        handler
            .answer_raw(bytes, src, Protocol::Tcp, response)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: usize) -> IpAddr {
        IpAddr::from([10, 0, (n / 256) as u8, (n % 256) as u8])
    }

    #[test]
    fn a_source_over_its_limit_is_refused() {
        let connections = Arc::new(Connections::default());
        let held: Vec<Slot> = (0..MAX_PER_SOURCE)
            .map(|_| connections.admit(ip(1), false).expect("within the limit"))
            .collect();
        assert!(connections.admit(ip(1), false).is_none());
        assert!(connections.admit(ip(2), false).is_some(), "another source");
        drop(held);
        assert!(
            connections.admit(ip(1), false).is_some(),
            "places given back"
        );
    }

    #[test]
    fn when_full_the_idlest_connection_makes_room() {
        let connections = Arc::new(Connections::default());
        let held: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|n| connections.admit(ip(n), false).expect("room"))
            .collect();
        // The first connection is used: the second is now the idlest.
        held[0].touch();
        let newcomer = connections
            .admit(ip(9999), false)
            .expect("admitted when full");
        let evicted: Vec<usize> = (0..held.len())
            .filter(|&n| held[n].evicted.is_cancelled())
            .collect();
        assert_eq!(evicted, [1], "only the connection idle longest is closed");
        assert!(!newcomer.evicted.is_cancelled());
        assert_eq!(connections.lock().open.len(), MAX_CONNECTIONS);
    }

    #[test]
    fn a_secondary_takes_no_place_and_is_never_evicted() {
        let connections = Arc::new(Connections::default());
        let secondary = connections.admit(ip(5000), true).expect("room");
        let others: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|n| connections.admit(ip(n), false).expect("room"))
            .collect();
        assert!(
            others.iter().all(|s| !s.evicted.is_cancelled()),
            "the secondary took no one's place"
        );
        let again = connections
            .admit(ip(5000), true)
            .expect("a secondary when full");
        assert!(others.iter().all(|s| !s.evicted.is_cancelled()));
        let _newcomer = connections.admit(ip(9999), false).expect("room made");
        assert!(!secondary.evicted.is_cancelled() && !again.evicted.is_cancelled());
        assert!(others[0].evicted.is_cancelled(), "an idle other made room");
    }
}
