//! The integration tests: one crate, one binary, one module per topic (each was a crate of
//! its own, built and linked on its own). Run one module with
//! `cargo test --test it round_trip::`, one test with its full name.
//!
//! The tests of all modules run in parallel threads of this one process. A test that
//! measures the process (its heap, CPU time, descriptors or memory) or changes it (its
//! descriptor limit) has its own crate beside this one: `tests/allocations_per_request.rs`
//! and `tests/kv_server_regressions.rs` (a counting global allocator; the latter also reads the
//! process's CPU time),
//! `tests/accept_emfile.rs` (lowers RLIMIT_NOFILE in a child process of its own) and
//! `tests/soak.rs` (the process's descriptors and RSS before and after). They include
//! `common.rs` by path. Tests here look at threads by a name prefix unique to the test,
//! never at the process as a whole.

#![allow(clippy::duplicate_mod)]

// Helpers shared by the modules below.
mod common;
mod deploy_support;
mod line_client;
mod line_or;
mod redis_client;
mod smtp_support;

// Example sources, included so their servers run in this process, always built from the
// current source. main() and its signal handling are the examples' own: unused here.
// smtp_server is smtp_support's. Each example is a binary that includes the support files
// it needs (examples/support/): here, four of them include shutdown.rs, transport.rs and
// protocol_main.rs each, a module per example, which is what clippy::duplicate_mod
// (allowed at the top) flags.
#[allow(dead_code)]
#[path = "../../examples/chat_server.rs"]
mod chat_server;
#[allow(dead_code)]
#[path = "../../examples/http_hello.rs"]
mod http_hello;
#[allow(dead_code)]
#[path = "../../examples/kv_server.rs"]
mod kv_server;

mod adaptive_inline;
mod backpressure;
mod bad_input;
mod batch_scheduling;
mod blocked_handler_isolation;
mod chat_server_clients;
mod client_close_eof;
mod close_barrier;
mod codec_splits;
mod file_regions;
mod graceful_shutdown;
mod half_close;
mod handler_panic;
mod haproxy;
mod hardening_regressions;
mod http_hello_clients;
mod http_hello_files;
mod http_hello_regressions;
mod inline_handler;
mod kv_server_clients;
mod kv_server_differential;
mod kv_server_pubsub;
mod kv_server_pubsub_differential;
mod kv_server_sessions;
mod large_stream_echo;
mod late_reply_dropped;
mod limit_max_connections;
mod many_connections;
mod pipelined_order;
mod proxy_protocol;
mod push;
mod push_causality;
mod quiet_connections;
mod reply_not_held_by_batch;
mod reuse_port;
mod round_trip;
mod sequential_round_trips;
mod session_farewell;
mod session_framing_switch;
mod session_hooks;
mod session_order;
mod session_replies;
mod shutdown_in_flight;
mod shutdown_serves_received;
mod shutdown_trigger;
mod smtp_server_clients;
mod smtp_server_protocol;
mod socket_activation;
mod stats;
mod streamed_bodies;
mod timeouts;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tls")]
mod tls_clients;
mod unix_clients;
mod unix_socket;
mod user_timers;
mod worker_timer_slack;
