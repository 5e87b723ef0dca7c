//! A large random stream, written in random chunk sizes while the echo comes back, must
//! return byte for byte: nothing lost, duplicated or reordered under backpressure.

use crate::common;

use std::io::Write;
use std::net::Shutdown;
use std::thread;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reactor_pool::{Builder, RawCodec};

use crate::common::{assert_same_bytes, connect, echo, read_to_eof, wait_for_stats};

const TOTAL: usize = 4 << 20;
const MAX_CHUNK: usize = 64 << 10;

#[test]
fn four_mib_random_stream_echoes_byte_identical() {
    common::init_logging();
    let seed: u64 = rand::random();
    eprintln!("seed: {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; TOTAL];
    rng.fill_bytes(&mut data);
    let chunks: Vec<usize> = {
        let mut sizes = Vec::new();
        let mut left = TOTAL;
        while left > 0 {
            let size = rng.gen_range(1..=MAX_CHUNK).min(left);
            sizes.push(size);
            left -= size;
        }
        sizes
    };

    let server = Builder::bind("127.0.0.1:0")
        .workers(2)
        .thread_name("bigecho")
        .start(RawCodec::new(), echo())
        .expect("start the server");

    let mut reader = connect(server.local_addr().tcp().unwrap());
    let mut writer = reader.try_clone().expect("clone the client socket");
    let to_send = data.clone();
    let writer_thread = thread::spawn(move || {
        let mut at = 0;
        for size in chunks {
            writer
                .write_all(&to_send[at..at + size])
                .unwrap_or_else(|e| panic!("writing bytes {at}..{}: {e}", at + size));
            at += size;
        }
        // The server owes us the echo of everything before this FIN, then its own FIN.
        writer.shutdown(Shutdown::Write).expect("shutdown(Write)");
    });

    let echoed = read_to_eof(&mut reader);
    writer_thread.join().expect("writer thread");
    let echoed = echoed.unwrap_or_else(|e| panic!("reading the echo: {e} ({:?})", e.kind()));
    assert_same_bytes(&echoed, &data, &format!("echo of the stream (seed {seed})"));

    let stats = wait_for_stats(&server, "the connection to close", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.resets, 0, "{stats:#?}");
    assert_eq!(stats.bytes_buffered, 0, "buffers released: {stats:#?}");
    drop(reader);
    server.shutdown();
}
