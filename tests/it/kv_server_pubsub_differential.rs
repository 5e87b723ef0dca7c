//! examples/kv_server's pub/sub against a real redis-server: the same script of commands,
//! from several connections, to each server, and every reply and message each connection
//! receives compared, error texts included; and glob patterns matched as redis-server
//! matches them, on hand-picked and random patterns.
//!
//! After each step, what every connection received from redis-server is known exactly: a
//! PING sent to each connection comes back after everything the step sent it (redis-server
//! is one thread). From kv_server, each connection must then send as many values, and the
//! same ones. The order of a connection's values within one step is compared too, except
//! where redis-server's is its hash table's: the messages one PUBLISH sends a connection
//! with several matching patterns, and UNSUBSCRIBE's or PUNSUBSCRIBE's with no argument.
//!
//! The example's source is included, so its server runs in this process. redis-server must
//! be installed: a missing one fails the test, it does not skip it.

use std::io::BufReader;
use std::net::TcpStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{connect, send};
use crate::kv_server_differential::RedisServer;
use crate::kv_server_sessions::Server as KvServer;
use crate::redis_client::{command, read_resp, Resp};

/// How long kv_server may take to send a value redis-server sent; only a missing one waits
/// this long.
const MISSING_VALUE_WAIT: Duration = Duration::from_secs(10);

/// The message of the PINGs that end a step, which no step sends.
const BARRIER: &str = "end-of-step";

/// Whether `value` answers `PING end-of-step`, in normal or in subscribed mode.
fn is_barrier(value: &Resp) -> bool {
    let message = Resp::Bulk(Some(BARRIER.into()));
    match value {
        Resp::Bulk(_) => *value == message,
        Resp::Array(parts) => *parts == [Resp::Bulk(Some("pong".into())), message],
        _ => false,
    }
}

/// What `connection` received from redis-server since the last step: every value up to
/// the reply to a PING sent now (with a message no step sends), or, inside a transaction (where PING would be queued), to
/// a MULTI, which is refused without touching the transaction.
fn redis_values(connection: &mut BufReader<TcpStream>, in_multi: bool) -> Vec<Resp> {
    let nested = Resp::Error("ERR MULTI calls can not be nested".into());
    let barrier: &[&str] = if in_multi {
        &["MULTI"]
    } else {
        &["PING", BARRIER]
    };
    send(connection.get_mut(), &command(barrier));
    let mut values = Vec::new();
    loop {
        let value = read_resp(connection);
        if (in_multi && value == nested) || (!in_multi && is_barrier(&value)) {
            return values;
        }
        values.push(value);
    }
}

/// Whether redis-server orders a step's values by its hash tables.
fn unordered(args: &[&str]) -> bool {
    let name = args[0].to_ascii_uppercase();
    name == "PUBLISH" || (args.len() == 1 && name.ends_with("UNSUBSCRIBE"))
}

fn sorted(mut values: Vec<Resp>) -> Vec<Resp> {
    values.sort_by_key(|value| format!("{value:?}"));
    values
}

/// Runs `steps` (a connection's index and a command) on `connections` connections to
/// redis-server and to kv_server, and fails listing every step after which a connection
/// received something else from kv_server; the first missing value stops the script.
fn assert_same_pubsub(connections: usize, steps: &[(usize, Vec<&str>)]) {
    let redis = RedisServer::start();
    let kv = KvServer::start();
    let open = |addr| -> Vec<BufReader<TcpStream>> {
        (0..connections)
            .map(|_| BufReader::new(connect(addr)))
            .collect()
    };
    let (mut to_redis, mut to_kv) = (open(redis.addr), open(kv.addr()));
    for connection in &to_kv {
        connection
            .get_ref()
            .set_read_timeout(Some(MISSING_VALUE_WAIT))
            .expect("set_read_timeout");
    }
    let mut differences = Vec::new();
    // Which connections have a transaction open, as redis-server's replies tell.
    let mut in_multi = vec![false; connections];
    'script: for (step, (sender, args)) in steps.iter().enumerate() {
        send(to_redis[*sender].get_mut(), &command(args));
        send(to_kv[*sender].get_mut(), &command(args));
        for (index, (redis, kv)) in to_redis.iter_mut().zip(&mut to_kv).enumerate() {
            // The barrier depends on whether the step opened or closed a transaction.
            let mut expected = Vec::new();
            if index == *sender {
                match args[0].to_ascii_uppercase().as_str() {
                    "MULTI" => {
                        expected.push(read_resp(redis));
                        in_multi[index] |= expected == [Resp::Simple("OK".into())];
                    }
                    "EXEC" | "DISCARD" | "RESET" => in_multi[index] = false,
                    _ => {}
                }
            }
            expected.extend(redis_values(redis, in_multi[index]));
            let mut got = Vec::new();
            for _ in 0..expected.len() {
                match catch_unwind(AssertUnwindSafe(|| read_resp(kv))) {
                    Ok(value) => got.push(value),
                    Err(_) => {
                        differences.push(format!(
                            "step {step} {args:?} from connection {sender}: connection \
                             {index} got {got:?} from kv_server, then nothing; redis-server \
                             sent {expected:?}"
                        ));
                        break 'script;
                    }
                }
            }
            let (expected, got) = if unordered(args) {
                (sorted(expected), sorted(got))
            } else {
                (expected, got)
            };
            if expected != got {
                differences.push(format!(
                    "step {step} {args:?} from connection {sender}: connection {index} got \
                     {got:?} from kv_server, {expected:?} from redis-server"
                ));
            }
        }
    }
    // Nothing more came from kv_server: each connection's next value answers a PING (the
    // script leaves no transaction open).
    if differences.is_empty() {
        for (index, kv) in to_kv.iter_mut().enumerate() {
            send(kv.get_mut(), &command(&["PING", BARRIER]));
            let value = read_resp(kv);
            if !is_barrier(&value) {
                differences.push(format!("connection {index}: {value:?} after the script"));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

#[test]
fn kv_pubsub_replies_and_messages_match_redis() {
    // Connections 0 and 1 subscribe, 2 publishes.
    let steps: Vec<(usize, Vec<&str>)> = vec![
        // Nothing to undo.
        (0, vec!["UNSUBSCRIBE"]),
        (0, vec!["PUNSUBSCRIBE"]),
        (0, vec!["UNSUBSCRIBE", "x", "y"]),
        (0, vec!["PUNSUBSCRIBE", "p*"]),
        (0, vec!["SUBSCRIBE"]),
        (0, vec!["PSUBSCRIBE"]),
        // Subscriptions, repeated ones too, and the counts.
        (0, vec!["SUBSCRIBE", "a", "b", "a"]),
        (0, vec!["PSUBSCRIBE", "a*", "?b", "[ab]", "a*"]),
        (1, vec!["subscribe", "b"]),
        (1, vec!["psubscribe", "*"]),
        // Messages: channel and pattern subscriptions, each counted.
        (2, vec!["PUBLISH", "a", "one"]),
        (2, vec!["PUBLISH", "b", "two"]),
        (2, vec!["PUBLISH", "c", "three"]),
        (2, vec!["PUBLISH", "ab", "four"]),
        (2, vec!["PUBLISH", "", "empty channel"]),
        (2, vec!["PUBLISH", "a", ""]),
        (2, vec!["publish", "nobody", "x"]),
        // Subscribed mode.
        (0, vec!["GET", "k"]),
        (0, vec!["SET", "k", "v"]),
        (0, vec!["PING"]),
        (0, vec!["PING", "hi"]),
        (0, vec!["PING", "a", "b"]),
        (0, vec!["ECHO", "x"]),
        (0, vec!["MULTI"]),
        (0, vec!["EXEC"]),
        (0, vec!["DISCARD"]),
        (0, vec!["CLIENT", "GETNAME"]),
        (0, vec!["CLIENT", "SETNAME", "x"]),
        (0, vec!["CONFIG", "GET", "save"]),
        (0, vec!["PUBSUB", "NUMPAT"]),
        (0, vec!["SELECT", "1"]),
        (0, vec!["AUTH", "x"]),
        (0, vec!["PUBLISH", "a", "x"]),
        (0, vec!["GET"]),
        // PUBSUB, from a connection in normal mode.
        (2, vec!["PUBSUB", "NUMSUB", "a", "b", "c"]),
        (2, vec!["PUBSUB", "NUMSUB"]),
        (2, vec!["PUBSUB", "NUMPAT"]),
        (2, vec!["PUBSUB", "CHANNELS", "a*"]),
        (2, vec!["PUBSUB", "CHANNELS", "a", "b"]),
        (2, vec!["PUBSUB", "numpat", "x"]),
        (2, vec!["PUBSUB", "NOPE"]),
        (2, vec!["PUBSUB"]),
        (2, vec!["PUBLISH", "a"]),
        // Unsubscribing, one by one and all at once.
        (0, vec!["UNSUBSCRIBE", "a"]),
        (0, vec!["UNSUBSCRIBE", "zz", "a"]),
        (2, vec!["PUBLISH", "a", "after"]),
        (0, vec!["UNSUBSCRIBE"]),
        (0, vec!["UNSUBSCRIBE"]),
        (0, vec!["GET", "k"]),
        (0, vec!["PUNSUBSCRIBE", "a*", "nope"]),
        (0, vec!["PUNSUBSCRIBE"]),
        (0, vec!["GET", "k"]),
        (0, vec!["PING"]),
        (0, vec!["SET", "k", "v"]),
        (2, vec!["PUBSUB", "CHANNELS"]),
        (2, vec!["PUBSUB", "NUMPAT"]),
        // RESET leaves subscribed mode without a word.
        (1, vec!["RESET"]),
        (2, vec!["PUBLISH", "b", "gone"]),
        (1, vec!["GET", "k"]),
        (1, vec!["RESET", "x"]),
        // A transaction may subscribe.
        (0, vec!["MULTI"]),
        (0, vec!["SUBSCRIBE", "m"]),
        (0, vec!["PUBLISH", "other", "x"]),
        (0, vec!["GET", "k"]),
        (0, vec!["EXEC"]),
        (2, vec!["PUBLISH", "m", "hi"]),
        (0, vec!["GET", "k"]),
        (0, vec!["PSUBSCRIBE", "x"]),
        (0, vec!["UNSUBSCRIBE"]),
        (0, vec!["UNSUBSCRIBE"]),
        (0, vec!["RESET"]),
        (0, vec!["MULTI"]),
        (0, vec!["UNSUBSCRIBE"]),
        (0, vec!["PUNSUBSCRIBE", "x"]),
        (0, vec!["EXEC"]),
        (0, vec!["MULTI"]),
        (0, vec!["SUBSCRIBE"]),
        (0, vec!["EXEC"]),
    ];
    assert_same_pubsub(3, &steps);
}

/// Patterns and channel names over a small alphabet full of the glob's special bytes.
fn random_word(rng: &mut StdRng, alphabet: &[u8], max_len: usize) -> String {
    let len = rng.gen_range(0..=max_len);
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

#[test]
fn kv_glob_patterns_match_like_redis() {
    let mut patterns: Vec<String> = [
        "*",
        "**",
        "?",
        "",
        "a*",
        "*a",
        "a*b",
        "a?b",
        "[ab]",
        "[^ab]",
        "[a-c]",
        "[c-a]",
        "[a-]",
        "[-a]",
        "[]]",
        "[]",
        "[",
        "[a",
        "a[",
        "[\\]]",
        "[\\",
        "\\",
        "\\*",
        "\\a",
        "a\\",
        "[^]",
        "[^",
        "*[ab]*",
        "?*",
        "*?",
        "a*a*a*a*a*a*a*a*b",
        "[a-c-e]",
        "[!a]",
        "^a",
    ]
    .map(String::from)
    .to_vec();
    let mut channels: Vec<String> = [
        "",
        "a",
        "b",
        "c",
        "d",
        "ab",
        "ba",
        "aab",
        "a*b",
        "a?b",
        "*",
        "?",
        "[",
        "]",
        "\\",
        "-",
        "^",
        "!",
        "axb",
        "abc",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaab",
    ]
    .map(String::from)
    .to_vec();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let special = b"ab*?[]^-\\";
    patterns.extend((0..150).map(|_| random_word(&mut rng, special, 6)));
    channels.extend((0..150).map(|_| random_word(&mut rng, special, 5)));
    // Connection 0 subscribes to every pattern (a repeated one is confirmed again, and
    // delivered once); connection 1 publishes to every channel.
    let mut steps = vec![(
        0,
        std::iter::once("PSUBSCRIBE")
            .chain(patterns.iter().map(String::as_str))
            .collect(),
    )];
    steps.extend(
        channels
            .iter()
            .map(|channel| (1, vec!["PUBLISH", channel.as_str(), "m"])),
    );
    assert_same_pubsub(2, &steps);
}
