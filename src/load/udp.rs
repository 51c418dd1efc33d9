//! The UDP data path of `relay`: every client's socket in one epoll set on one thread,
//! datagrams sent and received in batches (`sendmmsg`/`recvmmsg`), no allocation and no
//! lock per packet. The sockets are the connected sockets of [`crate::client::Client`]s (or
//! plain ones, towards a forwarder); the TURN handshake happened before.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::stats::{Failures, Flow, Histogram, io_cause};
use super::sys::{self, Batch, Epoll};
use super::{Pace, PayloadHeader, flow_capacity, record_echo};
use crate::stun::{
    self, ChannelData, Class, Message, MessageWriter, Method, TransactionId, attr,
    channel::CHANNEL_DATA_HEADER_LEN,
};

/// Datagrams per `sendmmsg`/`recvmmsg` call.
const BATCH: usize = 32;
/// Room for the framing around a payload: a Data indication with an IPv6 XOR-PEER-ADDRESS
/// and FINGERPRINT needs 20 + 24 + 4 + 3 (padding) + 8 bytes.
const FRAMING_ROOM: usize = 128;
/// How often packets in flight are checked for loss (and, in window mode, replaced).
const EXPIRE_EVERY: Duration = Duration::from_millis(10);
/// Rate mode: packets sent in one pass at most, so that receiving is not starved when the
/// engine has fallen behind.
const MAX_PER_PASS: usize = 1024;

/// How a client's payloads travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// ChannelData on this channel number.
    Channel(u16),
    /// Send indications to this peer; Data indications back.
    Send(SocketAddr),
    /// The payload alone (towards a plain forwarder, no TURN).
    Plain,
}

/// One client of the engine: its connected socket and its packets.
struct UdpClient {
    fd: RawFd,
    framing: Framing,
    flow: Flow,
    /// When its last echo came back in time, in ns after the start (0: never).
    last_echo_ns: u64,
}

impl UdpClient {
    /// A payload that came back to client `index` at `now`: recorded in its flow (or counted
    /// as foreign), and the time of its last echo kept.
    fn echoed(
        &mut self,
        index: usize,
        payload: &[u8],
        run: u32,
        now: u64,
        hist: &mut Histogram,
        foreign: &mut u64,
    ) {
        if record_echo(&mut self.flow, index, payload, run, now, hist, foreign) {
            self.last_echo_ns = now;
        }
    }
}

/// Counters of the engine besides the flows'.
#[derive(Clone, Debug, Default)]
pub struct EngineCounters {
    /// Frames that were not an echo of ours.
    pub foreign: u64,
    /// Send calls that found the socket buffer full (the rest of that batch waited).
    pub send_blocked: u64,
}

/// Totals of all the clients' flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTotals {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub stale: u64,
}

impl FlowTotals {
    pub fn add(&mut self, flow: &Flow) {
        self.sent += flow.sent;
        self.received += flow.received;
        self.lost += flow.lost;
        self.stale += flow.stale;
    }
}

/// The engine. See the [module docs](self).
pub struct UdpEngine {
    epoll: Epoll,
    events: Vec<libc::epoll_event>,
    clients: Vec<UdpClient>,
    pace: Pace,
    size: usize,
    run: u32,
    loss_timeout_ns: u64,
    start: Instant,
    out: Batch,
    inbox: Batch,
    /// The payload of a Send indication, written before the message.
    scratch: Box<[u8]>,
    /// Transaction IDs of Send indications: unique, need not be random.
    next_tid: u64,
    next_expire_ns: u64,
    /// Rate mode: the next packet of the whole run. Packet k is client k mod N's, due
    /// k / (N × rate) seconds after the start, so the clients take turns evenly spread over
    /// each period and finding the next one costs nothing, however many clients there are.
    next_packet: u64,
    /// Rate mode: when `next_packet` is due.
    next_due_ns: u64,
    pub hist: Histogram,
    pub failures: Failures,
    pub counters: EngineCounters,
}

impl UdpEngine {
    /// An engine for `clients` (connected, non-blocking sockets, which must outlive it), with
    /// payloads of `size` bytes stamped with `run`; packets not echoed within `loss_timeout`
    /// are lost. Time counts from `start`.
    pub fn new(
        clients: &[(RawFd, Framing)],
        pace: Pace,
        size: usize,
        run: u32,
        loss_timeout: Duration,
        start: Instant,
    ) -> io::Result<UdpEngine> {
        let epoll = Epoll::new()?;
        let capacity = flow_capacity(pace, loss_timeout);
        let mut list = Vec::with_capacity(clients.len());
        for (index, &(fd, framing)) in clients.iter().enumerate() {
            epoll.add(fd, index as u64)?;
            list.push(UdpClient {
                fd,
                framing,
                flow: Flow::new(capacity),
                last_echo_ns: 0,
            });
        }
        Ok(UdpEngine {
            epoll,
            events: sys::epoll_events(256),
            clients: list,
            pace,
            size,
            run,
            loss_timeout_ns: loss_timeout.as_nanos() as u64,
            start,
            out: Batch::new(BATCH, size + FRAMING_ROOM),
            inbox: Batch::new(BATCH, size + FRAMING_ROOM),
            scratch: vec![0; size].into_boxed_slice(),
            next_tid: 0,
            next_expire_ns: 0,
            next_packet: 0,
            next_due_ns: 0,
            hist: Histogram::default(),
            failures: Failures::default(),
            counters: EngineCounters::default(),
        })
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Sends (if `sending`) and receives until `until` or `stop()`. Without sending, it
    /// returns as soon as nothing is in flight any more (the drain).
    pub fn run(&mut self, until: Instant, sending: bool, stop: &dyn Fn() -> bool) {
        let until_ns = until.saturating_duration_since(self.start).as_nanos() as u64;
        // The first pass fills every window (or sends what is due) at once.
        let mut pump_all = true;
        loop {
            let now = self.now_ns();
            if now >= until_ns || stop() {
                return;
            }
            if now >= self.next_expire_ns {
                for client in &mut self.clients {
                    client.flow.expire(now, self.loss_timeout_ns);
                }
                self.next_expire_ns = now + EXPIRE_EVERY.as_nanos() as u64;
                pump_all = true;
            }
            if !sending && self.clients.iter().all(|c| c.flow.in_flight() == 0) {
                return;
            }
            if sending {
                match self.pace {
                    Pace::Window(_) if pump_all => {
                        for index in 0..self.clients.len() {
                            self.top_up(index, now);
                        }
                    }
                    Pace::Window(_) => {}
                    Pace::Rate(_) if now >= self.next_due_ns => self.send_due(now),
                    Pace::Rate(_) => {}
                }
                pump_all = false;
            }
            let mut wake = self.next_expire_ns.min(until_ns);
            if sending && matches!(self.pace, Pace::Rate(_)) {
                wake = wake.min(self.next_due_ns);
            }
            let timeout = Duration::from_nanos(wake.saturating_sub(self.now_ns()));
            let ready = match self.epoll.wait(&mut self.events, timeout) {
                Ok(n) => n,
                Err(e) => {
                    self.failures.add(io_cause(&e));
                    std::thread::sleep(Duration::from_millis(1));
                    0
                }
            };
            for k in 0..ready {
                let index = self.events[k].u64 as usize;
                self.receive(index);
                if sending && matches!(self.pace, Pace::Window(_)) {
                    let now = self.now_ns();
                    self.top_up(index, now);
                }
            }
        }
    }

    /// Gives up on every packet still in flight: the run is over.
    pub fn finish(&mut self) {
        for client in &mut self.clients {
            client.flow.give_up();
        }
    }

    pub fn totals(&self) -> FlowTotals {
        let mut totals = FlowTotals::default();
        for client in &self.clients {
            totals.add(&client.flow);
        }
        totals
    }

    /// A payload client `index` received outside the engine (the TURN client kept it while
    /// it refreshed the allocation).
    pub fn feed(&mut self, index: usize, payload: &[u8]) {
        let now = self.now_ns();
        if let Some(client) = self.clients.get_mut(index) {
            client.echoed(
                index,
                payload,
                self.run,
                now,
                &mut self.hist,
                &mut self.counters.foreign,
            );
        }
    }

    /// Window mode: sends client `index` as many packets as its window has room for.
    fn top_up(&mut self, index: usize, now: u64) {
        let Pace::Window(window) = self.pace else {
            return;
        };
        loop {
            let in_flight = self.clients[index].flow.in_flight();
            let room = u64::from(window).saturating_sub(in_flight) as usize;
            if room == 0 || self.send(index, room.min(BATCH), now) < room.min(BATCH) {
                return;
            }
        }
    }

    /// Rate mode: sends the packets due by `now`, each client in turn (a single client gets
    /// them in batches), at most [`MAX_PER_PASS`] per pass; notes when the next one is due.
    fn send_due(&mut self, now: u64) {
        let Pace::Rate(rate) = self.pace else {
            return;
        };
        let clients = self.clients.len() as u64;
        if clients == 0 {
            return;
        }
        let total_rate = rate * clients as f64;
        let due = (now as f64 * total_rate / 1e9) as u64 + 1;
        let mut budget = MAX_PER_PASS;
        while self.next_packet < due && budget > 0 {
            let index = (self.next_packet % clients) as usize;
            let count = if clients == 1 {
                (due - self.next_packet).min(BATCH as u64) as usize
            } else {
                1
            };
            let sent = self.send(index, count, now);
            if sent == 0 {
                // The socket's buffer is full or it reported an error: try again next pass.
                break;
            }
            self.next_packet += sent as u64;
            budget = budget.saturating_sub(sent);
        }
        self.next_due_ns = (self.next_packet as f64 * 1e9 / total_rate) as u64;
    }

    /// How many clients had an echo back in time at or after `since` (ns after the start).
    pub fn echoing_since(&self, since_ns: u64) -> u64 {
        self.clients
            .iter()
            .filter(|c| c.last_echo_ns > 0 && c.last_echo_ns >= since_ns)
            .count() as u64
    }

    /// Nanoseconds from the engine's start to `at`.
    pub fn ns_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_nanos() as u64
    }

    /// Sends up to `count` (at most a batch) packets from client `index`: how many went out.
    fn send(&mut self, index: usize, count: usize, now: u64) -> usize {
        let count = count.min(BATCH);
        let client = &self.clients[index];
        let first = client.flow.next_seq();
        let mut built = 0;
        for j in 0..count {
            let header = PayloadHeader {
                run: self.run,
                client: index as u32,
                seq: (first + j as u64) as u32,
            };
            let tid = TransactionId(tid_bytes(self.next_tid));
            self.next_tid += 1;
            let len = build_frame(
                client.framing,
                self.out.slot_mut(j),
                &mut self.scratch,
                self.size,
                header,
                tid,
            );
            match len {
                Some(len) => self.out.set_len(j, len),
                None => break,
            }
            built += 1;
        }
        let fd = client.fd;
        let sent = match self.out.send(fd, 0..built) {
            Ok(sent) => sent,
            Err(e) => {
                self.failures.add(&format!("send_{}", io_cause(&e)));
                0
            }
        };
        if sent < built {
            self.counters.send_blocked += 1;
        }
        let flow = &mut self.clients[index].flow;
        for _ in 0..sent {
            flow.on_send(now);
        }
        sent
    }

    /// Reads everything waiting on client `index`'s socket.
    fn receive(&mut self, index: usize) {
        let Some(client) = self.clients.get_mut(index) else {
            return;
        };
        loop {
            let n = match self.inbox.recv(client.fd, 0..BATCH, false) {
                Ok(n) => n,
                Err(e) => {
                    // E.g. ICMP port unreachable from a server that is gone: reported once.
                    self.failures.add(&format!("recv_{}", io_cause(&e)));
                    return;
                }
            };
            let now = self.start.elapsed().as_nanos() as u64;
            for j in 0..n {
                let frame = self.inbox.received(j);
                let payload = if self.inbox.truncated(j) {
                    None
                } else {
                    payload_of(client.framing, frame)
                };
                match payload {
                    Some(payload) => client.echoed(
                        index,
                        payload,
                        self.run,
                        now,
                        &mut self.hist,
                        &mut self.counters.foreign,
                    ),
                    None => self.counters.foreign += 1,
                }
            }
            if n < BATCH {
                return;
            }
        }
    }
}

/// A 12-byte transaction ID from a counter.
fn tid_bytes(n: u64) -> [u8; 12] {
    let mut tid = [0u8; 12];
    tid[..8].copy_from_slice(&n.to_be_bytes());
    tid[8..].copy_from_slice(b"load");
    tid
}

/// Writes one frame carrying a payload of `size` bytes that starts with `header` into
/// `slot`: its length, or `None` if it does not fit (never with the engine's slot size).
pub fn build_frame(
    framing: Framing,
    slot: &mut [u8],
    scratch: &mut [u8],
    size: usize,
    header: PayloadHeader,
    tid: TransactionId,
) -> Option<usize> {
    match framing {
        Framing::Channel(number) => {
            let len = u16::try_from(size).ok()?;
            stun::write_channel_data_header(slot, number, len).ok()?;
            let payload = slot.get_mut(CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + size)?;
            header.write(payload)?;
            Some(CHANNEL_DATA_HEADER_LEN + size)
        }
        Framing::Send(peer) => {
            let payload = scratch.get_mut(..size)?;
            header.write(payload)?;
            let mut w = MessageWriter::new(slot, Method::SEND, Class::Indication, tid).ok()?;
            w.xor_address(attr::XOR_PEER_ADDRESS, peer).ok()?;
            w.attribute(attr::DATA, payload).ok()?;
            Some(w.finish())
        }
        Framing::Plain => {
            header.write(slot.get_mut(..size)?)?;
            Some(size)
        }
    }
}

/// The payload in a frame from the server (or forwarder), if it is data on this framing.
pub fn payload_of(framing: Framing, frame: &[u8]) -> Option<&[u8]> {
    match framing {
        Framing::Channel(number) => ChannelData::parse(frame)
            .ok()
            .filter(|data| data.number == number)
            .map(|data| data.payload),
        Framing::Send(_) => {
            if stun::channel::is_channel_data(frame) {
                return None;
            }
            let msg = Message::parse(frame).ok()?;
            if msg.method() != Method::DATA || msg.class() != Class::Indication {
                return None;
            }
            msg.get(attr::DATA)
        }
        Framing::Plain => Some(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_payload_header_each_way() {
        let header = PayloadHeader {
            run: 7,
            client: 3,
            seq: 99,
        };
        let peer: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        let mut slot = vec![0u8; 160 + FRAMING_ROOM];
        let mut scratch = vec![0u8; 160];
        let tid = TransactionId(tid_bytes(5));
        for framing in [Framing::Channel(0x4001), Framing::Plain] {
            let len = build_frame(framing, &mut slot, &mut scratch, 160, header, tid).unwrap();
            let payload = payload_of(framing, &slot[..len]).unwrap();
            assert_eq!(payload.len(), 160);
            assert_eq!(PayloadHeader::read(payload), Some(header));
        }
        // A Send indication goes out; what comes back is a Data indication.
        let len = build_frame(
            Framing::Send(peer),
            &mut slot,
            &mut scratch,
            160,
            header,
            tid,
        )
        .unwrap();
        let sent = Message::parse(&slot[..len]).unwrap();
        assert_eq!(sent.method(), Method::SEND);
        let mut data = vec![0u8; 400];
        let mut w = MessageWriter::new(&mut data, Method::DATA, Class::Indication, tid).unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        w.attribute(attr::DATA, sent.get(attr::DATA).unwrap())
            .unwrap();
        let n = w.finish();
        let payload = payload_of(Framing::Send(peer), &data[..n]).unwrap();
        assert_eq!(PayloadHeader::read(payload), Some(header));
        // Another channel, a Send framing given ChannelData, garbage: not data.
        let len = build_frame(
            Framing::Channel(0x4001),
            &mut slot,
            &mut scratch,
            160,
            header,
            tid,
        )
        .unwrap();
        assert_eq!(payload_of(Framing::Channel(0x4002), &slot[..len]), None);
        assert_eq!(payload_of(Framing::Send(peer), &slot[..len]), None);
        assert_eq!(
            payload_of(Framing::Channel(0x4001), &[0x40, 1, 0, 200]),
            None
        );
        // A payload too short for the header is refused when building.
        assert_eq!(
            build_frame(Framing::Plain, &mut slot, &mut scratch, 4, header, tid),
            None
        );
    }

    #[test]
    fn the_engine_counts_echoes_through_a_plain_echo_socket() {
        // A plain UDP echo socket stands in for the relay: client → echo → client.
        let deadline = Instant::now() + Duration::from_secs(10);
        let peer =
            super::super::echo::EchoPeer::start("127.0.0.1:0".parse().unwrap(), deadline).unwrap();
        let sockets: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.connect(peer.addr()).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        use std::os::fd::AsRawFd;
        let clients: Vec<(RawFd, Framing)> = sockets
            .iter()
            .map(|s| (s.as_raw_fd(), Framing::Plain))
            .collect();
        let start = Instant::now();
        let mut engine = UdpEngine::new(
            &clients,
            Pace::Window(4),
            100,
            42,
            Duration::from_millis(500),
            start,
        )
        .unwrap();
        engine.run(start + Duration::from_millis(300), true, &|| false);
        engine.run(start + Duration::from_millis(1300), false, &|| false);
        engine.finish();
        let totals = engine.totals();
        assert!(totals.sent > 12, "{totals:?}");
        assert_eq!(totals.sent, totals.received + totals.lost);
        assert_eq!(totals.lost, 0, "{totals:?}");
        assert_eq!(engine.hist.count(), totals.received);
        assert_eq!(engine.counters.foreign, 0);
    }
}
