//! UDP with batched socket I/O: a worker takes up to [`BATCH`] queries from its socket
//! in one `recvmmsg`, answers each through the zone handler (hickory-server's request
//! parsing, hickory-proto's response encoding), and sends the answers in one
//! `sendmmsg`, as NSD does. hickory-server's own UDP loop spends a syscall, a channel
//! send and a spawned task on every query, which kept letterbox below NSD.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use tokio_util::sync::CancellationToken;

use super::handler::{header, ZoneHandler};

/// Queries taken, and answers sent, per system call.
const BATCH: usize = 64;
/// The largest query read; longer datagrams are dropped. hickory-server reads as much.
const MAX_QUERY: usize = 4096;
/// How often a worker waiting for queries checks whether it was stopped.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Makes `socket` fit for [`serve`]: blocking, waking every [`STOP_CHECK`]. The setting
/// belongs to the socket, so it holds for every clone of it.
pub fn prepare(socket: &UdpSocket) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(STOP_CHECK))
}

/// Answers queries on `socket` until `stop`; several workers may share one socket.
/// Returns why it ended: only a socket error it cannot go on from ends it early.
pub fn serve(socket: UdpSocket, handler: ZoneHandler, stop: CancellationToken) -> String {
    let fd = socket.as_raw_fd();
    let mut buffers = vec![[0u8; MAX_QUERY]; BATCH];
    let mut receive_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut queries = Vec::with_capacity(BATCH);
    let mut answers = Vec::with_capacity(BATCH);
    let encoded = Datagrams::default();
    // Before sleeping, a worker gives up the CPU once and looks again. Under load the
    // clients run meanwhile and the next call takes a batch, where sleeping at once
    // would cost a wakeup for every query or two; idle, the yield returns at once.
    let mut yielded = false;
    while !stop.is_cancelled() {
        let wait = if yielded {
            MsgFlags::MSG_WAITFORONE
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        match receive(fd, &mut receive_headers, &mut buffers, &mut queries, wait) {
            Ok(()) => yielded = false,
            Err(Errno::EAGAIN) if !yielded => {
                yielded = true;
                std::thread::yield_now();
                continue;
            }
            // The read timeout, so that `stop` is seen; or a signal.
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            // Short of kernel memory: wait for it rather than spin.
            Err(e @ (Errno::ENOMEM | Errno::ENOBUFS)) => {
                log::warn!("dns: UDP receive failed: {e}");
                std::thread::sleep(STOP_CHECK);
                continue;
            }
            Err(e) => return format!("its socket failed: {e}"),
        }
        for &(slot, len, src) in &queries {
            futures::executor::block_on(handler.answer_raw(
                buffers[slot][..len].to_vec(),
                src,
                Protocol::Udp,
                encoded.clone(),
            ));
            let to = SockaddrStorage::from(src);
            answers.extend(encoded.take().into_iter().map(|bytes| (to, bytes)));
        }
        send(fd, &mut send_headers, &answers);
        answers.clear();
    }
    "stopped".to_string()
}

/// Takes the datagrams queued, up to the batch; with `MSG_WAITFORONE` it first waits
/// for one, with `MSG_DONTWAIT` not at all. Fills `queries` with (buffer, length,
/// source) for each one worth answering: not cut short by the buffer, and from a
/// source that can be answered.
fn receive(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    buffers: &mut [[u8; MAX_QUERY]],
    queries: &mut Vec<(usize, usize, SocketAddr)>,
    wait: MsgFlags,
) -> nix::Result<()> {
    queries.clear();
    let mut slices: Vec<[IoSliceMut; 1]> =
        buffers.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
    let received = recvmmsg(fd, headers, slices.iter_mut(), wait, None)?;
    for (slot, message) in received.enumerate() {
        if message.flags.contains(MsgFlags::MSG_TRUNC) {
            continue;
        }
        let Some(src) = message.address.as_ref().and_then(socket_addr) else {
            continue;
        };
        if src.port() != 0 && !src.ip().is_unspecified() {
            queries.push((slot, message.bytes, src));
        }
    }
    Ok(())
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
        (Some(v4), _) => Some(SocketAddr::from(*v4)),
        (_, Some(v6)) => Some(SocketAddr::from(*v6)),
        _ => None,
    }
}

/// Sends every answer, as many per call as the kernel takes. One that cannot be sent
/// (no route back, a firewall) is skipped: UDP promises no delivery, and the client
/// asks again.
fn send(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    answers: &[(SockaddrStorage, Vec<u8>)],
) {
    let mut next = 0;
    while next < answers.len() {
        let rest = &answers[next..];
        let slices: Vec<[IoSlice; 1]> = rest.iter().map(|(_, b)| [IoSlice::new(b)]).collect();
        let to: Vec<Option<SockaddrStorage>> = rest.iter().map(|(a, _)| Some(*a)).collect();
        let no_control: [ControlMessage; 0] = [];
        match sendmmsg(fd, headers, &slices, &to, no_control, MsgFlags::empty()) {
            Ok(sent) => next += sent.count().max(1),
            Err(Errno::EINTR) => {}
            Err(e) => {
                log::debug!("dns: UDP answer to {} not sent: {e}", rest[0].0);
                next += 1;
            }
        }
    }
}

/// hickory-server's response handler for one batch: it encodes each response as
/// hickory-server's own UDP handle does, and keeps the bytes for `sendmmsg`.
#[derive(Clone, Default)]
pub(super) struct Datagrams(Arc<Mutex<Vec<Vec<u8>>>>);

impl Datagrams {
    pub(super) fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Datagrams {
    /// Encodes within the UDP size (our EDNS payload, or 512 bytes without EDNS); a
    /// response that cannot be encoded becomes a bare SERVFAIL, as in hickory-server.
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let id = response.metadata().id;
        let max_size = response.edns().map_or(512, |edns| edns.max_payload());
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max_size);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                log::warn!("dns: cannot encode a response, answering SERVFAIL: {error}");
                bytes.clear();
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let servfail = header(metadata);
                servfail.emit(&mut BinEncoder::new(&mut bytes))?;
                ResponseInfo::from(servfail)
            }
        };
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(bytes);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::mpsc;

    use hickory_proto::op::Message;
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::dns::handler::tests::{handler, query};

    /// A worker on a socket of its own; stopping it must end it.
    struct Worker {
        addr: SocketAddr,
        stop: CancellationToken,
        ended: mpsc::Receiver<String>,
    }

    impl Worker {
        /// A worker on port 0 of `ip`. `before` runs with the socket bound but before
        /// the worker reads from it, so that what it sends is already queued.
        fn start(ip: &str, before: impl FnOnce(SocketAddr)) -> Worker {
            let socket = UdpSocket::bind((ip, 0)).unwrap();
            prepare(&socket).unwrap();
            let addr = socket.local_addr().unwrap();
            before(addr);
            let (stop, (done, ended)) = (CancellationToken::new(), mpsc::channel());
            let worker_stop = stop.clone();
            std::thread::spawn(move || {
                let _ = done.send(serve(socket, handler(0, ""), worker_stop));
            });
            Worker { addr, stop, ended }
        }

        fn stop(self) {
            self.stop.cancel();
            let why = self.ended.recv_timeout(Duration::from_secs(10));
            assert_eq!(why.as_deref(), Ok("stopped"));
        }
    }

    fn client(ip: &str) -> UdpSocket {
        let socket = UdpSocket::bind((ip, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    }

    fn mx_query(id: u16) -> Vec<u8> {
        let mut q = query("example.org.", RecordType::MX, None);
        q.metadata.id = id;
        q.to_vec().unwrap()
    }

    /// The next datagram a client gets, if one comes within its read timeout.
    fn reply(socket: &UdpSocket) -> Option<Message> {
        let mut buf = [0u8; 4096];
        let (len, _) = socket.recv_from(&mut buf).ok()?;
        Some(Message::from_vec(&buf[..len]).unwrap())
    }

    #[test]
    fn a_queued_burst_gets_every_answer_each_to_its_source() {
        // Two clients: more than one batch in all, yet within the default receive buffer.
        const EACH: u16 = 60;
        let clients = [client("127.0.0.1"), client("127.0.0.1")];
        let worker = Worker::start("127.0.0.1", |server| {
            for id in 0..EACH {
                for (n, c) in clients.iter().enumerate() {
                    c.send_to(&mx_query(id * 2 + n as u16), server).unwrap();
                }
            }
        });
        for (n, c) in clients.iter().enumerate() {
            let mut ids = BTreeSet::new();
            for _ in 0..EACH {
                let r = reply(c).expect("an answer to each query");
                assert_eq!(r.answers[0].data.to_string(), "10 mail.example.org.");
                ids.insert(r.metadata.id);
            }
            let expected: BTreeSet<u16> = (0..EACH).map(|id| id * 2 + n as u16).collect();
            assert_eq!(ids, expected, "client {n} got its own answers");
        }
        worker.stop();
    }

    #[test]
    fn datagrams_not_worth_an_answer_are_dropped_and_serving_goes_on() {
        let worker = Worker::start("127.0.0.1", |_| {});
        let c = client("127.0.0.1");
        let mut response = Message::from_vec(&mx_query(1)).unwrap();
        response.metadata.message_type = MessageType::Response;
        let mut garbage = mx_query(2)[..12].to_vec(); // a header claiming one question
        garbage.extend_from_slice(&[0xff; 7]);
        for datagram in [
            vec![0u8; MAX_QUERY + 1], // longer than is read: cut short
            vec![0u8; 5],             // shorter than a header
            response.to_vec().unwrap(),
            garbage,
            mx_query(3),
        ] {
            c.send_to(&datagram, worker.addr).unwrap();
        }
        let formerr = reply(&c).expect("FORMERR for the garbage");
        assert_eq!(
            (formerr.metadata.id, formerr.metadata.response_code),
            (2, ResponseCode::FormErr)
        );
        let answer = reply(&c).expect("the query answered");
        assert_eq!(
            (answer.metadata.id, answer.answers.len()),
            (3, 1),
            "nothing else was answered before it"
        );
        worker.stop();
    }

    #[test]
    fn an_ipv6_socket_answers_its_clients() {
        let worker = Worker::start("::1", |_| {});
        let c = client("::1");
        c.send_to(&mx_query(6), worker.addr).unwrap();
        let answer = reply(&c).expect("an answer over IPv6");
        assert_eq!(answer.metadata.id, 6);
        assert_eq!(answer.answers[0].data.to_string(), "10 mail.example.org.");
        worker.stop();
    }
}
