//! The listening sockets, bound with IP_FREEBIND / IPV6_FREEBIND as NSD's `ip-freebind`
//! binds them: an address that is not on an interface yet (a late or missing eth0, an
//! IPv6 address still in duplicate address detection) can be bound, and is served the
//! moment it arrives, instead of the DNS unit failing until it does.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Connections waiting to be accepted: room for a burst of clients falling back to TCP.
const LISTEN_BACKLOG: i32 = 1024;

pub fn udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = free_socket(addr, Type::DGRAM, Protocol::UDP)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

pub fn tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = free_socket(addr, Type::STREAM, Protocol::TCP)?;
    // As std's `TcpListener::bind` does: a restarted server binds its address again while
    // the old connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Whether `addr`'s address is on an interface now (only to tell the operator when not).
pub fn is_local(addr: SocketAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).is_ok()
}

fn free_socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_freebind_v6(true)?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TEST-NET-3 and the documentation prefix: on no interface of any test machine.
    const ABSENT: [&str; 2] = ["203.0.113.77:0", "[2001:db8:77::1]:0"];

    #[test]
    fn an_address_on_no_interface_can_be_bound() {
        for addr in ABSENT {
            let addr: SocketAddr = addr.parse().unwrap();
            assert!(!is_local(addr), "{addr} is on an interface of this machine");
            let udp = udp(addr).expect("UDP binds with freebind");
            let port = udp.local_addr().unwrap().port();
            tcp(SocketAddr::new(addr.ip(), port)).expect("TCP binds with freebind");
        }
    }
}
