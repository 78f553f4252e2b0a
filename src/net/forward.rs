//! TCP carried between the host's network namespace and a namespace that has only
//! loopback (the webmail's). Such a namespace reaches nothing by itself: no other box, no
//! address of the host, not the Internet. What it may reach, and who may reach it, is
//! exactly the ports the agent forwards:
//!
//! - [`forward_in`]: a listener on the host, each connection carried to a port on the
//!   namespace's loopback, after a PROXY protocol v1 header with the client's real address
//!   (nginx's `proxy_protocol`), since the server inside sees only the agent's connection;
//! - [`forward_out`]: a listener on the namespace's loopback, each connection carried to a
//!   port on the host.
//!
//! Hand-written (a hundred lines on tokio's `copy_bidirectional`): proxy crates bind and
//! connect in the caller's namespace, and here each end is in another one. A socket stays
//! in the namespace it was made in, so only its creation happens on a thread that entered
//! the namespace.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::CloneFlags;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// An open network namespace, in which sockets can be made.
pub struct Netns {
    file: File,
}

impl Netns {
    pub fn open(path: &Path) -> io::Result<Netns> {
        Ok(Netns {
            file: File::open(path)?,
        })
    }

    /// Runs `make` on a short-lived thread that entered the namespace: unshare and setns
    /// move only the calling thread, so no other work ever runs inside.
    fn inside<T: Send>(&self, make: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)?;
                make()
            })
            .join()
            .expect("a socket-making thread does not panic")
        })
    }

    /// A listener on `address` inside the namespace.
    pub fn listen(&self, address: SocketAddr) -> io::Result<TcpListener> {
        let listener = self.inside(|| {
            let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&address.into())?;
            socket.listen(128)?;
            socket.set_nonblocking(true)?;
            Ok(std::net::TcpListener::from(socket))
        })?;
        TcpListener::from_std(listener)
    }

    /// A connection to `address` from inside the namespace.
    pub async fn connect(&self, address: SocketAddr) -> io::Result<TcpStream> {
        let socket = self.inside(|| {
            let socket = Socket::new(
                Domain::for_address(address),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })?;
        TcpSocket::from_std_stream(std::net::TcpStream::from(socket))
            .connect(address)
            .await
    }
}

/// A listener on the host's `port` for IPv4 and IPv6 clients alike.
pub fn listen_on_host(port: u16) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Carries every connection `listener` accepts to `target` inside `netns`, each after a
/// PROXY header naming its client; runs until dropped. `name` is for the log.
pub async fn forward_in(
    name: &str,
    listener: TcpListener,
    netns: std::sync::Arc<Netns>,
    target: SocketAddr,
) {
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("{name}: accept: {e}");
                continue;
            }
        };
        let netns = netns.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let carried = async {
                let local = client.local_addr()?;
                let mut server = netns.connect(target).await?;
                server
                    .write_all(proxy_header(peer, local).as_bytes())
                    .await?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await
            };
            if let Err(e) = carried.await {
                log::debug!("{name}: {peer}: {e}");
            }
        });
    }
}

/// Carries every connection `listener` (inside a namespace) accepts to `target` on the
/// host; runs until dropped.
pub async fn forward_out(name: &str, listener: TcpListener, target: SocketAddr) {
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("{name}: accept: {e}");
                continue;
            }
        };
        let name = name.to_string();
        tokio::spawn(async move {
            let carried = async {
                let mut server = TcpStream::connect(target).await?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await
            };
            if let Err(e) = carried.await {
                log::debug!("{name}: {peer}: {e}");
            }
        });
    }
}

/// The PROXY protocol v1 line for a connection from `client` to `server` (IPv4-mapped
/// addresses, as a dual-stack listener reports IPv4 clients, as IPv4).
fn proxy_header(client: SocketAddr, server: SocketAddr) -> String {
    let plain = |a: SocketAddr| {
        let ip = match a.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            ip => ip,
        };
        (ip, a.port())
    };
    let ((client_ip, client_port), (server_ip, server_port)) = (plain(client), plain(server));
    let family = match (client_ip, server_ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
        (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
        _ => return "PROXY UNKNOWN\r\n".into(),
    };
    format!("PROXY {family} {client_ip} {server_ip} {client_port} {server_port}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers_name_the_client_as_ipv4_or_ipv6() {
        let v4 = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            proxy_header(v4("[::ffff:192.0.2.7]:50000"), v4("[::ffff:192.0.2.1]:443")),
            "PROXY TCP4 192.0.2.7 192.0.2.1 50000 443\r\n"
        );
        assert_eq!(
            proxy_header(v4("[2001:db8::7]:50000"), v4("[2001:db8::1]:443")),
            "PROXY TCP6 2001:db8::7 2001:db8::1 50000 443\r\n"
        );
    }
}
