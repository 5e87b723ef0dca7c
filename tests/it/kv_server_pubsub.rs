//! examples/kv_server's pub/sub over real sockets on 127.0.0.1: redis-cli subscribers
//! receiving redis-cli's PUBLISH, the exact RESP2 replies redis-server 7.0 gives
//! (confirmations, messages, subscribed mode's errors), PUBLISH's receiver count, and the
//! subscriber's life: removed when it disconnects, closed when it stops reading, spared the
//! idle timeout. The example's source is included, so its server runs in this process.

use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::common::{
    connect, connect_with_recv_buffer, expect_clean_eof, read_until_end, reset, run_client, send,
    wait_until, Ending,
};
use crate::kv_server::{self, Options};
use crate::line_client::LineClient;
use crate::redis_client::{command, expect, read_resp, Resp};
use reactor_pool::ServerHandle;

/// kv_server in this process; shut down on drop.
struct Server(ServerHandle);

impl Server {
    fn start() -> Self {
        Self::with(Options::default())
    }

    fn with(options: Options) -> Self {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        Server(kv_server::start_with(addr, None, None, options).expect("start kv_server"))
    }

    fn addr(&self) -> SocketAddr {
        self.0.local_addr().tcp().expect("a TCP server")
    }
}

/// redis-cli's output for `args`, without its trailing newline.
fn cli(server: &Server, args: &[&str]) -> String {
    let port = server.addr().port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend_from_slice(args);
    let (status, out, err) = run_client("redis-cli", &all);
    assert!(status.success(), "redis-cli {args:?} failed: {err}");
    out.trim_end().to_string()
}

/// `redis-cli SUBSCRIBE`/`PSUBSCRIBE` with `args`, printing one line per reply element.
fn cli_subscriber(server: &Server, args: &[&str]) -> LineClient {
    let port = server.addr().port().to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend_from_slice(args);
    LineClient::spawn("redis-cli", &all)
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

/// A (p)(un)subscribe confirmation: `[word, name, count]`.
fn confirm(word: &str, name: &str, count: usize) -> String {
    format!("*3\r\n{}{}:{count}\r\n", bulk(word), bulk(name))
}

fn message(channel: &str, payload: &str) -> String {
    format!(
        "*3\r\n{}{}{}",
        bulk("message"),
        bulk(channel),
        bulk(payload)
    )
}

fn pmessage(pattern: &str, channel: &str, payload: &str) -> String {
    format!(
        "*4\r\n{}{}{}{}",
        bulk("pmessage"),
        bulk(pattern),
        bulk(channel),
        bulk(payload)
    )
}

/// redis-server's refusal of command `name` in subscribed mode.
fn refused(name: &str) -> String {
    format!(
        "-ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
         RESET are allowed in this context\r\n"
    )
}

/// PUBLISH's count, over a connection of its own.
fn publish(addr: SocketAddr, channel: &str, payload: &str) -> i64 {
    let mut client = BufReader::new(connect(addr));
    send(client.get_mut(), &command(&["PUBLISH", channel, payload]));
    match read_resp(&mut client) {
        Resp::Int(n) => n,
        other => panic!("PUBLISH answered {other:?}"),
    }
}

#[test]
fn redis_cli_subscriber_receives_redis_cli_publish() {
    let server = Server::start();
    let first = cli_subscriber(&server, &["SUBSCRIBE", "ch"]);
    first.expect_lines(&["subscribe", "ch", "1"]);
    assert_eq!(cli(&server, &["PUBLISH", "ch", "hello there"]), "1");
    first.expect_lines(&["message", "ch", "hello there"]);

    let second = cli_subscriber(&server, &["SUBSCRIBE", "other", "ch"]);
    second.expect_lines(&["subscribe", "other", "1", "subscribe", "ch", "2"]);
    assert_eq!(cli(&server, &["PUBLISH", "nobody", "lost"]), "0");
    assert_eq!(cli(&server, &["PUBLISH", "ch", "to both"]), "2");
    assert_eq!(cli(&server, &["PUBLISH", "other", "to one"]), "1");
    first.expect_lines(&["message", "ch", "to both"]);
    second.expect_lines(&["message", "ch", "to both", "message", "other", "to one"]);
}

#[test]
fn redis_cli_psubscriber_receives_matching_channels_only() {
    let server = Server::start();
    let news = cli_subscriber(&server, &["PSUBSCRIBE", "news.*"]);
    news.expect_lines(&["psubscribe", "news.*", "1"]);
    assert_eq!(cli(&server, &["PUBLISH", "news.tech", "rust 2"]), "1");
    assert_eq!(cli(&server, &["PUBLISH", "sports", "goal"]), "0");
    assert_eq!(cli(&server, &["PUBLISH", "news", "no dot"]), "0");
    assert_eq!(cli(&server, &["PUBLISH", "news.art", "paint"]), "1");
    // The two that did not match never came between the two that did.
    news.expect_lines(&["pmessage", "news.*", "news.tech", "rust 2"]);
    news.expect_lines(&["pmessage", "news.*", "news.art", "paint"]);
}

#[test]
fn subscribed_mode_refuses_other_commands_like_redis() {
    let server = Server::start();
    let mut client = connect(server.addr());
    expect(
        &mut client,
        "SUBSCRIBE ch\r\n",
        &confirm("subscribe", "ch", 1),
    );
    for (request, name) in [
        ("GET k", "get"),
        ("SET k v", "set"),
        ("set k v", "set"),
        ("PUBLISH ch x", "publish"),
        ("MULTI", "multi"),
        ("DISCARD", "discard"),
        ("SELECT 1", "select"),
        ("AUTH x", "auth"),
        ("CLIENT GETNAME", "client|getname"),
        ("PUBSUB NUMPAT", "pubsub|numpat"),
        ("ECHO hi", "echo"),
    ] {
        expect(&mut client, &format!("{request}\r\n"), &refused(name));
    }
    expect(
        &mut client,
        "EXEC\r\n",
        "-EXECABORT Transaction discarded because of: Can't execute 'exec': only \
         (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
    );
    // An unknown command and a wrong number of arguments are reported first.
    expect(&mut client, "NOPE\r\n", "-ERR unknown command 'NOPE'\r\n");
    expect(
        &mut client,
        "GET\r\nPING a b\r\n",
        "-ERR wrong number of arguments for 'get' command\r\n\
         -ERR wrong number of arguments for 'ping' command\r\n",
    );
    // PING answers like a message; the subscription commands run.
    expect(
        &mut client,
        "PING\r\nping hi\r\n",
        "*2\r\n$4\r\npong\r\n$0\r\n\r\n*2\r\n$4\r\npong\r\n$2\r\nhi\r\n",
    );
    expect(
        &mut client,
        "PSUBSCRIBE c*\r\nUNSUBSCRIBE ch\r\n",
        &format!(
            "{}{}",
            confirm("psubscribe", "c*", 2),
            confirm("unsubscribe", "ch", 1)
        ),
    );
    expect(&mut client, "GET k\r\n", &refused("get"));
    // Out of subscribed mode once the last subscription goes: the refused SET never ran.
    expect(
        &mut client,
        "PUNSUBSCRIBE\r\nGET k\r\nPING\r\n",
        &format!("{}$-1\r\n+PONG\r\n", confirm("punsubscribe", "c*", 0)),
    );
    // QUIT works in subscribed mode.
    expect(
        &mut client,
        "SUBSCRIBE ch\r\nQUIT\r\n",
        &format!("{}+OK\r\n", confirm("subscribe", "ch", 1)),
    );
    assert_eq!(expect_clean_eof(&mut client, "after QUIT"), b"");
}

#[test]
fn unsubscribe_replies_count_down_like_redis() {
    let server = Server::start();
    let mut client = connect(server.addr());
    // With nothing to undo: a nil name and the count.
    expect(
        &mut client,
        "UNSUBSCRIBE\r\nPUNSUBSCRIBE\r\nUNSUBSCRIBE x\r\n",
        "*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n\
         *3\r\n$11\r\nunsubscribe\r\n$1\r\nx\r\n:0\r\n",
    );
    // One confirmation per name, a repeated one too; the count is channels and patterns.
    expect(
        &mut client,
        "SUBSCRIBE b a b\r\nPSUBSCRIBE n.* n.*\r\nUNSUBSCRIBE zz\r\n",
        &[
            confirm("subscribe", "b", 1),
            confirm("subscribe", "a", 2),
            confirm("subscribe", "b", 2),
            confirm("psubscribe", "n.*", 3),
            confirm("psubscribe", "n.*", 3),
            confirm("unsubscribe", "zz", 3),
        ]
        .concat(),
    );
    // No name: every channel (in sorted order), then the patterns are left.
    expect(
        &mut client,
        "UNSUBSCRIBE\r\nUNSUBSCRIBE\r\n",
        &[
            confirm("unsubscribe", "a", 2),
            confirm("unsubscribe", "b", 1),
            "*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:1\r\n".to_string(),
        ]
        .concat(),
    );
    let mut publisher = connect(server.addr());
    expect(
        &mut publisher,
        "PUBLISH a x\r\nPUBLISH n.a y\r\n",
        ":0\r\n:1\r\n",
    );
    expect(&mut client, "", &pmessage("n.*", "n.a", "y"));
    expect(
        &mut client,
        "PUNSUBSCRIBE n.* n.*\r\nPING\r\n",
        &format!(
            "{}{}+PONG\r\n",
            confirm("punsubscribe", "n.*", 0),
            confirm("punsubscribe", "n.*", 0)
        ),
    );
    expect(&mut publisher, "PUBLISH n.a y\r\n", ":0\r\n");
}

/// A connection subscribed to a channel and to a pattern matching it gets the message
/// twice, and PUBLISH counts it twice, as redis-server does.
#[test]
fn publish_counts_every_subscription_like_redis() {
    let server = Server::start();
    let (mut both, mut pattern) = (connect(server.addr()), connect(server.addr()));
    expect(
        &mut both,
        "SUBSCRIBE news\r\nPSUBSCRIBE n*\r\n",
        &format!(
            "{}{}",
            confirm("subscribe", "news", 1),
            confirm("psubscribe", "n*", 2)
        ),
    );
    expect(
        &mut pattern,
        "PSUBSCRIBE news*\r\n",
        &confirm("psubscribe", "news*", 1),
    );
    let mut publisher = connect(server.addr());
    expect(
        &mut publisher,
        "PUBLISH news hi\r\nPUBLISH other x\r\nPUBLISH nx y\r\nPUBLISH news2 z\r\n",
        ":3\r\n:0\r\n:1\r\n:2\r\n",
    );
    expect(
        &mut both,
        "",
        &[
            message("news", "hi"),
            pmessage("n*", "news", "hi"),
            pmessage("n*", "nx", "y"),
            pmessage("n*", "news2", "z"),
        ]
        .concat(),
    );
    // `nx` does not match `news*`: the next message after `hi` is `news2`'s.
    expect(
        &mut pattern,
        "",
        &[
            pmessage("news*", "news", "hi"),
            pmessage("news*", "news2", "z"),
        ]
        .concat(),
    );
    expect(
        &mut publisher,
        "PUBSUB NUMSUB news n* zz\r\nPUBSUB NUMPAT\r\nPUBSUB CHANNELS\r\n",
        "*6\r\n$4\r\nnews\r\n:1\r\n$2\r\nn*\r\n:0\r\n$2\r\nzz\r\n:0\r\n:2\r\n*1\r\n$4\r\nnews\r\n",
    );
}

/// A subscriber that goes away (a FIN, a reset) is removed: PUBLISH counts it no more.
#[test]
fn a_subscriber_that_disconnects_is_removed() {
    let server = Server::start();
    let addr = server.addr();
    let (mut leaving, mut resetting) = (connect(addr), connect(addr));
    expect(
        &mut leaving,
        "SUBSCRIBE ch\r\n",
        &confirm("subscribe", "ch", 1),
    );
    expect(
        &mut resetting,
        "PSUBSCRIBE c*\r\n",
        &confirm("psubscribe", "c*", 1),
    );
    assert_eq!(publish(addr, "ch", "to both"), 2);
    drop(leaving);
    wait_until("PUBLISH to count the closed subscriber no more", || {
        (publish(addr, "ch", "x") == 1).then_some(())
    });
    reset(resetting);
    wait_until("PUBLISH to count the reset subscriber no more", || {
        (publish(addr, "ch", "x") == 0).then_some(())
    });
    let mut client = connect(addr);
    expect(
        &mut client,
        "PUBSUB NUMSUB ch\r\nPUBSUB NUMPAT\r\nPUBSUB CHANNELS\r\n",
        "*2\r\n$2\r\nch\r\n:0\r\n:0\r\n*0\r\n",
    );
}

/// A subscriber that stops reading is closed once the push limit is reached, as
/// redis-server closes a pub/sub client past its output buffer limit: it leaves the
/// channel, and gets what was written before, then the end of the connection.
#[test]
fn a_subscriber_that_does_not_read_is_closed() {
    let server = Server::with(Options {
        push_limit: Some(4),
        ..Options::default()
    });
    let addr = server.addr();
    let mut slow = connect_with_recv_buffer(addr, 4096);
    expect(
        &mut slow,
        "SUBSCRIBE ch\r\n",
        &confirm("subscribe", "ch", 1),
    );
    let payload = "x".repeat(64 * 1024);
    let mut publisher = BufReader::new(connect(addr));
    let mut published = 0;
    while server.0.stats().pushes_refused == 0 {
        assert!(
            published < 10_000,
            "no push refused after {published} messages"
        );
        send(publisher.get_mut(), &command(&["PUBLISH", "ch", &payload]));
        // Counted as a receiver even when its push is refused, as redis-server counts it.
        assert_eq!(read_resp(&mut publisher), Resp::Int(1));
        published += 1;
    }
    // It left the channel when it was closed, before its connection ended.
    assert_eq!(publish(addr, "ch", "x"), 0);
    // It reads again: what was written before the close, then a clean end.
    let (ending, bytes) = read_until_end(&mut slow, "the slow subscriber");
    assert_eq!(ending, Ending::Eof);
    let one = message("ch", &payload).len();
    assert_eq!(bytes % one, 0, "whole messages");
    assert!(
        bytes / one < published,
        "{} of {published} messages",
        bytes / one
    );
}

/// `--timeout` closes idle connections, but not a subscriber (as redis-server's `timeout`
/// spares pub/sub clients); one that unsubscribes from everything is idle again.
#[test]
fn subscribers_are_spared_the_idle_timeout() {
    let server = Server::with(Options {
        timeout: Some(Duration::from_secs(1)),
        ..Options::default()
    });
    let addr = server.addr();
    let mut subscriber = connect(addr);
    expect(
        &mut subscriber,
        "SUBSCRIBE ch\r\n",
        &confirm("subscribe", "ch", 1),
    );
    // Connected after the subscriber went quiet: it times out first unless spared.
    let mut idle = connect(addr);
    expect(&mut idle, "PING\r\n", "+PONG\r\n");
    assert_eq!(read_until_end(&mut idle, "the idle client").0, Ending::Eof);
    assert_eq!(publish(addr, "ch", "still here"), 1);
    expect(&mut subscriber, "", &message("ch", "still here"));
    expect(
        &mut subscriber,
        "UNSUBSCRIBE\r\n",
        &confirm("unsubscribe", "ch", 0),
    );
    assert_eq!(
        expect_clean_eof(&mut subscriber, "the unsubscribed client, idle"),
        b""
    );
}

/// RESET leaves subscribed mode silently; a transaction may subscribe.
#[test]
fn reset_and_multi_with_subscriptions() {
    let server = Server::start();
    let addr = server.addr();
    let mut client = connect(addr);
    expect(
        &mut client,
        "SELECT 2\r\nSUBSCRIBE a\r\nPSUBSCRIBE a*\r\nRESET\r\nPING\r\n",
        &format!(
            "+OK\r\n{}{}+RESET\r\n+PONG\r\n",
            confirm("subscribe", "a", 1),
            confirm("psubscribe", "a*", 2)
        ),
    );
    assert_eq!(publish(addr, "a", "x"), 0);
    expect(
        &mut client,
        "MULTI\r\nSUBSCRIBE a\r\nSET k v\r\nEXEC\r\nGET k\r\n",
        &format!(
            "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n{}+OK\r\n{}",
            confirm("subscribe", "a", 1),
            refused("get")
        ),
    );
    assert_eq!(publish(addr, "a", "y"), 1);
    expect(&mut client, "", &message("a", "y"));
    // RESET went back to database 0, where the transaction's SET went.
    expect(&mut client, "RESET\r\nGET k\r\n", "+RESET\r\n$1\r\nv\r\n");
}

/// While messages are being published to a channel, a new subscriber's first reply is
/// always its confirmation: a message never overtakes the reply of the SUBSCRIBE that
/// registered it.
#[test]
fn a_message_never_precedes_the_subscribe_confirmation() {
    let server = Server::start();
    let addr = server.addr();
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let publisher = scope.spawn(|| {
            let mut client = BufReader::new(connect(addr));
            let batch: Vec<u8> = (0..16)
                .flat_map(|_| command(&["PUBLISH", "ch", "m"]))
                .collect();
            while !stop.load(Ordering::Acquire) {
                send(client.get_mut(), &batch);
                for _ in 0..16 {
                    read_resp(&mut client);
                }
            }
        });
        let subscribers = (0..100).try_for_each(|round| {
            let stream: TcpStream = connect(addr);
            let mut subscriber = BufReader::new(stream);
            send(subscriber.get_mut(), &command(&["SUBSCRIBE", "ch"]));
            let first = read_resp(&mut subscriber);
            let confirmation = Resp::Array(vec![
                Resp::Bulk(Some("subscribe".into())),
                Resp::Bulk(Some("ch".into())),
                Resp::Int(1),
            ]);
            if first != confirmation {
                return Err(format!("round {round}: the first reply was {first:?}"));
            }
            // And messages do come.
            let next = read_resp(&mut subscriber);
            match next {
                Resp::Array(parts)
                    if parts.first() == Some(&Resp::Bulk(Some("message".into()))) =>
                {
                    Ok(())
                }
                other => Err(format!("round {round}: then {other:?}")),
            }
        });
        stop.store(true, Ordering::Release);
        publisher.join().expect("publisher");
        subscribers.unwrap_or_else(|why| panic!("{why}"));
    });
}
