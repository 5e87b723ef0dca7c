//! The examples' memory allocator: mimalloc.
//!
//! In this framework a request is made on a reactor thread (the codec decodes it) and
//! dropped on a worker thread (the handler consumes it), and a reply goes the other way.
//! glibc's malloc serves that pattern slowly: its per-thread caches refill only from frees
//! on the same thread, so the reactor's allocations take the locked slow path every time
//! (kv_server under `redis-benchmark -P 16`: a quarter of the server's CPU in `_int_malloc`
//! and `_int_free`). mimalloc returns a block freed on another thread to its owner's page
//! without a lock, and built 15-25% more requests per second there (README, "Allocator").
//! The framework does not choose an allocator: a binary does, as these examples do.

/// Every allocation of the example binary. Not in a test crate that includes the example's
/// source (`cfg(test)`): a test chooses its own allocator, or counts with one.
#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
