//! One load generator thread: a mio event loop over its share of the connections. See
//! [`crate::loadgen`] for the phases of a run; this is the per-connection state machine.
//!
//! Over TLS (feature `tls`) a connection gets its rustls `ClientConnection` once TCP is
//! established and is open from then on, like a plain one: its first requests wait in
//! rustls until the handshake is done (TLS 1.3: they go out with the client's Finished).
//! Reads take records from the socket until it would block and check the plaintext as
//! they go; writes hand the requests to rustls and send its records until they are all out
//! or the socket is full. In reconnect mode a connection whose request is answered sends
//! close_notify, closes, and a fresh one (a fresh handshake) takes its token.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::load::{
    new_histogram, ErrorCounts, LoadConfig, Shared, ThreadResult, CONNECT_TIMEOUT, DRAIN,
    DRAIN_CAP, MEASURE, PATTERN_LEN, POLL_TICK,
};
use crate::schedule::Schedule;

/// A request sent and not yet fully answered.
struct Pending {
    /// Where its bytes start in the pattern.
    offset: usize,
    sent: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Open,
    Dead,
}

struct Conn {
    stream: TcpStream,
    state: ConnState,
    out: Vec<u8>,
    out_pos: usize,
    pending: VecDeque<Pending>,
    /// Bytes of the front pending request's reply received so far.
    recv_off: usize,
    /// Whether any byte of the front reply so far was wrong.
    front_bad: bool,
    /// Had a reply (any phase, right or wrong) or failed: counted in `Shared::settled`.
    replied: bool,
    /// Holds one of the thread's `max_pending` slots: connecting, or connected and waiting
    /// for its first reply.
    holds_slot: bool,
    /// Had a correct reply during the measured window.
    served: bool,
    rng: u64,
    /// When its connect started: reconnect mode measures latency from there.
    started: Instant,
    /// Not the first connection of its token (reconnect mode): its connect is not counted
    /// in the connect phase's figures.
    recycled: bool,
    /// The TLS session, once TCP is established (TLS scenarios).
    #[cfg(feature = "tls")]
    tls: Option<Box<reactor_pool::rustls::ClientConnection>>,
}

/// One client thread and its connections; the index in `conns` is the mio token.
pub struct Client {
    poll: Poll,
    conns: Vec<Conn>,
    /// Global connection ids still to open, in order.
    to_open: VecDeque<usize>,
    /// Connections holding a slot, oldest first, with when they started: the timeout is the
    /// same for all, so the front is always the next to expire. Entries of connections that
    /// have released their slot since are skipped when they reach the front.
    ///
    /// A connection holds its slot until its first reply, not just until it is established:
    /// a connect completes as soon as the kernel has queued it in the server's listen
    /// backlog, accepted or not, so only a reply proves the server took it. Counting until
    /// then keeps the backlog from overflowing (dropped SYNs, one-second retransmissions)
    /// when the server accepts more slowly than the kernel completes connects.
    connecting: VecDeque<(Instant, usize)>,
    /// How many connections hold a slot.
    in_progress: usize,
    /// How many may.
    max_pending: usize,
    target: SocketAddr,
    sources: Vec<Ipv4Addr>,
    pattern: Arc<[u8]>,
    size: usize,
    depth: usize,
    think: Duration,
    /// With a think time: when each waiting connection sends its next request.
    schedule: Schedule,
    shared: Arc<Shared>,
    hard_deadline: Instant,
    completed: u64,
    latency_us: Histogram<u64>,
    send_lag_us: Histogram<u64>,
    established: u64,
    served: u64,
    errors: ErrorCounts,
    outstanding: usize,
    scratch: Vec<u8>,
    /// One request per connection, then a new connection (see [`LoadConfig::reconnect`]).
    reconnect: bool,
    /// Round-robin over `sources` for the connections that replace others.
    next_source: usize,
    #[cfg(feature = "tls")]
    tls: Option<Arc<reactor_pool::rustls::ClientConfig>>,
}

impl Client {
    pub fn new(
        cfg: &LoadConfig,
        ids: Vec<usize>,
        max_pending: usize,
        sources: &[Ipv4Addr],
        pattern: &Arc<[u8]>,
        shared: &Arc<Shared>,
        hard_deadline: Instant,
    ) -> io::Result<Client> {
        Ok(Client {
            poll: Poll::new()?,
            conns: Vec::with_capacity(ids.len()),
            to_open: ids.into(),
            connecting: VecDeque::with_capacity(max_pending),
            in_progress: 0,
            max_pending,
            target: cfg.target,
            sources: sources.to_vec(),
            pattern: Arc::clone(pattern),
            size: cfg.message_size.max(1),
            depth: cfg.depth.max(1),
            think: cfg.think,
            schedule: Schedule::new(cfg.think),
            shared: Arc::clone(shared),
            hard_deadline,
            completed: 0,
            latency_us: new_histogram(),
            send_lag_us: new_histogram(),
            established: 0,
            served: 0,
            errors: ErrorCounts::default(),
            outstanding: 0,
            scratch: vec![0; 64 * 1024],
            reconnect: cfg.reconnect,
            next_source: 0,
            #[cfg(feature = "tls")]
            tls: cfg.tls.clone(),
        })
    }

    /// Runs the phases; returns itself so the caller decides when the sockets close.
    pub fn run(mut self, results: &mpsc::Sender<ThreadResult>) -> Self {
        let mut events = Events::with_capacity(1024);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.open_more();
            // Sleep until the next request is due, the next tick at the latest.
            let timeout = self.schedule.next_due().map_or(POLL_TICK, |due| {
                due.saturating_duration_since(Instant::now()).min(POLL_TICK)
            });
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
            for event in events.iter() {
                self.on_event(event.token().0);
            }
            let now = Instant::now();
            self.expire_connects(now);
            let phase = self.shared.phase.load(Ordering::Acquire);
            if phase == DRAIN && drain_deadline.is_none() {
                drain_deadline = Some((now + DRAIN_CAP).min(self.hard_deadline));
                // Requests not yet due are never sent.
                self.schedule.clear();
            }
            self.send_due(now, phase == MEASURE);
            let drained = drain_deadline.is_some() && self.outstanding == 0;
            if drained || drain_deadline.is_some_and(|d| now >= d) || now >= self.hard_deadline {
                break;
            }
        }
        self.errors.unanswered += self.outstanding as u64;
        self.errors.connect += self.to_open.len() as u64;
        self.errors.unserved += self
            .conns
            .iter()
            .filter(|c| c.state == ConnState::Open && !c.served)
            .count() as u64;
        let _ = results.send(ThreadResult {
            completed: self.completed,
            latency_us: std::mem::replace(&mut self.latency_us, new_histogram()),
            send_lag_us: std::mem::replace(&mut self.send_lag_us, new_histogram()),
            established: self.established,
            served: self.served,
            errors: self.errors,
        });
        self
    }

    fn open_more(&mut self) {
        while self.in_progress < self.max_pending {
            let Some(id) = self.to_open.pop_front() else {
                return;
            };
            let source = self.sources[id % self.sources.len()];
            let token = self.conns.len();
            match self.start_connect(source, token) {
                Ok(stream) => {
                    self.in_progress += 1;
                    self.connecting.push_back((Instant::now(), token));
                    self.conns.push(Conn {
                        stream,
                        state: ConnState::Connecting,
                        out: Vec::new(),
                        out_pos: 0,
                        pending: VecDeque::with_capacity(self.depth),
                        recv_off: 0,
                        front_bad: false,
                        replied: false,
                        holds_slot: true,
                        served: false,
                        rng: (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        started: Instant::now(),
                        recycled: false,
                        #[cfg(feature = "tls")]
                        tls: None,
                    });
                }
                Err(_) => {
                    self.errors.connect += 1;
                    self.settle_one(true);
                }
            }
        }
    }

    fn start_connect(&self, source: Ipv4Addr, token: usize) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        socket.bind(&SockAddr::from(SocketAddrV4::new(source, 0)))?;
        match socket.connect(&SockAddr::from(self.target)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        self.poll.registry().register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(stream)
    }

    /// A connection attempt ended; a `failed` one also counts as settled (it will never
    /// have a first reply to wait for).
    fn settle_one(&self, failed: bool) {
        self.shared.connects_done.fetch_add(1, Ordering::AcqRel);
        if failed {
            self.shared.settled.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Gives up on the slots held for [`CONNECT_TIMEOUT`]: a connect still in progress
    /// fails; an established connection still waiting for its first reply stays open (if
    /// that reply never comes, it counts as unanswered) but no longer holds up the others.
    fn expire_connects(&mut self, now: Instant) {
        while let Some(&(since, token)) = self.connecting.front() {
            if self.conns[token].holds_slot {
                if now.duration_since(since) < CONNECT_TIMEOUT {
                    return;
                }
                self.release_slot(token);
                if self.conns[token].state == ConnState::Connecting {
                    self.errors.connect += 1;
                    self.kill(token);
                    self.settle_one(true);
                }
            }
            self.connecting.pop_front();
        }
    }

    fn release_slot(&mut self, token: usize) {
        if std::mem::take(&mut self.conns[token].holds_slot) {
            self.in_progress -= 1;
        }
    }

    fn on_event(&mut self, token: usize) {
        match self.conns[token].state {
            ConnState::Dead => {}
            ConnState::Connecting => self.finish_connect(token),
            ConnState::Open => {
                self.read(token);
                self.write(token);
            }
        }
    }

    fn finish_connect(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        let failed = match conn.stream.take_error() {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => false,
                // Not connected yet: a spurious wake-up; wait for the next event.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => true,
            },
        };
        let recycled = self.conns[token].recycled;
        if failed {
            self.release_slot(token);
            self.errors.connect += 1;
            self.kill(token);
            if !recycled {
                self.settle_one(true);
            }
            return;
        }
        self.conns[token].state = ConnState::Open;
        if !recycled {
            self.established += 1;
            self.settle_one(false);
        }
        #[cfg(feature = "tls")]
        if let Some(config) = &self.tls {
            match crate::tls::connect(config) {
                Ok(tls) => self.conns[token].tls = Some(Box::new(tls)),
                Err(_) => return self.lose(token),
            }
        }
        // The first requests go out at once, think time or not: their replies tell that the
        // server has taken the connection (see `connecting`). A reconnecting connection's
        // latency runs from the start of its connect.
        let now = if self.reconnect {
            self.conns[token].started
        } else {
            Instant::now()
        };
        for _ in 0..self.depth {
            self.enqueue(token, now);
        }
        self.write(token);
        // Readiness is edge-triggered: a reply may already be waiting.
        self.read(token);
    }

    /// Sends the requests due by `now` (none once the run drains), recording how late they
    /// are if `measure`.
    fn send_due(&mut self, now: Instant, measure: bool) {
        while let Some((due, token)) = self.schedule.pop_due(now) {
            if self.conns[token].state != ConnState::Open {
                continue;
            }
            if measure {
                let lag = now.duration_since(due).as_micros();
                let lag_us = u64::try_from(lag).unwrap_or(u64::MAX);
                self.send_lag_us.saturating_record(lag_us.max(1));
            }
            self.enqueue(token, now);
            self.write(token);
        }
    }

    /// Queues one new request on the connection.
    fn enqueue(&mut self, token: usize, now: Instant) {
        let size = self.size;
        let conn = &mut self.conns[token];
        let offset = (conn.next_random() % PATTERN_LEN as u64) as usize;
        if conn.out_pos == conn.out.len() {
            conn.out.clear();
            conn.out_pos = 0;
        }
        conn.out
            .extend_from_slice(&self.pattern[offset..offset + size]);
        conn.pending.push_back(Pending { offset, sent: now });
        self.outstanding += 1;
    }

    fn write(&mut self, token: usize) {
        #[cfg(feature = "tls")]
        if self.conns[token].tls.is_some() {
            return self.write_tls(token);
        }
        loop {
            let conn = &mut self.conns[token];
            if conn.out_pos == conn.out.len() {
                return;
            }
            match conn.stream.write(&conn.out[conn.out_pos..]) {
                Ok(0) => return self.lose(token),
                Ok(n) => conn.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.lose(token),
            }
        }
    }

    fn read(&mut self, token: usize) {
        #[cfg(feature = "tls")]
        if self.conns[token].tls.is_some() {
            return self.read_tls(token);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            if self.conns[token].state != ConnState::Open {
                break;
            }
            match self.conns[token].stream.read(&mut scratch) {
                Ok(0) => {
                    self.lose(token);
                    break;
                }
                Ok(n) => self.take_reply_bytes(token, &scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.lose(token);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Checks received bytes against the requests outstanding, completing requests and
    /// queuing (or, with a think time, scheduling) the next ones.
    fn take_reply_bytes(&mut self, token: usize, mut data: &[u8]) {
        let size = self.size;
        let mut now: Option<Instant> = None;
        let mut replace = false;
        while !data.is_empty() {
            let conn = &mut self.conns[token];
            let Some(front) = conn.pending.front() else {
                // Bytes nobody asked for.
                self.errors.mismatch += 1;
                return;
            };
            let expected = &self.pattern[front.offset + conn.recv_off..front.offset + size];
            let take = expected.len().min(data.len());
            if data[..take] != expected[..take] {
                conn.front_bad = true;
            }
            conn.recv_off += take;
            data = &data[take..];
            if conn.recv_off < size {
                continue;
            }
            let done = conn.pending.pop_front().expect("checked above");
            let bad = std::mem::take(&mut conn.front_bad);
            conn.recv_off = 0;
            self.outstanding -= 1;
            let first_reply = !std::mem::replace(&mut conn.replied, true);
            if first_reply {
                self.shared.settled.fetch_add(1, Ordering::AcqRel);
            }
            let at = *now.get_or_insert_with(Instant::now);
            let phase = self.shared.phase.load(Ordering::Relaxed);
            if bad {
                self.errors.mismatch += 1;
            } else if phase == MEASURE {
                self.completed += 1;
                if !std::mem::replace(&mut conn.served, true) {
                    self.served += 1;
                }
                let us = at.duration_since(done.sent).as_micros();
                self.latency_us
                    .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
            }
            if phase == DRAIN {
                continue;
            }
            if self.reconnect {
                replace = true;
                continue;
            }
            if self.think.is_zero() {
                self.enqueue(token, at);
            } else if first_reply {
                // The next request goes out at a random point of the first think period,
                // so connections established together do not ping together ever after.
                let think_ns = u64::try_from(self.think.as_nanos()).unwrap_or(u64::MAX);
                let offset = self.conns[token].next_random() % think_ns.max(1);
                self.schedule.at(at + Duration::from_nanos(offset), token);
            } else {
                self.schedule.after_reply(at, token);
            }
        }
        self.release_slot(token);
        if replace {
            return self.replace(token);
        }
        self.write(token);
    }

    /// Reconnect mode: closes the connection (TLS: with close_notify) and starts a new one
    /// with the same token.
    fn replace(&mut self, token: usize) {
        let source = self.sources[self.next_source % self.sources.len()];
        self.next_source = self.next_source.wrapping_add(1);
        let conn = &mut self.conns[token];
        #[cfg(feature = "tls")]
        if let Some(mut tls) = conn.tls.take() {
            tls.send_close_notify();
            // One try: the echo is in, so the socket's send buffer has room for the alert.
            let _ = tls.write_tls(&mut conn.stream);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        match self.start_connect(source, token) {
            Ok(stream) => {
                let conn = &mut self.conns[token];
                // Closes the old socket.
                conn.stream = stream;
                conn.state = ConnState::Connecting;
                conn.started = Instant::now();
                conn.recycled = true;
                conn.out.clear();
                conn.out_pos = 0;
                conn.recv_off = 0;
                conn.front_bad = false;
            }
            Err(_) => {
                self.errors.connect += 1;
                self.kill(token);
            }
        }
    }

    /// An established connection failed: its outstanding requests will never be answered.
    fn lose(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        if conn.state != ConnState::Open {
            return;
        }
        self.errors.lost += 1;
        let unanswered = conn.pending.len();
        self.errors.unanswered += unanswered as u64;
        self.outstanding -= unanswered;
        conn.pending.clear();
        if !conn.replied {
            conn.replied = true;
            self.shared.settled.fetch_add(1, Ordering::AcqRel);
        }
        self.release_slot(token);
        self.kill(token);
    }

    fn kill(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        conn.state = ConnState::Dead;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        conn.out = Vec::new();
        conn.out_pos = 0;
        #[cfg(feature = "tls")]
        {
            conn.tls = None;
        }
    }

    /// [`Client::write`] over TLS: hands the queued requests to rustls and sends its
    /// records (handshake messages too) until all are out or the socket is full.
    #[cfg(feature = "tls")]
    fn write_tls(&mut self, token: usize) {
        loop {
            let Conn {
                stream,
                out,
                out_pos,
                tls: Some(tls),
                ..
            } = &mut self.conns[token]
            else {
                return;
            };
            if *out_pos < out.len() {
                // Before the handshake is done rustls buffers the plaintext (up to its
                // limit: what does not fit stays queued here for the next call).
                match tls.writer().write(&out[*out_pos..]) {
                    Ok(n) => *out_pos += n,
                    Err(_) => return self.lose(token),
                }
            }
            if !tls.wants_write() {
                return;
            }
            match tls.write_tls(stream) {
                Ok(0) => return self.lose(token),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.lose(token),
            }
        }
    }

    /// [`Client::read`] over TLS: takes records from the socket until it would block,
    /// checking the plaintext as it comes; then sends what the handshake wants sent.
    #[cfg(feature = "tls")]
    fn read_tls(&mut self, token: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        'records: loop {
            let conn = &mut self.conns[token];
            let (ConnState::Open, Some(tls)) = (conn.state, conn.tls.as_mut()) else {
                break;
            };
            match tls.read_tls(&mut conn.stream) {
                // The server's FIN (with or without its close_notify): nothing more will come.
                Ok(0) => {
                    self.lose(token);
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.lose(token);
                    break;
                }
            }
            if tls.process_new_packets().is_err() {
                self.lose(token);
                break;
            }
            loop {
                let conn = &mut self.conns[token];
                let (ConnState::Open, Some(tls)) = (conn.state, conn.tls.as_mut()) else {
                    // Lost, or replaced by a new connection, in the reply just taken.
                    break 'records;
                };
                match tls.reader().read(&mut scratch) {
                    // The server's close_notify.
                    Ok(0) => {
                        self.lose(token);
                        break 'records;
                    }
                    Ok(n) => self.take_reply_bytes(token, &scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.lose(token);
                        break 'records;
                    }
                }
            }
        }
        self.scratch = scratch;
        // The handshake's next messages, and the requests it held back once it is done.
        if self.conns[token].state == ConnState::Open {
            self.write(token);
        }
    }
}

impl Conn {
    /// xorshift64: a different slice of the pattern for every request, and the first
    /// request's offset into the think time.
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}
