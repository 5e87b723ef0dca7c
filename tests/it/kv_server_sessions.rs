//! examples/kv_server's per-connection sessions over real sockets on 127.0.0.1: commands of
//! one connection in order, SELECT, AUTH with `--requirepass`, MULTI / EXEC / DISCARD, CLIENT
//! SETNAME / GETNAME, and sessions kept apart between connections.
//!
//! Most tests include the example's source, so its server runs in this process and is built
//! from the current source; the ones that drive redis-cli run the example binary (`cargo
//! build --examples` first when running this file alone). The exact replies expected are
//! what redis-server 7.0 answers to the same bytes, except the text after
//! `-ERR unknown command`.

use crate::common;
use crate::kv_server;

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crate::common::{connect, read_to_eof, run_client, send, start_example, Example};
use crate::redis_client::{cli, cli_stdin, command, expect, int_of, ok, queued, read_resp, Resp};
use reactor_pool::ServerHandle;

/// The example's server in this process; dropping it shuts the server down (the handle
/// does), also when a test fails. The differential test against redis-server uses it too.
pub(crate) struct Server(ServerHandle);

impl Server {
    pub(crate) fn start() -> Self {
        Self::with_password(None)
    }

    fn with_password(password: Option<&str>) -> Self {
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let password = password.map(str::to_string);
        Server(kv_server::start_with_password(addr, None, None, password).expect("start kv_server"))
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.0.local_addr().tcp().expect("a TCP server")
    }
}

/// One connection pipelines `DEL k` and 5,000 `SET k i` / `GET k` pairs in one write: each
/// GET must see the SET just before it. Commands of one connection run one after another in
/// arrival order; were they spread over the workers at once (Mode::Concurrent), a
/// GET would overtake its SET or a later one.
#[test]
fn pipelined_set_get_pairs_read_their_own_writes() {
    let server = Server::start();
    let client = connect(server.addr());
    let pairs = 5_000;
    let mut requests = command(&["DEL", "k"]);
    for i in 0..pairs {
        requests.extend_from_slice(&command(&["SET", "k", &i.to_string()]));
        requests.extend_from_slice(&command(&["GET", "k"]));
    }
    // Written from another thread, so the replies are read while it writes: neither side
    // waits on a full socket buffer.
    let mut writer = client.try_clone().expect("clone the client socket");
    let sending = thread::spawn(move || writer.write_all(&requests));

    let mut replies = BufReader::new(client);
    assert_eq!(read_resp(&mut replies), Resp::Int(0), "DEL k");
    let mut stale = Vec::new();
    for i in 0..pairs {
        assert_eq!(read_resp(&mut replies), ok(), "SET k {i}");
        let got = read_resp(&mut replies);
        if got != Resp::Bulk(Some(i.to_string())) {
            stale.push((i, got));
        }
    }
    sending.join().expect("writer").expect("send the pipeline");
    assert!(
        stale.is_empty(),
        "{} of {pairs} GETs did not return the SET before them, first ones (i, reply): {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
}

#[test]
fn select_gives_each_connection_its_own_database() {
    let server = Server::start();
    let mut a = connect(server.addr());
    let mut b = connect(server.addr());
    expect(
        &mut a,
        "SELECT 3\r\nSET k three\r\nGET k\r\n",
        "+OK\r\n+OK\r\n$5\r\nthree\r\n",
    );
    // B never selected: database 0, where k does not exist.
    expect(&mut b, "GET k\r\nEXISTS k\r\n", "$-1\r\n:0\r\n");
    expect(
        &mut a,
        "SELECT 0\r\nGET k\r\nSET k zero\r\n",
        "+OK\r\n$-1\r\n+OK\r\n",
    );
    expect(&mut b, "GET k\r\n", "$4\r\nzero\r\n");
    expect(
        &mut b,
        "SELECT 3\r\nGET k\r\nINCR n\r\n",
        "+OK\r\n$5\r\nthree\r\n:1\r\n",
    );
    // Every command acts on the selected database: B's INCR went to 3, A is on 0.
    expect(
        &mut a,
        "MGET k n\r\nDEL n\r\n",
        "*2\r\n$4\r\nzero\r\n$-1\r\n:0\r\n",
    );
    expect(&mut b, "MSET x 1 y 2\r\nDEL n x\r\n", "+OK\r\n:2\r\n");
    expect(
        &mut a,
        "EXISTS y\r\nSELECT 3\r\nEXISTS y\r\n",
        ":0\r\n+OK\r\n:1\r\n",
    );
    // 16 databases, as redis-server: 0 to 15.
    expect(
        &mut a,
        "SELECT 15\r\nSELECT 16\r\nSELECT -1\r\nSELECT one\r\nSELECT\r\nGET y\r\n",
        "+OK\r\n-ERR DB index is out of range\r\n-ERR DB index is out of range\r\n\
         -ERR value is not an integer or out of range\r\n\
         -ERR wrong number of arguments for 'select' command\r\n$-1\r\n",
    );
}

#[test]
fn redis_cli_n_selects_a_database() {
    let server = start_example("kv_server", &["--addr", "127.0.0.1:0"]);
    assert_eq!(cli(&server, &["-n", "3", "SET", "k", "in3"]), "OK");
    assert_eq!(cli(&server, &["-n", "3", "GET", "k"]), "in3");
    assert_eq!(cli(&server, &["GET", "k"]), "");
    assert_eq!(cli(&server, &["-n", "0", "SET", "k", "in0"]), "OK");
    assert_eq!(cli(&server, &["-n", "3", "GET", "k"]), "in3");
    assert_eq!(cli(&server, &["-n", "15", "EXISTS", "k"]), "0");
}

#[test]
fn requirepass_refuses_commands_until_auth() {
    let server = Server::with_password(Some("s3cret"));
    let mut client = connect(server.addr());
    let noauth = "-NOAUTH Authentication required.\r\n";
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    for request in [
        "PING",
        "GET k",
        "SET k v",
        "SELECT 1",
        "MULTI",
        "DISCARD",
        "CLIENT GETNAME",
    ] {
        expect(&mut client, &format!("{request}\r\n"), noauth);
    }
    expect(
        &mut client,
        "EXEC\r\n",
        "-EXECABORT Transaction discarded because of: NOAUTH Authentication required.\r\n",
    );
    // As redis-server: unknown commands and wrong arity are reported before NOAUTH.
    expect(&mut client, "NOPE\r\n", "-ERR unknown command 'NOPE'\r\n");
    expect(
        &mut client,
        "GET\r\n",
        "-ERR wrong number of arguments for 'get' command\r\n",
    );
    expect(
        &mut client,
        "AUTH wrong\r\nPING\r\n",
        &format!("{wrongpass}{noauth}"),
    );
    expect(
        &mut client,
        "AUTH S3CRET\r\nAUTH s3cre\r\n",
        &wrongpass.repeat(2),
    );
    expect(&mut client, "AUTH other s3cret\r\n", wrongpass);
    expect(&mut client, "AUTH a b c\r\n", "-ERR syntax error\r\n");
    expect(&mut client, "AUTH s3cret\r\nPING\r\n", "+OK\r\n+PONG\r\n");
    // A failed AUTH later leaves the connection authenticated, as in redis-server.
    expect(
        &mut client,
        "AUTH wrong\r\nGET k\r\n",
        &format!("{wrongpass}$-1\r\n"),
    );

    let mut other = connect(server.addr());
    expect(&mut other, "PING\r\n", noauth);
    expect(
        &mut other,
        "AUTH default s3cret\r\nPING\r\n",
        "+OK\r\n+PONG\r\n",
    );
    // QUIT needs no AUTH.
    let mut quitter = connect(server.addr());
    expect(&mut quitter, "QUIT\r\n", "+OK\r\n");
    assert_eq!(read_to_eof(&mut quitter).expect("a clean close"), b"");
}

#[test]
fn auth_without_requirepass_answers_like_redis() {
    let server = Server::start();
    let mut client = connect(server.addr());
    expect(
        &mut client,
        "AUTH x\r\n",
        "-ERR AUTH <password> called without any password configured for the default user. \
         Are you sure your configuration is correct?\r\n",
    );
    // The default user has no password: any is accepted in the two-argument form.
    expect(
        &mut client,
        "AUTH default x\r\nPING\r\n",
        "+OK\r\n+PONG\r\n",
    );
    expect(
        &mut client,
        "AUTH other x\r\n",
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
}

#[test]
fn redis_cli_a_authenticates_with_requirepass() {
    let server = start_example(
        "kv_server",
        &["--addr", "127.0.0.1:0", "--requirepass", "pw"],
    );
    assert_eq!(cli(&server, &["PING"]), "NOAUTH Authentication required.");
    assert_eq!(cli(&server, &["-a", "pw", "PING"]), "PONG");
    assert_eq!(
        cli(&server, &["-a", "pw", "-n", "2", "SET", "k", "v"]),
        "OK"
    );
    assert_eq!(cli(&server, &["-a", "pw", "-n", "2", "GET", "k"]), "v");
    // redis-cli reports the failed AUTH on stderr and sends the command anyway.
    let port = server.addr.port().to_string();
    let (_, out, err) = run_client("redis-cli", &["-p", &port, "-a", "nope", "PING"]);
    assert_eq!(out.trim_end(), "NOAUTH Authentication required.");
    assert!(
        err.contains("AUTH failed: WRONGPASS invalid username-password pair"),
        "{err}"
    );
}

/// `--requirepass` needs a value, and flags nobody takes are still refused: kv_server exits
/// with a failure instead of serving.
#[test]
fn kv_server_flags_are_still_checked() {
    for args in [&["--requirepass"][..], &["--bogus", "1"][..]] {
        let child = Command::new(common::example_path("kv_server"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kv_server");
        // Killed on drop, should it serve after all.
        let mut server = Example {
            child,
            addr: "127.0.0.1:0".parse().expect("an address"),
        };
        let status = common::wait_until("kv_server to exit", || {
            server.child.try_wait().expect("try_wait")
        });
        assert!(!status.success(), "kv_server {args:?} should fail");
    }
}

#[test]
fn multi_exec_discard_over_a_raw_socket() {
    let server = Server::start();
    let mut client = connect(server.addr());
    // Queued, then run together; a nested MULTI is an error that keeps the transaction.
    expect(
        &mut client,
        "MULTI\r\nMULTI\r\nSET a 1\r\nINCR a\r\nEXEC\r\n",
        "+OK\r\n-ERR MULTI calls can not be nested\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:2\r\n",
    );
    expect(
        &mut client,
        "EXEC\r\nDISCARD\r\nMULTI\r\nSET a 5\r\nDISCARD\r\nGET a\r\n",
        "-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n+OK\r\n+QUEUED\r\n+OK\r\n\
         $1\r\n2\r\n",
    );
    // An unknown command or a wrong arity while queueing discards the transaction.
    expect(
        &mut client,
        "MULTI\r\nNOPE\r\nSET a 9\r\nEXEC\r\nMULTI\r\nGET\r\nEXEC\r\nGET a\r\n",
        "+OK\r\n-ERR unknown command 'NOPE'\r\n+QUEUED\r\n\
         -EXECABORT Transaction discarded because of previous errors.\r\n+OK\r\n\
         -ERR wrong number of arguments for 'get' command\r\n\
         -EXECABORT Transaction discarded because of previous errors.\r\n$1\r\n2\r\n",
    );
    // An error met when EXEC runs a command is that command's reply; the others run.
    expect(
        &mut client,
        "MULTI\r\nSET s x\r\nINCR s\r\nMSET a 1 b\r\nGET s\r\nEXEC\r\n",
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*4\r\n+OK\r\n\
         -ERR value is not an integer or out of range\r\n\
         -ERR wrong number of arguments for 'mset' command\r\n$1\r\nx\r\n",
    );
    // SELECT inside a transaction applies to the commands after it, and stays.
    expect(
        &mut client,
        "MULTI\r\nSELECT 2\r\nSET q 1\r\nSELECT 99\r\nEXEC\r\nGET q\r\nSELECT 0\r\nGET q\r\n",
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n+OK\r\n\
         -ERR DB index is out of range\r\n$1\r\n1\r\n+OK\r\n$-1\r\n",
    );
    expect(&mut client, "MULTI\r\nEXEC\r\n", "+OK\r\n*0\r\n");
    // QUIT is not queued: it closes, and the queued SET never runs.
    expect(
        &mut client,
        "MULTI\r\nSET gone 1\r\nQUIT\r\n",
        "+OK\r\n+QUEUED\r\n+OK\r\n",
    );
    assert_eq!(read_to_eof(&mut client).expect("a clean close"), b"");
    let mut check = connect(server.addr());
    expect(&mut check, "EXISTS gone\r\n", ":0\r\n");
}

#[test]
fn multi_exec_with_redis_cli() {
    let server = start_example("kv_server", &["--addr", "127.0.0.1:0"]);
    let input = "MULTI\nSET a 1\nINCR a\nEXEC\nEXEC\nDISCARD\nMULTI\nMULTI\nSET b 1\nDISCARD\n\
                 GET b\nMULTI\nGET\nEXEC\nGET a\n";
    // What redis-cli 7.0 prints for the same input against redis-server 7.0 (an error line
    // is followed by an empty one, a nil by an empty one).
    let expected =
        "OK\nQUEUED\nQUEUED\nOK\n2\nERR EXEC without MULTI\n\nERR DISCARD without MULTI\n\n\
                    OK\nERR MULTI calls can not be nested\n\nQUEUED\nOK\n\nOK\n\
                    ERR wrong number of arguments for 'get' command\n\n\
                    EXECABORT Transaction discarded because of previous errors.\n\n2\n";
    assert_eq!(cli_stdin(&server, &[], input), expected);
}

/// While one connection's EXEC runs, no other connection's command runs: neither another
/// transaction (which would see `a` incremented and `b` not yet) nor an ordinary SET
/// (which would land between a transaction's SET and GET).
#[test]
fn exec_is_atomic_with_respect_to_other_connections() {
    let server = Server::start();
    let addr = server.addr();
    let transactions = 100;
    // Commands between the two halves of each transaction, to widen any gap between them.
    let padding = "INCR pad\r\n".repeat(100);
    let done = AtomicBool::new(false);
    thread::scope(|scope| {
        // Readers: `a` and `b` read together must be equal.
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let client = connect(addr);
                    let mut writer = client.try_clone().expect("clone");
                    let mut replies = BufReader::new(client);
                    let mut seen = 0;
                    while !done.load(Ordering::Acquire) {
                        send(&mut writer, b"MULTI\r\nGET a\r\nGET b\r\nEXEC\r\n");
                        assert_eq!(read_resp(&mut replies), ok());
                        assert_eq!(read_resp(&mut replies), queued());
                        assert_eq!(read_resp(&mut replies), queued());
                        let Resp::Array(values) = read_resp(&mut replies) else {
                            panic!("EXEC's reply is an array");
                        };
                        let (a, b) = (int_of(&values[0]), int_of(&values[1]));
                        assert_eq!(a, b, "a transaction saw half of another");
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        // An ordinary SET hammering `x` between the transactions' SET x and GET x.
        let hammer = scope.spawn(|| {
            let mut client = connect(addr);
            while !done.load(Ordering::Acquire) {
                expect(&mut client, "SET x other\r\n", "+OK\r\n");
            }
        });
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let padding = &padding;
                scope.spawn(move || {
                    let client = connect(addr);
                    let mut writer = client.try_clone().expect("clone");
                    let mut replies = BufReader::new(client);
                    let mine = format!("mine{w}");
                    for _ in 0..transactions {
                        let request = format!(
                            "MULTI\r\nINCR a\r\nSET x {mine}\r\n{padding}GET x\r\nINCR b\r\nEXEC\r\n"
                        );
                        send(&mut writer, request.as_bytes());
                        assert_eq!(read_resp(&mut replies), ok(), "MULTI");
                        for _ in 0..104 {
                            assert_eq!(read_resp(&mut replies), queued());
                        }
                        let Resp::Array(values) = read_resp(&mut replies) else {
                            panic!("EXEC's reply is an array");
                        };
                        assert_eq!(values.len(), 104);
                        assert_eq!(
                            values[102],
                            Resp::Bulk(Some(mine.clone())),
                            "another connection's SET ran inside EXEC"
                        );
                    }
                })
            })
            .collect();
        // Every writer is joined before `done` is set, even if one failed, so the readers
        // and the hammer stop either way.
        let written: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
        done.store(true, Ordering::Release);
        hammer.join().expect("hammer");
        for reader in readers {
            assert!(
                reader.join().expect("reader") > 0,
                "a reader saw no transaction"
            );
        }
        for result in written {
            result.expect("writer");
        }
    });
    let mut client = connect(addr);
    let total = 2 * transactions;
    expect(
        &mut client,
        "MGET a b\r\n",
        &format!(
            "*2\r\n${len}\r\n{total}\r\n${len}\r\n{total}\r\n",
            len = total.to_string().len()
        ),
    );
}

#[test]
fn client_setname_getname_per_connection() {
    let server = Server::start();
    let mut a = connect(server.addr());
    let mut b = connect(server.addr());
    expect(&mut a, "CLIENT GETNAME\r\n", "$-1\r\n");
    expect(
        &mut a,
        "CLIENT SETNAME alice\r\nclient getname\r\n",
        "+OK\r\n$5\r\nalice\r\n",
    );
    expect(&mut b, "CLIENT GETNAME\r\n", "$-1\r\n");
    expect(&mut b, "CLIENT SETNAME bob\r\n", "+OK\r\n");
    expect(&mut a, "CLIENT GETNAME\r\n", "$5\r\nalice\r\n");
    expect(&mut b, "CLIENT GETNAME\r\n", "$3\r\nbob\r\n");
    // Errors leave the name as it was; an empty name clears it.
    expect(
        &mut a,
        "*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$3\r\na b\r\nCLIENT SETNAME\r\nCLIENT GETNAME x\r\n\
         CLIENT NOPE\r\nCLIENT\r\nCLIENT GETNAME\r\n",
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n\
         -ERR wrong number of arguments for 'client|setname' command\r\n\
         -ERR wrong number of arguments for 'client|getname' command\r\n\
         -ERR unknown subcommand 'NOPE'. Try CLIENT HELP.\r\n\
         -ERR wrong number of arguments for 'client' command\r\n$5\r\nalice\r\n",
    );
    expect(
        &mut a,
        "*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$0\r\n\r\nCLIENT GETNAME\r\n",
        "+OK\r\n$-1\r\n",
    );
    expect(&mut b, "CLIENT GETNAME\r\n", "$3\r\nbob\r\n");
    // Queued in a transaction, it takes effect at EXEC.
    expect(
        &mut a,
        "MULTI\r\nCLIENT SETNAME later\r\nCLIENT GETNAME\r\nEXEC\r\n",
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n$5\r\nlater\r\n",
    );
    assert_eq!(
        cli_stdin(
            &start_example("kv_server", &["--addr", "127.0.0.1:0"]),
            &[],
            "CLIENT GETNAME\nCLIENT SETNAME me\nCLIENT GETNAME\n",
        ),
        "\nOK\nme\n"
    );
}

/// Everything a session holds (authentication, database, name, transaction) belongs to
/// its connection alone, and a new connection starts afresh.
#[test]
fn sessions_are_isolated_between_connections() {
    let server = Server::with_password(Some("pw"));
    let noauth = "-NOAUTH Authentication required.\r\n";
    let mut a = connect(server.addr());
    let mut b = connect(server.addr());
    expect(
        &mut a,
        "AUTH pw\r\nSELECT 5\r\nCLIENT SETNAME a\r\nMULTI\r\nSET k from-a\r\n",
        "+OK\r\n+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n",
    );
    // A's AUTH did not authenticate B.
    expect(&mut b, "GET k\r\n", noauth);
    expect(&mut b, "AUTH pw\r\n", "+OK\r\n");
    // Nor did A's SELECT, SETNAME or MULTI reach B: B's SET runs at once, on database 0.
    expect(
        &mut b,
        "CLIENT GETNAME\r\nSET k from-b\r\nEXEC\r\nDISCARD\r\n",
        "$-1\r\n+OK\r\n-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n",
    );
    // A's transaction was untouched by B, and runs on A's database.
    expect(&mut a, "EXEC\r\nGET k\r\n", "*1\r\n+OK\r\n$6\r\nfrom-a\r\n");
    expect(&mut b, "GET k\r\n", "$6\r\nfrom-b\r\n");
    // B's MULTI leaves A outside any transaction.
    expect(&mut b, "MULTI\r\n", "+OK\r\n");
    expect(
        &mut a,
        "SET k again\r\nEXEC\r\n",
        "+OK\r\n-ERR EXEC without MULTI\r\n",
    );
    expect(&mut b, "DISCARD\r\n", "+OK\r\n");

    // A new connection gets a fresh session, whatever the closed one had.
    expect(&mut a, "QUIT\r\n", "+OK\r\n");
    assert_eq!(read_to_eof(&mut a).expect("a clean close"), b"");
    let mut c = connect(server.addr());
    expect(&mut c, "CLIENT GETNAME\r\n", noauth);
    expect(
        &mut c,
        "AUTH pw\r\nCLIENT GETNAME\r\nGET k\r\nEXEC\r\n",
        "+OK\r\n$-1\r\n$6\r\nfrom-b\r\n-ERR EXEC without MULTI\r\n",
    );
}

#[test]
fn unknown_commands_keep_the_connection_open() {
    let server = Server::with_password(Some("pw"));
    let mut client = connect(server.addr());
    let unknown = "-ERR unknown command 'FLY'\r\n";
    expect(
        &mut client,
        "FLY\r\nAUTH pw\r\n",
        &format!("{unknown}+OK\r\n"),
    );
    expect(
        &mut client,
        "FLY away\r\nPING\r\n",
        &format!("{unknown}+PONG\r\n"),
    );
    expect(
        &mut client,
        "MULTI\r\nFLY\r\nEXEC\r\nPING\r\n",
        &format!(
            "+OK\r\n{unknown}-EXECABORT Transaction discarded because of previous errors.\r\n\
             +PONG\r\n"
        ),
    );
}
