//! kv_server's memory allocator: mimalloc.
//!
//! In this framework a request is made on a reactor thread (the codec decodes it) and
//! dropped on a worker thread (the handler consumes it), and a reply goes the other way.
//! glibc's malloc serves that pattern slowly: its per-thread caches refill only from frees
//! on the same thread, so the reactor's allocations take the locked slow path every time.
//! kv_server makes three allocations per `GET key` on the reactor (the arguments) and one
//! on a worker (the reply): under `redis-benchmark -P 16` a quarter of its CPU was in
//! `_int_malloc` and `_int_free`. mimalloc returns a block freed on another thread to its
//! owner's page without a lock: 8-17% more requests per second there with 16 pipelined
//! commands (docs/bench/README.md, "Choosing an allocator"). echo_server and http_hello
//! allocate one request each and measured no gain, with three to four times the peak RSS,
//! so they keep the system's allocator. The
//! framework does not choose an allocator: a binary does.

/// Every allocation of the example binary. Not in a test crate that includes the example's
/// source (`cfg(test)`): a test chooses its own allocator, or counts with one.
#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
