//! Builder::reuse_port: two servers accept on one port, as two processes would.

use crate::common;

use crate::common::{connect, read_exactly, send, wait_for_stats};
use reactor_pool::{Builder, LineCodec};

#[test]
fn two_servers_with_reuse_port_share_one_port_and_both_serve() {
    let first = Builder::bind("127.0.0.1:0")
        .reuse_port(true)
        .workers(1)
        .start(LineCodec::new(), common::echo())
        .expect("first server");
    let addr = first.local_addr().tcp().unwrap();
    let second = Builder::bind(addr)
        .reuse_port(true)
        .workers(1)
        .start(LineCodec::new(), common::echo())
        .expect("second server binds the same port");
    assert_eq!(second.local_addr().tcp().unwrap(), addr);

    // The kernel spreads connections by a hash of their addresses: keep connecting until
    // each server has served at least one.
    let mut clients = Vec::new();
    for i in 0..200 {
        let mut client = connect(addr);
        let line = format!("hello {i}\n");
        send(&mut client, line.as_bytes());
        assert_eq!(read_exactly(&mut client, line.len()), line.as_bytes());
        clients.push(client);
        if first.stats().connections_accepted > 0 && second.stats().connections_accepted > 0 {
            break;
        }
    }
    let total = first.stats().connections_accepted + second.stats().connections_accepted;
    assert_eq!(total, clients.len() as u64);
    assert!(
        first.stats().connections_accepted > 0,
        "the first server got nothing"
    );
    assert!(
        second.stats().connections_accepted > 0,
        "the second server got nothing"
    );
    drop(clients);
    wait_for_stats(&first, "first server's connections closed", |s| {
        s.connections_open == 0
    });
    wait_for_stats(&second, "second server's connections closed", |s| {
        s.connections_open == 0
    });
    first.shutdown();
    second.shutdown();
}

#[test]
fn without_reuse_port_the_second_bind_fails() {
    let first = Builder::bind("127.0.0.1:0")
        .workers(1)
        .start(LineCodec::new(), common::echo())
        .expect("first server");
    let second = Builder::bind(first.local_addr().tcp().unwrap())
        .workers(1)
        .start(LineCodec::new(), common::echo());
    assert_eq!(
        second.expect_err("the port is taken").kind(),
        std::io::ErrorKind::AddrInUse
    );
    first.shutdown();
}
