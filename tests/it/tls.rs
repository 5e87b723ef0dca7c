//! TLS (`Builder::tls`, feature `tls`) keeps every promise of the plain path: order,
//! half-close (close_notify), a clean close_notify then FIN, bounded memory; and closes bad
//! input (not TLS, a record cut short, a handshake too slow) with a counted error.

use crate::common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{connect, wait_for_stats};
use reactor_pool::rustls::pki_types::pem::PemObject;
use reactor_pool::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use reactor_pool::rustls::{self, ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use reactor_pool::{handler_fn, Builder, Context, LineCodec, RawCodec, Replies, ServerHandle};

/// The server and client configurations of a throwaway PKI (common's [`TestPki`]:
/// a root CA the client trusts, an intermediate, a certificate for `localhost`).
pub(crate) struct Certs {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
}

pub(crate) fn certs() -> Certs {
    let pki = common::TestPki::new();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(&pki.key).expect("key");
    let server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let mut roots = RootCertStore::empty();
    for root in CertificateDer::pem_file_iter(&pki.ca).expect("ca") {
        roots.add(root.expect("ca")).expect("root");
    }
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Certs {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

/// A blocking TLS client over a TCP stream, keeping the stream reachable for raw writes.
pub(crate) struct Client {
    tls: ClientConnection,
    tcp: TcpStream,
}

impl Client {
    pub(crate) fn connect(server: &ServerHandle, certs: &Certs) -> Client {
        let name = ServerName::try_from("localhost").expect("name");
        let tls = ClientConnection::new(Arc::clone(&certs.client), name).expect("client");
        let mut client = Client {
            tls,
            tcp: connect(server.local_addr().tcp().unwrap()),
        };
        while client.tls.is_handshaking() {
            client.tls.complete_io(&mut client.tcp).expect("handshake");
        }
        client
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.tls.writer().write_all(bytes).expect("write");
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.tcp).expect("write_tls");
        }
    }

    /// Sends close_notify: TLS's half-close.
    fn close_notify(&mut self) {
        self.tls.send_close_notify();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.tcp).expect("write_tls");
        }
    }

    /// Reads plaintext until `n` bytes arrived.
    pub(crate) fn read_exactly(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        let mut stream = rustls::Stream::new(&mut self.tls, &mut self.tcp);
        stream.read_exact(&mut out).expect("read_exact");
        out
    }

    /// Reads until the server's close_notify (`Ok`) or a failure.
    fn read_to_close_notify(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut stream = rustls::Stream::new(&mut self.tls, &mut self.tcp);
        stream.read_to_end(&mut out)?;
        Ok(out)
    }

    /// After close_notify: the TCP stream ends with the server's FIN, not a reset.
    fn assert_tcp_fin(&mut self) {
        let rest = common::read_to_eof(&mut self.tcp).expect("a FIN, not a reset");
        assert!(rest.is_empty(), "bytes after close_notify: {rest:?}");
    }
}

fn echo_server(certs: &Certs, configure: impl FnOnce(Builder) -> Builder) -> ServerHandle {
    common::init_logging();
    configure(
        Builder::bind("127.0.0.1:0")
            .workers(4)
            .tls(Arc::clone(&certs.server)),
    )
    .start(RawCodec::new(), common::echo())
    .expect("start")
}

#[test]
fn the_seeds_conversation_over_tls_ends_with_close_notify_then_fin() {
    let certs = certs();
    let server = echo_server(&certs, |b| b);
    let mut client = Client::connect(&server, &certs);
    client.send(b"Hello,server!");
    assert_eq!(client.read_exactly(13), b"Hello,server!");
    client.close_notify();
    assert_eq!(client.read_to_close_notify().expect("close_notify"), b"");
    client.assert_tcp_fin();
    let stats = wait_for_stats(&server, "the close", |s| s.connections_open == 0);
    assert_eq!((stats.transport_errors, stats.resets), (0, 0));
}

#[test]
fn the_handler_sees_plaintext_in_order_and_knows_it_is_tls() {
    let certs = certs();
    common::init_logging();
    let server = Builder::bind("127.0.0.1:0")
        .workers(4)
        .tls(Arc::clone(&certs.server))
        .start(
            LineCodec::new(),
            handler_fn(|line: Vec<u8>, ctx: &Context| {
                // Later requests finish first if they can: the order must hold anyway.
                let n: u64 = String::from_utf8_lossy(&line).parse().unwrap_or(0);
                std::thread::sleep(Duration::from_millis(20 - n % 20));
                format!("{n} tls={}", ctx.is_tls()).into_bytes()
            }),
        )
        .expect("start");
    let mut client = Client::connect(&server, &certs);
    let requests: String = (0..40).map(|n| format!("{n}\n")).collect();
    client.send(requests.as_bytes());
    // Half-close with everything still owed.
    client.close_notify();
    let replies =
        String::from_utf8(client.read_to_close_notify().expect("close_notify")).expect("utf-8");
    let expected: String = (0..40).map(|n| format!("{n} tls=true\n")).collect();
    assert_eq!(replies, expected);
    client.assert_tcp_fin();
}

#[test]
fn a_server_initiated_close_sends_close_notify_then_fin() {
    let certs = certs();
    common::init_logging();
    struct Bye;
    impl reactor_pool::Handler for Bye {
        type Request = Vec<u8>;
        type Response = Vec<u8>;
        type Session = ();
        fn open(&self, _: &Context, _: &mut Replies<Vec<u8>>) {}
        fn call(&self, _: &mut (), line: Vec<u8>, _: &Context, replies: &mut Replies<Vec<u8>>) {
            replies.send(line);
            replies.close();
        }
    }
    let server = Builder::bind("127.0.0.1:0")
        .tls(Arc::clone(&certs.server))
        .start(LineCodec::new(), Bye)
        .expect("start");
    let mut client = Client::connect(&server, &certs);
    client.send(b"bye\n");
    assert_eq!(
        client.read_to_close_notify().expect("close_notify"),
        b"bye\n"
    );
    // The server lingers for our close: answer it, and the FIN follows.
    client.close_notify();
    client.assert_tcp_fin();
}

#[test]
fn garbage_instead_of_a_client_hello_closes_only_that_connection() {
    let certs = certs();
    let server = echo_server(&certs, |b| b);
    let mut raw = connect(server.local_addr().tcp().unwrap());
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    // At most a TLS alert comes back, never an echo; then the connection ends.
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(
        got.is_empty() || got[0] == 0x15,
        "expected nothing or an alert record, got {got:?}"
    );
    let stats = wait_for_stats(&server, "the transport error", |s| {
        s.transport_errors == 1 && s.connections_open == 0
    });
    assert_eq!(stats.requests, 0);
    // Everyone else is served.
    let mut client = Client::connect(&server, &certs);
    client.send(b"still here");
    assert_eq!(client.read_exactly(10), b"still here");
}

#[test]
fn a_record_cut_short_by_the_peers_fin_is_a_counted_error() {
    let certs = certs();
    let server = echo_server(&certs, |b| b);
    let mut client = Client::connect(&server, &certs);
    client.send(b"whole");
    assert_eq!(client.read_exactly(5), b"whole");
    // An application-data record header announcing 100 bytes, 10 of them sent, then FIN.
    client
        .tcp
        .write_all(&[0x17, 0x03, 0x03, 0x00, 100])
        .expect("write");
    client.tcp.write_all(&[0; 10]).expect("write");
    client
        .tcp
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let stats = wait_for_stats(&server, "the transport error", |s| {
        s.transport_errors == 1 && s.connections_open == 0
    });
    assert_eq!(stats.resets, 0);
}

#[test]
fn a_fin_without_close_notify_between_records_is_a_plain_end() {
    let certs = certs();
    let server = echo_server(&certs, |b| b);
    let mut client = Client::connect(&server, &certs);
    client.send(b"last words");
    client
        .tcp
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    // The reply is still owed and comes, then the server's close_notify.
    assert_eq!(
        client.read_to_close_notify().expect("close_notify"),
        b"last words"
    );
    let stats = wait_for_stats(&server, "the close", |s| s.connections_open == 0);
    assert_eq!((stats.transport_errors, stats.resets), (0, 0));
}

#[test]
fn a_handshake_that_does_not_finish_in_time_is_closed() {
    let certs = certs();
    let server = echo_server(&certs, |b| {
        b.handshake_timeout(Some(Duration::from_millis(300)))
    });
    let mut raw = connect(server.local_addr().tcp().unwrap());
    // The first bytes of a ClientHello record, and nothing more.
    raw.write_all(&[0x16, 0x03, 0x01, 0x00]).expect("write");
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    let stats = wait_for_stats(&server, "the timeout", |s| {
        s.timeouts == 1 && s.connections_open == 0
    });
    assert_eq!(stats.transport_errors, 0);
}

#[test]
fn a_tls_peer_that_stops_reading_cannot_make_the_server_buffer_without_bound() {
    let certs = certs();
    let server = echo_server(&certs, |b| b.output_high_water(64 * 1024));
    let mut client = Client::connect(&server, &certs);
    client
        .tcp
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    // Echo requests we never read: once the socket buffers on both sides are full, our
    // writes block; what the server holds meanwhile stays bounded.
    let chunk = vec![b'x'; 16 * 1024];
    let mut sent = 0usize;
    loop {
        client.tls.writer().write_all(&chunk).expect("buffer");
        let mut blocked = false;
        while client.tls.wants_write() {
            if client.tls.write_tls(&mut client.tcp).is_err() {
                blocked = true;
                break;
            }
        }
        if blocked {
            break;
        }
        sent += chunk.len();
        assert!(sent < 512 * 1024 * 1024, "the server never pushed back");
    }
    let stats = server.stats();
    assert!(
        stats.bytes_buffered <= 1024 * 1024,
        "server holds {} bytes after {sent} sent",
        stats.bytes_buffered
    );
}

#[test]
fn a_handshake_under_way_when_the_server_shuts_down_is_finished_and_served() {
    let certs = certs();
    let server = echo_server(&certs, |b| b.reactors(1));
    // A is idle after a request (so the shutdown closes it at once); B has only sent its
    // ClientHello.
    let mut idle = Client::connect(&server, &certs);
    idle.send(b"first");
    assert_eq!(idle.read_exactly(5), b"first");
    let name = ServerName::try_from("localhost").expect("name");
    let mut late = Client {
        tls: ClientConnection::new(Arc::clone(&certs.client), name).expect("client"),
        tcp: connect(server.local_addr().tcp().unwrap()),
    };
    late.tls.write_tls(&mut late.tcp).expect("ClientHello");
    let trigger = server.shutdown_trigger();
    let stopping = std::thread::spawn(move || server.join());
    trigger.fire();
    // The idle connection is closed: the reactor has begun its shutdown.
    assert_eq!(idle.read_to_close_notify().expect("close_notify"), b"");
    // The handshake in progress still completes, and what comes with its end is served.
    while late.tls.is_handshaking() {
        late.tls.complete_io(&mut late.tcp).expect("handshake");
    }
    late.send(b"made it");
    assert_eq!(
        late.read_to_close_notify().expect("close_notify"),
        b"made it"
    );
    stopping.join().expect("server stopped");
}

#[test]
fn early_data_is_refused_when_the_server_starts() {
    let certs = certs();
    let mut config = (*certs.server).clone();
    config.max_early_data_size = 16 * 1024;
    let error = Builder::bind("127.0.0.1:0")
        .tls(Arc::new(config))
        .start(RawCodec::new(), common::echo())
        .expect_err("0-RTT is not supported");
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("max_early_data_size"), "{error}");
}
