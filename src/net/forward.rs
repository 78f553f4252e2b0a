//! TCP carried between the host's network namespace and a namespace that has only
//! loopback (the webmail's). Such a namespace reaches nothing by itself: no other box, no
//! address of the host, not the Internet. What it may reach, and who may reach it, is
//! exactly the ports the agent forwards:
//!
//! - [`forward_in`]: a listener on the host, each connection carried to a port on the
//!   namespace's loopback, after a PROXY protocol header with the client's real address
//!   (nginx's `proxy_protocol`), since the server inside sees only the agent's connection;
//! - [`forward_out`]: a listener on the namespace's loopback, each connection carried to a
//!   port on the host.
//!
//! Hand-written (tokio's `copy_bidirectional` does the carrying): proxy crates bind and
//! connect in the caller's namespace, and here each end is in another one. A socket stays
//! in the namespace it was made in, so only its creation happens inside, on a thread of its
//! own. Each forwarder carries at most [`MAX_CONNECTIONS`] at once, and its connections end
//! with it. [`carry`] and [`proxy_header`] also serve the IMAP ports' TLS (`mail::imap_tls`).

use std::fs::File;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nix::sched::CloneFlags;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

/// Connections one forwarder carries at once; more wait in the listener's backlog. nginx's
/// worker takes 256 in all.
pub const MAX_CONNECTIONS: usize = 128;
/// The pause after a failed accept (out of file descriptors, mostly), so that the loop
/// does not spin on it.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A socket to be made in the namespace, and where the made socket goes.
type Order = (SocketAddr, oneshot::Sender<io::Result<Socket>>);

/// An open network namespace, and a thread inside it that makes sockets there. The thread
/// ends when this is dropped.
pub struct Netns {
    orders: mpsc::Sender<Order>,
}

impl Netns {
    /// Enters the namespace at `path` on a new thread, which then makes the sockets.
    pub fn open(path: &Path) -> io::Result<Netns> {
        let file = File::open(path)?;
        let (orders, received) = mpsc::channel::<Order>();
        let (entered, has_entered) = mpsc::channel();
        std::thread::Builder::new()
            .name("netns-sockets".into())
            .spawn(move || {
                let joined = nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET);
                let _ = entered.send(joined.map_err(io::Error::from));
                if joined.is_err() {
                    return;
                }
                for (address, made) in received {
                    let _ = made.send(tcp_socket(address));
                }
            })?;
        has_entered
            .recv()
            .map_err(|_| io::Error::other("the socket thread ended"))??;
        Ok(Netns { orders })
    }

    async fn socket(&self, address: SocketAddr) -> io::Result<Socket> {
        let (made, socket) = oneshot::channel();
        let gone = || io::Error::other("the namespace's socket thread ended");
        self.orders.send((address, made)).map_err(|_| gone())?;
        socket.await.map_err(|_| gone())?
    }

    /// A listener on `address` inside the namespace.
    pub async fn listen(&self, address: SocketAddr) -> io::Result<TcpListener> {
        let socket = self.socket(address).await?;
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        socket.listen(128)?;
        TcpListener::from_std(socket.into())
    }

    /// A connection to `address` from inside the namespace.
    pub async fn connect(&self, address: SocketAddr) -> io::Result<TcpStream> {
        let socket = self.socket(address).await?;
        TcpSocket::from_std_stream(socket.into())
            .connect(address)
            .await
    }
}

/// A non-blocking TCP socket for `address`'s family, in the calling thread's namespace.
fn tcp_socket(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A listener on the host's `port` for IPv4 and IPv6 clients alike.
pub fn listen_on_host(port: u16) -> io::Result<TcpListener> {
    let address = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let socket = tcp_socket(address)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

/// Carries every connection `listener` accepts to `target` inside `netns`, each after a
/// PROXY header naming its client; runs until dropped, and its connections with it.
pub async fn forward_in(name: &str, listener: TcpListener, netns: Arc<Netns>, target: SocketAddr) {
    carry(name, listener, MAX_CONNECTIONS, move |mut client, peer| {
        let netns = netns.clone();
        async move {
            let local = client.local_addr()?;
            let mut server = netns.connect(target).await?;
            server.write_all(&proxy_header(peer, local, false)).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await
        }
    })
    .await
}

/// Carries every connection `listener` (inside a namespace) accepts to `target` on the
/// host; runs until dropped, and its connections with it.
pub async fn forward_out(name: &str, listener: TcpListener, target: SocketAddr) {
    carry(
        name,
        listener,
        MAX_CONNECTIONS,
        move |mut client, _| async move {
            let mut server = TcpStream::connect(target).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await
        },
    )
    .await
}

/// Accepts on `listener` and runs `connection` for each client, at most `limit` at once,
/// in a set that ends them all when this is dropped.
pub async fn carry<F, C>(name: &str, listener: TcpListener, limit: usize, connection: C)
where
    C: Fn(TcpStream, SocketAddr) -> F,
    F: std::future::Future<Output = io::Result<(u64, u64)>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limit));
    let mut connections = JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            Some(_) = connections.join_next() => continue,
        };
        let (client, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("{name}: accept: {e}");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            Some(_) = connections.join_next() => continue,
        };
        let carried = connection(client, peer);
        let name = name.to_string();
        connections.spawn(async move {
            if let Err(e) = carried.await {
                log::debug!("{name}: {peer}: {e}");
            }
            drop(slot);
        });
    }
}

/// The PROXY protocol v2 header for a connection from `client` to `server`, saying that
/// the client's TLS ended at the agent when `tls` (Dovecot then counts the connection as
/// TLS-secured). IPv4-mapped addresses, as a dual-stack listener reports IPv4 clients, go
/// as IPv4.
pub fn proxy_header(client: SocketAddr, server: SocketAddr, tls: bool) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Type, Version};
    // PP2_TYPE_SSL's value: the client flags (PP2_CLIENT_SSL), then a 32-bit verify
    // result that means nothing without a client certificate.
    const TLS_ENDED_HERE: [u8; 5] = [0x01, 0, 0, 0, 0];
    let plain = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::from((v4, a.port()))),
        v4 => v4,
    };
    let header = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (plain(client), plain(server)),
    );
    let header = if tls {
        header.write_tlv(Type::SSL, &TLS_ENDED_HERE)
    } else {
        Ok(header)
    };
    // Both only fail beyond 64 KiB of payload, and this one is at most 44 bytes.
    header
        .and_then(Builder::build)
        .expect("a PROXY header of two addresses and one TLV")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers_name_the_client_as_ipv4_or_ipv6_and_say_where_tls_ended() {
        use ppp::v2::{Addresses, Header, IPv4, IPv6};
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let bytes = proxy_header(
            at("[::ffff:192.0.2.7]:50000"),
            at("[::ffff:192.0.2.1]:443"),
            false,
        );
        let header = Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(
            header.addresses,
            Addresses::IPv4(IPv4::new([192, 0, 2, 7], [192, 0, 2, 1], 50000, 443))
        );
        assert_eq!(header.tlvs().count(), 0);
        assert_eq!(header.len(), bytes.len());

        let bytes = proxy_header(at("[2001:db8::7]:50000"), at("[2001:db8::1]:993"), true);
        let header = Header::try_from(bytes.as_slice()).unwrap();
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
        assert_eq!(
            header.addresses,
            Addresses::IPv6(IPv6::new(v6("2001:db8::7"), v6("2001:db8::1"), 50000, 993))
        );
        let tlvs: Vec<_> = header.tlvs().collect::<Result<_, _>>().unwrap();
        assert_eq!(tlvs.len(), 1);
        assert_eq!(tlvs[0].kind, 0x20, "PP2_TYPE_SSL");
        assert_eq!(tlvs[0].value[0] & 0x01, 0x01, "PP2_CLIENT_SSL");
    }
}
