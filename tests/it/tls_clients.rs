//! The example servers over TLS (`--tls-cert`/`--tls-key`, feature `tls`) against the TLS
//! clients their users already have: openssl s_client, curl, redis-cli, Python's `ssl`
//! module and swaks. Each test makes its own throwaway PKI (root CA, intermediate, server
//! certificate for `localhost` and 127.0.0.1) with the openssl CLI; the clients trust the
//! root only, so the server must send its chain.

use crate::common::{run_client_with_input, start_example, Example, TempDir, TestPki};

/// `name` serving TLS with `pki`'s chain and key on a free port of 127.0.0.1.
fn start_tls(name: &str, pki: &TestPki, extra: &[&str]) -> Example {
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        &pki.cert,
        "--tls-key",
        &pki.key,
    ];
    args.extend_from_slice(extra);
    start_example(name, &args)
}

const GET_AND_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// `openssl s_client` trusting `ca`, checking the name `localhost`, sending `input`; it
/// reads until the server closes (`-ign_eof`). Returns its status, stdout and stderr.
fn s_client(
    server: &Example,
    ca: &str,
    input: &[u8],
) -> (std::process::ExitStatus, String, String) {
    let connect = server.addr.to_string();
    run_client_with_input(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            ca,
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-verify_return_error",
            "-alpn",
            "http/1.1",
            "-ign_eof",
        ],
        input,
    )
}

#[test]
fn openssl_s_client_verifies_the_chain_and_gets_hello_world() {
    let pki = TestPki::new();
    let server = start_tls("http_hello", &pki, &[]);
    let (status, out, err) = s_client(&server, &pki.ca, GET_AND_CLOSE);
    assert!(status.success(), "s_client failed: {out}\n{err}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}\n{err}");
    assert!(out.contains("Verified peername: localhost"), "{out}");
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    // The server sent its chain: s_client lists the intermediate at depth 1.
    assert!(
        out.contains(" 1 s:CN = reactor-pool test intermediate"),
        "{out}"
    );
    let reply = &out[out
        .find("HTTP/1.1 ")
        .unwrap_or_else(|| panic!("no reply: {out}"))..];
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("Connection: close\r\n"), "{reply}");
    assert!(reply.contains("\r\n\r\nHello, world!"), "{reply}");
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
}

/// curl's arguments for `https://localhost:PORT{path}`, trusting `pki`'s root and
/// resolving `localhost` to the server's address.
fn curl_args(server: &Example, pki: &TestPki, extra: &[&str], paths: &[&str]) -> Vec<String> {
    let port = server.addr.port();
    let mut args: Vec<String> = [
        "-sS",
        "--max-time",
        "30",
        "--cacert",
        &pki.ca,
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
    ]
    .iter()
    .chain(extra)
    .map(|arg| arg.to_string())
    .collect();
    args.extend(
        paths
            .iter()
            .map(|path| format!("https://localhost:{port}{path}")),
    );
    args
}

fn curl(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, out, err) = run_client_with_input("curl", &args, b"");
    assert!(status.success(), "curl {args:?} failed: {out}\n{err}");
    out
}

#[test]
fn curl_gets_posts_and_reuses_a_keep_alive_connection() {
    let pki = TestPki::new();
    let server = start_tls("http_hello", &pki, &["--workers", "2"]);

    let reply = curl(&curl_args(&server, &pki, &["-i"], &["/"]));
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nHello, world!"), "{reply}");

    let echoed = curl(&curl_args(
        &server,
        &pki,
        &["--data-binary", "sent over TLS\n\u{e9}"],
        &["/echo"],
    ));
    assert_eq!(echoed, "sent over TLS\n\u{e9}");

    // Two URLs, one connection: the second transfer made no connection of its own.
    let written =
        "%{http_code} %{http_version} connects=%{num_connects} verify=%{ssl_verify_result}\n";
    let out = curl(&curl_args(
        &server,
        &pki,
        &["-w", written],
        &["/", "/missing"],
    ));
    assert_eq!(
        out,
        "Hello, world!200 1.1 connects=1 verify=0\n\
         Not Found\n404 1.1 connects=0 verify=0\n",
    );
}

#[test]
fn redis_cli_over_tls_sets_gets_and_increments() {
    let (_, help, _) = run_client_with_input("redis-cli", &["--help"], b"");
    assert!(
        help.contains("--tls") && help.contains("--cacert") && help.contains("--sni"),
        "this redis-cli was built without TLS: {help}"
    );
    let pki = TestPki::new();
    let server = start_tls("kv_server", &pki, &[]);
    let port = server.addr.port().to_string();
    // Commands on stdin: one connection, one TLS session.
    let (status, out, err) = run_client_with_input(
        "redis-cli",
        &[
            "--tls",
            "--cacert",
            &pki.ca,
            "--sni",
            "localhost",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ],
        b"SET greeting \"hello over tls\"\nGET greeting\nINCR n\nINCR n\nGET n\nGET missing\n",
    );
    assert!(status.success(), "redis-cli failed: {out}\n{err}");
    assert_eq!(out, "OK\nhello over tls\n1\n2\n2\n\n", "stderr: {err}");
    assert!(err.is_empty(), "{err}");
}

const PYTHON_SSL_SCRIPT: &str = r#"
import json, socket, ssl, sys
port, cafile, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
raw = socket.create_connection(("127.0.0.1", port), timeout=30)
tls = ctx.wrap_socket(raw, server_hostname="localhost")
tls.sendall(b"Hello,server!")
echoed = b""
while len(echoed) < 13:
    chunk = tls.recv(13 - len(echoed))
    if not chunk:
        break
    echoed += chunk
out = {"echoed": echoed.decode(), "version": tls.version()}
# A proper TLS close: our close_notify, then the server's (unwrap() waits for it).
plain = tls.unwrap()
# Then the server closes the TCP connection: an EOF, not a reset (which would raise).
out["after_close_notify"] = plain.recv(100).decode()
plain.close()
print(json.dumps(out))
"#;

#[test]
fn python_ssl_echoes_and_closes_with_close_notify_on_tls_1_3_and_1_2() {
    let pki = TestPki::new();
    let server = start_tls("echo_server", &pki, &[]);
    let port = server.addr.port().to_string();
    for (version, name) in [("TLSv1_3", "TLSv1.3"), ("TLSv1_2", "TLSv1.2")] {
        let (status, out, err) = run_client_with_input(
            "python3",
            &["-c", PYTHON_SSL_SCRIPT, &port, &pki.ca, version],
            b"",
        );
        assert!(
            status.success(),
            "python3 ssl ({version}) failed: {out}\n{err}"
        );
        let out: serde_json::Value = serde_json::from_str(&out).expect("the script's JSON");
        assert_eq!(out["echoed"], "Hello,server!");
        assert_eq!(out["version"], name);
        assert_eq!(
            out["after_close_notify"], "",
            "bytes after the close_notify"
        );
    }
}

#[test]
fn swaks_delivers_over_implicit_tls() {
    let pki = TestPki::new();
    let maildir = TempDir::new("smtps");
    let maildir_arg = maildir.arg("mail");
    let server = start_tls(
        "smtp_server",
        &pki,
        &["--maildir", &maildir_arg, "--hostname", "mx.test"],
    );
    let port = server.addr.port().to_string();
    let (status, out, err) = run_client_with_input(
        "swaks",
        &[
            "--tls-on-connect",
            "--tls-verify",
            "--tls-ca-path",
            &pki.ca,
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--helo",
            "swaks.test",
            "--from",
            "sender@example.org",
            "--to",
            "a@example.org",
            "--header",
            "Subject: via swaks over TLS",
            "--body",
            "sent over TLS",
            "--timeout",
            "30",
        ],
        b"",
    );
    assert!(status.success(), "swaks failed: {out}\n{err}");
    // swaks marks what it says and hears inside TLS with `~`.
    assert!(
        out.contains("=== TLS started with cipher"),
        "no TLS session: {out}"
    );
    assert!(out.contains("<~  220 mx.test ESMTP reactor-pool"), "{out}");
    let id = out
        .lines()
        .find_map(|line| line.strip_prefix("<~  250 2.0.0 OK queued as "))
        .unwrap_or_else(|| panic!("the message was not accepted: {out}"))
        .trim();
    assert!(
        out.contains("<~  221 2.0.0 mx.test closing connection"),
        "{out}"
    );

    let new = maildir.join("mail").join("new");
    let files: Vec<String> = std::fs::read_dir(&new)
        .unwrap_or_else(|e| panic!("read {}: {e}", new.display()))
        .map(|entry| entry.expect("an entry").file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, [id], "one message in new/");
    let stored = std::fs::read_to_string(new.join(id)).expect("read the message");
    assert!(
        stored.starts_with("Return-Path: <sender@example.org>\r\n"),
        "{stored}"
    );
    assert!(
        stored.contains("X-Envelope-To: <a@example.org>\r\n"),
        "{stored}"
    );
    assert!(
        stored.contains("Subject: via swaks over TLS\r\n"),
        "{stored}"
    );
    assert!(stored.contains("\r\n\r\nsent over TLS\r\n"), "{stored}");
}

#[test]
fn s_client_trusting_another_ca_fails_verification() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let server = start_tls("http_hello", &pki, &[]);
    let (status, out, err) = s_client(&server, &other.ca, GET_AND_CLOSE);
    assert!(
        !status.success(),
        "s_client trusted a stranger: {out}\n{err}"
    );
    assert!(
        out.contains("Verify return code: 20 (unable to get local issuer certificate)"),
        "{out}\n{err}"
    );
    assert!(err.contains("certificate verify failed"), "{err}");
    assert!(!out.contains("HTTP/1.1"), "a request went out: {out}");
    // The server shrugs it off: the next client, trusting the right root, is served.
    let (status, out, err) = s_client(&server, &pki.ca, GET_AND_CLOSE);
    assert!(status.success(), "s_client failed: {out}\n{err}");
    assert!(out.contains("Hello, world!"), "{out}");
}

#[test]
fn plaintext_http_to_the_tls_port_is_closed_without_an_http_reply() {
    let pki = TestPki::new();
    let server = start_tls("http_hello", &pki, &[]);
    let port = server.addr.port().to_string();
    // nc keeps reading after its stdin ends, until the server closes (or the deadline of
    // run_client_with_input, well before the server's 60 s idle timeout, fails the test).
    let (status, out, err) = run_client_with_input(
        "nc.openbsd",
        &["127.0.0.1", &port],
        b"GET / HTTP/1.1\r\n\r\n",
    );
    assert!(status.success(), "nc failed: {out}\n{err}");
    assert!(
        !out.contains("HTTP"),
        "an HTTP reply on the TLS port: {out:?}"
    );
    // At most a TLS alert record (content type 21) came back.
    let bytes = out.as_bytes();
    assert!(
        bytes.is_empty() || bytes.first() == Some(&21),
        "not a TLS alert: {bytes:?}"
    );
    // And the port still serves TLS.
    let (status, out, err) = s_client(&server, &pki.ca, GET_AND_CLOSE);
    assert!(status.success(), "s_client failed: {out}\n{err}");
    assert!(out.contains("Hello, world!"), "{out}");
}
