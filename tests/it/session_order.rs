//! One connection's requests run one after another, in arrival order, each seeing what the
//! earlier ones did (the default); `Mode::Concurrent` opts out, for stateless handlers.

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use crate::common::{connect, read_exactly, send};
use reactor_pool::{handler_fn, Builder, Context, Handler, LineCodec, Mode, Replies};

/// A shared key-value map: `set k v` / `get k`, as a Redis or memcached handler would be.
#[derive(Clone, Default)]
struct SharedMap(Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>);

impl Handler for SharedMap {
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    type Session = ();

    fn open(&self, _: &Context, _: &mut Replies<Vec<u8>>) {}

    fn call(&self, _: &mut (), line: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
        let words: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        match words.as_slice() {
            [b"set", key, value] => {
                // Give a concurrently scheduled GET every chance to overtake this SET.
                std::thread::yield_now();
                self.0.lock().unwrap().insert(key.to_vec(), value.to_vec());
                replies.send(b"ok".to_vec());
            }
            [b"get", key] => {
                let value = self.0.lock().unwrap().get(*key).cloned();
                replies.send(value.unwrap_or_else(|| b"nil".to_vec()));
            }
            _ => replies.send(b"error".to_vec()),
        }
    }
}

/// The sessions issue's first bug: 5,000 pipelined SET/GET pairs on one connection, and
/// some GETs returned an older value because the pairs ran on different workers at once.
#[test]
fn pipelined_set_get_pairs_read_their_own_writes() {
    common::init_logging();
    const PAIRS: usize = 5_000;
    let server = Builder::bind("127.0.0.1:0")
        .workers(8)
        .thread_name("so-ryw")
        .start(LineCodec::new(), SharedMap::default())
        .expect("start");
    let mut client = connect(server.local_addr().tcp().unwrap());
    let mut burst = Vec::new();
    for i in 0..PAIRS {
        burst.extend_from_slice(format!("set k {i}\nget k\n").as_bytes());
    }
    let writer = {
        let mut writer = client.try_clone().expect("clone");
        std::thread::spawn(move || send(&mut writer, &burst))
    };
    let mut lines = BufReader::new(&mut client).lines();
    let mut stale = Vec::new();
    for i in 0..PAIRS {
        let ok = lines.next().expect("a reply").expect("read");
        assert_eq!(ok, "ok");
        let got = lines.next().expect("a reply").expect("read");
        if got != i.to_string() {
            stale.push((i, got));
        }
    }
    writer.join().expect("writer");
    assert!(
        stale.is_empty(),
        "{} stale GETs, first {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    drop(lines);
    drop(client);
    server.shutdown();
}

/// Records how many calls of one connection run at once, and in which order they start.
#[derive(Clone, Default)]
struct Overlap {
    active: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
    started: Arc<Mutex<Vec<u32>>>,
}

impl Overlap {
    fn call(&self, line: &[u8]) {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        let n = std::str::from_utf8(line).unwrap().parse().unwrap();
        self.started.lock().unwrap().push(n);
        std::thread::sleep(Duration::from_millis(1));
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn one_connections_requests_never_overlap_and_start_in_arrival_order() {
    common::init_logging();
    let overlap = Overlap::default();
    let recorder = overlap.clone();
    let server = Builder::bind("127.0.0.1:0")
        .workers(8)
        .thread_name("so-serial")
        .start(
            LineCodec::new(),
            handler_fn(move |line: Vec<u8>, _: &Context| {
                recorder.call(&line);
                line
            }),
        )
        .expect("start");
    let mut client = connect(server.local_addr().tcp().unwrap());
    let burst: String = (0..200).map(|i| format!("{i}\n")).collect();
    send(&mut client, burst.as_bytes());
    let echoed = read_exactly(&mut client, burst.len());
    assert_eq!(String::from_utf8(echoed).unwrap(), burst);
    assert_eq!(overlap.most_at_once.load(Ordering::SeqCst), 1);
    let started = overlap.started.lock().unwrap().clone();
    assert_eq!(started, (0..200).collect::<Vec<u32>>());
    drop(client);
    server.shutdown();
}

/// The opt-in: with `Mode::Concurrent`, two pipelined requests of one connection run at the
/// same time (each waits for the other at a barrier, which in order would never return),
/// and their replies still come back in request order.
#[test]
fn concurrent_mode_runs_one_connections_requests_at_once_and_keeps_reply_order() {
    common::init_logging();
    let barrier = Arc::new(Barrier::new(2));
    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("so-conc")
        .mode(Mode::Concurrent)
        .start(
            LineCodec::new(),
            handler_fn(move |line: Vec<u8>, _: &Context| {
                barrier.wait();
                if line == b"first" {
                    // Finish last, so the reply order is the codec's doing, not the luck
                    // of the schedule.
                    std::thread::sleep(Duration::from_millis(20));
                }
                line
            }),
        )
        .expect("start");
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"first\nsecond\n");
    assert_eq!(read_exactly(&mut client, 13), b"first\nsecond\n");
    drop(client);
    server.shutdown();
}
