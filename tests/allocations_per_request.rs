//! How many allocations a request costs: a counting allocator around the system's, over
//! sequential round trips on one connection. The echo handler's request is the one
//! allocation that belongs to it (`RawCodec` makes the `Vec` it is decoded into); the
//! framework's own hand-off (the job, the reply, the mailbox, the reactor's lists) should add
//! next to nothing. One test in this crate, so no other test's allocations are counted.

#[path = "it/common.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use reactor_pool::{Builder, RawCodec};

/// The system allocator, counting calls that allocate (alloc, alloc_zeroed, realloc).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to `System` unchanged; only the counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Regression: the reactor took its list of connections to drive after a drain of replies
/// for good (`mem::take`), so every drain allocated it again: 2.1 allocations per round trip
/// where 1 is the request's.
#[test]
fn a_round_trip_allocates_little_beyond_the_request() {
    const WARM_UP: usize = 200;
    const ROUND_TRIPS: usize = 2_000;
    let server = Builder::bind("127.0.0.1:0")
        .reactors(1)
        .workers(1)
        .thread_name("alloc-count")
        .start(RawCodec::new(), common::echo())
        .expect("start the server");
    let mut client = common::connect(server.local_addr().tcp().unwrap());
    // The client allocates nothing per round trip: fixed buffers, no formatting.
    let request = [b'x'; 64];
    let mut reply = [0u8; 64];
    let mut round_trip = |client: &mut std::net::TcpStream| {
        client.write_all(&request).expect("send");
        client.read_exact(&mut reply).expect("reply");
        assert!(reply == request, "the echo differs");
    };
    for _ in 0..WARM_UP {
        round_trip(&mut client);
    }
    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..ROUND_TRIPS {
        round_trip(&mut client);
    }
    let allocations = ALLOCATIONS.load(Relaxed) - before;
    let per_request = allocations as f64 / ROUND_TRIPS as f64;
    // 1 is the request's Vec; the mailbox's queue adds a block per 31 messages.
    assert!(
        per_request < 1.2,
        "{allocations} allocations for {ROUND_TRIPS} round trips: {per_request:.2} per request"
    );
    eprintln!("{per_request:.3} allocations per round trip");
    drop(client);
    server.shutdown();
}
