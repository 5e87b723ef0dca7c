//! examples/kv_server against a real redis-server: the same commands to each, over RESP on
//! 127.0.0.1, and the replies compared one by one, error texts included.
//!
//! The cases are the arguments whose parsing kv_server once did its own way: integers
//! (redis-server's string2ll refuses `+5`, `007`, `-0` and spaces, which Rust's `parse`
//! took) in INCR's stored value, SELECT's index and SET's EX and PX; and how SET's options
//! combine (redis-server checks every option word before it reads the one expiry it keeps,
//! the last). Only what kv_server implements as redis-server does is compared: SET's NX,
//! XX, GET, KEEPTTL, EXAT and PXAT only where redis-server refuses the command before it
//! would act on them; where it would not, kv_server gives its own answer (see kv_server.rs's
//! doc), tested in kv_server_regressions.rs.
//!
//! The example's source is included, so its server runs in this process and is always
//! built from the current source. redis-server must be installed: a missing one fails the
//! test, it does not skip it.

use crate::kv_server_sessions::Server as KvServer;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};

use crate::common::{connect, send, wait_until, TempDir, IO_TIMEOUT};
use crate::redis_client::{command, read_resp, Resp};

/// A real redis-server on a free port of 127.0.0.1, without persistence; killed on drop.
/// The pub/sub differential test uses it too.
pub(crate) struct RedisServer {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Its working directory and log, removed after it is killed.
    _dir: TempDir,
}

impl RedisServer {
    pub(crate) fn start() -> Self {
        // The port is free when the listener is dropped; another process may take it before
        // redis-server binds it, which makes redis-server exit: then try another.
        let mut last_log = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(server) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server exited before answering PING, three times; its last log:\n{last_log}")
    }

    /// A started redis-server, or the log of one that exited before answering PING.
    fn try_start() -> Result<Self, String> {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port on 127.0.0.1");
        let dir = TempDir::new("redis");
        let log = dir.join("redis.log");
        let port = addr.port().to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(&dir.0)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); scripts/test.sh installs it with apt-get")
            });
        let mut server = RedisServer {
            child,
            addr,
            _dir: dir,
        };
        let exited = wait_until("redis-server to answer PING", || {
            if server.child.try_wait().expect("try_wait").is_some() {
                return Some(true);
            }
            server.pings().then_some(false)
        });
        if exited {
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        }
        Ok(server)
    }

    /// Whether a new connection's PING gets PONG (false while redis-server is starting).
    fn pings(&self) -> bool {
        let Ok(mut client) = TcpStream::connect(self.addr) else {
            return false;
        };
        let mut reply = [0u8; 7];
        client.set_read_timeout(Some(IO_TIMEOUT)).is_ok()
            && client.write_all(b"PING\r\n").is_ok()
            && client.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection that sends a command as redis-cli encodes it and reads its one reply.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Client {
            reader: BufReader::new(connect(addr)),
        }
    }

    fn call(&mut self, args: &[&str]) -> Resp {
        send(self.reader.get_mut(), &command(args));
        read_resp(&mut self.reader)
    }
}

/// Sends each of `commands` to redis-server and to kv_server, on one connection to each,
/// and fails listing every command whose replies differ.
fn assert_same_replies(commands: &[Vec<&str>]) {
    let redis = RedisServer::start();
    let kv = KvServer::start();
    let (mut to_redis, mut to_kv) = (Client::new(redis.addr), Client::new(kv.addr()));
    let differences: Vec<String> = commands
        .iter()
        .filter_map(|args| {
            let (expected, got) = (to_redis.call(args), to_kv.call(args));
            (expected != got)
                .then(|| format!("{args:?}: redis-server {expected:?}, kv_server {got:?}"))
        })
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} replies differ:\n{}",
        differences.len(),
        commands.len(),
        differences.join("\n")
    );
}

#[test]
fn kv_incr_parses_stored_integers_like_redis() {
    let mut commands = Vec::new();
    for value in [
        "+5",
        "-5",
        "007",
        "0",
        "-0",
        "00",
        "-007",
        "-",
        " 5",
        "5 ",
        "5\n",
        "",
        "1e3",
        "0x5",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999",
    ] {
        // INCR answers with the value it read plus one, or refuses it; GET shows that a
        // refused value is left as it was.
        commands.push(vec!["SET", "n", value]);
        commands.push(vec!["INCR", "n"]);
        commands.push(vec!["GET", "n"]);
    }
    // The largest i64, reached by INCR, then past it.
    commands.push(vec!["SET", "n", "9223372036854775806"]);
    commands.push(vec!["INCR", "n"]);
    commands.push(vec!["INCR", "n"]);
    commands.push(vec!["GET", "n"]);
    assert_same_replies(&commands);
}

#[test]
fn kv_select_parses_its_index_like_redis() {
    let mut commands = vec![vec!["SET", "where", "db0"]];
    for index in [
        "+1",
        "01",
        "-1",
        "-0",
        "00",
        "16",
        "",
        " 1",
        "1 ",
        "1e0",
        "99999999999999999999",
        "1",
        "0",
        "15",
    ] {
        // GET shows which database the connection is in afterwards.
        commands.push(vec!["SELECT", index]);
        commands.push(vec!["GET", "where"]);
    }
    assert_same_replies(&commands);
}

#[test]
fn kv_set_parses_ex_and_px_values_like_redis() {
    let mut commands = Vec::new();
    // Each expiry is long enough for GET to see the key before it expires; PX 10 could
    // expire in one server and not the other, so it is sent without the GET.
    for unit in ["EX", "PX", "ex", "px", "Ex", "pX"] {
        for amount in [
            "+100",
            "0",
            "-0",
            "-1",
            "100000",
            "0100000",
            "1e3",
            "abc",
            "",
            " 100000",
            "9223372036854775808",
        ] {
            // SET over an old value, then GET: a refused SET leaves the old value.
            commands.push(vec!["SET", "k", "old"]);
            commands.push(vec!["SET", "k", "new", unit, amount]);
            commands.push(vec!["GET", "k"]);
        }
        commands.push(vec!["SET", "k", "new", unit, "10"]);
    }
    assert_same_replies(&commands);
}

#[test]
fn kv_set_options_combine_like_redis() {
    let mut commands = Vec::new();
    for options in [
        // EX with PX, in either order, whatever their values.
        &["EX", "100", "PX", "100000"][..],
        &["PX", "100000", "EX", "100"],
        &["ex", "100", "px", "100000"],
        &["EX", "abc", "PX", "100000"],
        &["EX", "100", "PX", "abc"],
        &["EX", "0", "PX", "100000"],
        // The same one twice: the last is read, the first never is.
        &["EX", "100", "EX", "200"],
        &["PX", "100000", "PX", "200000"],
        &["EX", "abc", "EX", "100"],
        &["EX", "0", "EX", "100"],
        &["EX", "100", "EX", "0"],
        &["EX", "100", "EX", "abc"],
        &["EX", "100", "ex", "+5"],
        // A missing value.
        &["EX"],
        &["PX"],
        &["EX", "100", "PX"],
        &["EX", "100", "EX"],
        &["EX", "abc", "EX"],
        // Words that are no option.
        &["FOO"],
        &["FOO", "100"],
        &["EX", "100", "FOO"],
        &["EX", "abc", "FOO"],
        &["EX", "0", "FOO"],
        &["EX", "100", "100"],
        &["EXX", "100"],
        &["E", "100"],
        // Options kv_server does not implement, where redis-server refuses the command
        // before it would act on them: a combination it calls a syntax error, or an EX or
        // PX value it refuses.
        &["EX", "100", "KEEPTTL"],
        &["KEEPTTL", "EX", "100"],
        &["EX", "abc", "KEEPTTL"],
        &["KEEPTTL", "PX", "0"],
        &["NX", "XX"],
        &["XX", "EX", "100", "NX"],
        &["EX", "100", "EXAT", "100"],
        &["PXAT", "100", "EX", "abc"],
        &["EXAT", "100", "PXAT", "100"],
        &["NX", "EX"],
        &["GET", "FOO"],
        &["EX", "abc", "NX"],
        &["NX", "EX", "abc"],
        &["GET", "PX", "0"],
        &["XX", "GET", "EX", "+100"],
    ] {
        // SET over an old value, then GET: a refused SET leaves the old value.
        let mut set = vec!["SET", "k", "new"];
        set.extend_from_slice(options);
        commands.extend([vec!["SET", "k", "old"], set, vec!["GET", "k"]]);
    }
    assert_same_replies(&commands);
}
