//! The PROXY protocol (`Builder::proxy_protocol`): v1 and v2 headers name the client the
//! handler sees; a connection without a valid header, with one cut short, or with one that
//! arrives too slowly is closed; a header is honoured only as the first bytes.

use crate::common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{connect, read_to_eof, send, wait_for_stats};
use reactor_pool::{handler_fn, Builder, Context, LineCodec, ServerHandle};

/// Answers each line with `LINE peer=P proxy=Q` (the codec adds the newline).
fn start(proxy_protocol: bool, handshake_timeout: Duration) -> ServerHandle {
    common::init_logging();
    Builder::bind("127.0.0.1:0")
        .workers(2)
        .proxy_protocol(proxy_protocol)
        .handshake_timeout(Some(handshake_timeout))
        .lingering_time(Duration::from_millis(200))
        .start(
            LineCodec::new(),
            handler_fn(|line: Vec<u8>, ctx: &Context| {
                let proxy = ctx.proxy().map_or("none".to_string(), |p| p.to_string());
                let mut reply = line;
                reply.extend_from_slice(format!(" peer={} proxy={proxy}", ctx.peer()).as_bytes());
                reply
            }),
        )
        .expect("start")
}

fn read_line(stream: &mut std::net::TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        let n = stream.read(&mut byte).expect("read a reply line");
        assert!(n == 1, "EOF after {:?}", String::from_utf8_lossy(&line));
        line.push(byte[0]);
    }
    String::from_utf8(line).expect("utf-8")
}

/// A v2 PROXY header for a TCP connection from `source` to `destination` (same family),
/// with `tlv` bytes after the addresses.
fn v2_header(source: SocketAddr, destination: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // version 2, PROXY
    let mut addresses = Vec::new();
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            header.push(0x11);
            addresses.extend_from_slice(&s.ip().octets());
            addresses.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            header.push(0x21);
            addresses.extend_from_slice(&s.ip().octets());
            addresses.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("one family"),
    }
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&destination.port().to_be_bytes());
    addresses.extend_from_slice(tlv);
    header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    header.extend_from_slice(&addresses);
    header
}

#[test]
fn a_v1_header_names_the_client_and_the_proxy_is_the_socket_peer() {
    let server = start(true, Duration::from_secs(10));
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(
        &mut client,
        b"PROXY TCP4 192.0.2.1 198.51.100.2 5555 443\r\nwho\n",
    );
    let proxy = client.local_addr().expect("local_addr");
    assert_eq!(
        read_line(&mut client),
        format!("who peer=192.0.2.1:5555 proxy={proxy}\n")
    );
    // A second PROXY line is data, not a header: only the first bytes are honoured.
    send(&mut client, b"PROXY TCP4 203.0.113.9 198.51.100.2 1 2\n");
    assert_eq!(
        read_line(&mut client),
        format!("PROXY TCP4 203.0.113.9 198.51.100.2 1 2 peer=192.0.2.1:5555 proxy={proxy}\n")
    );
}

#[test]
fn a_v2_header_with_tlvs_split_byte_by_byte_names_an_ipv6_client() {
    let server = start(true, Duration::from_secs(10));
    let mut client = connect(server.local_addr().tcp().unwrap());
    let source: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let destination: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    // A TLV as HAProxy sends with `send-proxy-v2`: type 0x04 (NOOP), length 3.
    let mut bytes = v2_header(source, destination, &[0x04, 0, 3, 1, 2, 3]);
    bytes.extend_from_slice(b"who\n");
    for byte in &bytes {
        send(&mut client, std::slice::from_ref(byte));
    }
    let proxy = client.local_addr().expect("local_addr");
    assert_eq!(
        read_line(&mut client),
        format!("who peer={source} proxy={proxy}\n")
    );
}

#[test]
fn a_v2_local_header_keeps_the_socket_peer() {
    let server = start(true, Duration::from_secs(10));
    let mut client = connect(server.local_addr().tcp().unwrap());
    // LOCAL (a proxy's health check): no addresses.
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    bytes.extend_from_slice(b"who\n");
    send(&mut client, &bytes);
    let me = client.local_addr().expect("local_addr");
    assert_eq!(
        read_line(&mut client),
        format!("who peer={me} proxy=none\n")
    );
}

#[test]
fn a_connection_without_a_header_is_closed_with_a_counted_error() {
    let server = start(true, Duration::from_secs(10));
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"who\n");
    let rest = read_to_eof(&mut client).expect("a clean close, not a reset");
    assert!(rest.is_empty(), "no reply before the header: {rest:?}");
    let stats = wait_for_stats(&server, "the transport error", |s| {
        s.transport_errors == 1 && s.connections_open == 0
    });
    assert_eq!(stats.requests, 0);

    // The server still serves others.
    let mut other = connect(server.local_addr().tcp().unwrap());
    send(&mut other, b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\nhi\n");
    assert!(read_line(&mut other).starts_with("hi peer=192.0.2.1:1 "));
}

#[test]
fn a_header_cut_short_by_the_peers_fin_is_a_counted_error() {
    let server = start(true, Duration::from_secs(10));
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"PROXY TCP4 192.0.2.1 198.5");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert!(read_to_eof(&mut client).expect("clean close").is_empty());
    wait_for_stats(&server, "the transport error", |s| {
        s.transport_errors == 1 && s.connections_open == 0
    });
}

#[test]
fn a_v2_header_cut_short_is_a_counted_error() {
    let server = start(true, Duration::from_secs(10));
    let mut client = connect(server.local_addr().tcp().unwrap());
    let header = v2_header(
        "192.0.2.1:1".parse().unwrap(),
        "192.0.2.2:2".parse().unwrap(),
        &[],
    );
    send(&mut client, &header[..header.len() - 3]);
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert!(read_to_eof(&mut client).expect("clean close").is_empty());
    wait_for_stats(&server, "the transport error", |s| s.transport_errors == 1);
}

#[test]
fn a_header_arriving_one_byte_at_a_time_too_slowly_is_closed_at_the_handshake_timeout() {
    let timeout = Duration::from_millis(600);
    let server = start(true, timeout);
    let mut client = connect(server.local_addr().tcp().unwrap());
    let started = std::time::Instant::now();
    let header = b"PROXY TCP4 192.0.2.1 198.51.100.2 5555 443\r\n";
    // One byte every 100 ms: each byte is progress, but the whole header would take 4.4 s.
    let mut sent = 0;
    let closed = loop {
        if client.write_all(&header[sent..sent + 1]).is_err() {
            break true;
        }
        sent += 1;
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 16];
        match client.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => panic!("unexpected reply {:?}", &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break true,
        }
        assert!(sent < header.len(), "the whole header went through");
    };
    assert!(closed);
    assert!(
        started.elapsed() >= timeout,
        "closed before the timeout, after {:?}",
        started.elapsed()
    );
    let stats = wait_for_stats(&server, "the timeout", |s| {
        s.timeouts == 1 && s.connections_open == 0
    });
    assert_eq!((stats.requests, stats.transport_errors), (0, 0));
}

#[test]
fn without_the_option_a_proxy_line_is_just_data() {
    let server = start(false, Duration::from_secs(10));
    let mut client = connect(server.local_addr().tcp().unwrap());
    send(&mut client, b"PROXY TCP4 192.0.2.1 198.51.100.2 5555 443\n");
    let me = client.local_addr().expect("local_addr");
    assert_eq!(
        read_line(&mut client),
        format!("PROXY TCP4 192.0.2.1 198.51.100.2 5555 443 peer={me} proxy=none\n")
    );
}
