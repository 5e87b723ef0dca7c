//! examples/http_hello's static file route (`--root DIR`, `/files/...`, bodies sent as file
//! regions with sendfile(2)) and its streamed route (`/stream?bytes=N`, chunked for HTTP/1.1,
//! raw then a close for HTTP/1.0), against real clients run as processes (curl, wget,
//! sha256sum) and raw sockets.
//!
//! Most tests run the example's server in this process (its source is included, so it is
//! always the current one, and its stats can be read); the wget test runs the example binary
//! with `--root`. Downloads are checked with sha256sum against the file (or against the
//! documented stream bytes).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use reactor_pool::ServerHandle;

use crate::common::{
    assert_same_bytes, connect, expect_clean_eof, read_exactly, run_client_with_input, send,
    start_example, start_example_unix, wait_for_stats, Pattern, TempDir,
};
use crate::http_hello;

/// The example's server in this process, serving `root`; shut down when dropped.
struct Server {
    handle: Option<ServerHandle>,
    addr: SocketAddr,
}

impl Server {
    fn start(root: &Path) -> Self {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let handle = http_hello::start(addr, Some(2), Some(1), Some(root)).expect("start");
        let addr = handle.local_addr().tcp().expect("a TCP address");
        Server {
            handle: Some(handle),
            addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("running")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
        }
    }
}

/// A temp dir holding `root/` (what is served) and `outside/` beside it, with
/// `root/big.bin`: `len` deterministic bytes.
struct Files {
    dir: TempDir,
    root: PathBuf,
    big: Vec<u8>,
}

impl Files {
    fn new(what: &str, len: usize) -> Self {
        let dir = TempDir::new(what);
        let root = dir.join("root");
        std::fs::create_dir_all(&root).expect("create root");
        std::fs::create_dir_all(dir.join("outside")).expect("create outside");
        let big = Pattern::new().bytes(0, len);
        std::fs::write(root.join("big.bin"), &big).expect("write big.bin");
        Files { dir, root, big }
    }

    /// `name` in the temp dir (not in the root), as a command-line argument.
    fn out(&self, name: &str) -> String {
        self.dir.arg(name)
    }

    fn big_path(&self) -> PathBuf {
        self.root.join("big.bin")
    }
}

/// How long a client may run before the test counts it as a hang (curl's `--max-time`).
const CLIENT_MAX_SECS: &str = "60";

/// Runs curl with `args` (and `-sS --max-time`), returning its status, stdout and stderr.
fn curl(args: &[&str]) -> (ExitStatus, String, String) {
    let mut all = vec!["-sS", "--max-time", CLIENT_MAX_SECS];
    all.extend_from_slice(args);
    run_client_with_input("curl", &all, b"")
}

/// curl's status code for `url` (with `extra` arguments), its body saved to `body`.
fn curl_code(extra: &[&str], url: &str, body: &str) -> (String, Vec<u8>) {
    let mut args = vec!["-o", body, "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let (status, code, err) = curl(&args);
    assert!(status.success(), "curl {args:?} failed: {err}");
    (code, std::fs::read(body).unwrap_or_default())
}

/// The sha256 of `bytes`, as sha256sum prints it.
fn sha256(bytes: &[u8]) -> String {
    let (status, out, err) = run_client_with_input("sha256sum", &["-b", "-"], bytes);
    assert!(status.success(), "sha256sum failed: {err}");
    out.split_whitespace().next().expect("a digest").to_owned()
}

/// The sha256 of the file at `path`.
fn sha256_file(path: &str) -> String {
    let (status, out, err) = run_client_with_input("sha256sum", &["-b", path], b"");
    assert!(status.success(), "sha256sum {path} failed: {err}");
    out.split_whitespace().next().expect("a digest").to_owned()
}

/// The header `name` (case-insensitive) in `head`, a response head as curl's `-D` saves it.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// What `GET /stream?bytes=N` is documented to send: this line repeated, cut at N bytes.
const STREAM_LINE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n";

fn stream_bytes(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| STREAM_LINE[i % STREAM_LINE.len()])
        .collect()
}

/// Decodes an HTTP/1.1 chunked body that must end with its last chunk and nothing after it;
/// returns the data and the number of data chunks.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, usize) {
    let mut data = Vec::new();
    let mut chunks = 0;
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("a chunk size line after {} bytes of data", data.len()));
        let size = std::str::from_utf8(&raw[..line_end]).expect("an ASCII chunk size");
        let size =
            usize::from_str_radix(size, 16).unwrap_or_else(|e| panic!("chunk size {size:?}: {e}"));
        raw = &raw[line_end + 2..];
        if size == 0 {
            assert_eq!(raw, b"\r\n", "the last chunk ends the body");
            return (data, chunks);
        }
        assert!(raw.len() >= size + 2, "a chunk of {size} bytes cut short");
        data.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n", "CRLF after a chunk's data");
        raw = &raw[size + 2..];
        chunks += 1;
    }
}

const BIG: usize = 4 * 1024 * 1024 + 321;

#[test]
fn curl_downloads_a_file_whole_intact() {
    let files = Files::new("files-whole", BIG);
    let server = Server::start(&files.root);
    let (out, head) = (files.out("got"), files.out("head"));
    let url = server.url("/files/big.bin");
    let (status, _, err) = curl(&["-D", &head, "-o", &out, &url]);
    assert!(status.success(), "curl failed: {err}");
    let head = std::fs::read_to_string(&head).expect("the head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        header(&head, "content-length"),
        Some(BIG.to_string().as_str())
    );
    assert_eq!(
        header(&head, "content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(sha256_file(&out), sha256(&files.big), "the downloaded file");
    // A text file gets its type.
    std::fs::write(files.root.join("note.txt"), "a note\n").expect("write note.txt");
    let (status, body, err) = curl(&["-i", &server.url("/files/note.txt")]);
    assert!(status.success(), "curl failed: {err}");
    assert!(
        body.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"),
        "{body}"
    );
    assert!(body.ends_with("\r\n\r\na note\n"), "{body}");
}

#[test]
fn curl_ranges_get_206_with_the_bytes_asked_for() {
    let files = Files::new("files-range", BIG);
    let server = Server::start(&files.root);
    let url = server.url("/files/big.bin");
    let len = BIG as u64;
    // curl's -r, the range asked for, and the bytes it names.
    let cases: [(&str, u64, u64); 5] = [
        ("1000-1999", 1000, 1999),
        ("1048576-", 1_048_576, len - 1),
        ("-5000", len - 5000, len - 1),
        ("0-0", 0, 0),
        // The end past the file's is cut to it.
        ("4194000-9999999", 4_194_000, len - 1),
    ];
    for (range, first, last) in cases {
        let (out, head) = (files.out("part"), files.out("head"));
        let (status, _, err) = curl(&["-r", range, "-D", &head, "-o", &out, &url]);
        assert!(status.success(), "curl -r {range} failed: {err}");
        let head = std::fs::read_to_string(&head).expect("the head");
        assert!(
            head.starts_with("HTTP/1.1 206 Partial Content\r\n"),
            "{range}: {head}"
        );
        let content_range = format!("bytes {first}-{last}/{len}");
        assert_eq!(
            header(&head, "content-range"),
            Some(content_range.as_str()),
            "{range}"
        );
        let part = &files.big[first as usize..=last as usize];
        assert_eq!(
            header(&head, "content-length"),
            Some(part.len().to_string().as_str()),
            "{range}"
        );
        assert_eq!(sha256_file(&out), sha256(part), "the bytes of -r {range}");
    }
    // Several ranges: the whole file, 200.
    let (code, body) = curl_code(&["-r", "0-9,100-109"], &url, &files.out("multi"));
    assert_eq!(code, "200");
    assert_eq!(sha256(&body), sha256(&files.big), "several ranges");
}

#[test]
fn an_unsatisfiable_range_gets_416_with_the_length() {
    let files = Files::new("files-416", BIG);
    let server = Server::start(&files.root);
    let url = server.url("/files/big.bin");
    for range in [format!("{BIG}-"), format!("{}-{}", BIG + 10, BIG + 20)] {
        let head = files.out("head");
        let (code, body) = curl_code(&["-r", &range, "-D", &head], &url, &files.out("body"));
        assert_eq!(code, "416", "-r {range}");
        let head = std::fs::read_to_string(&head).expect("the head");
        let expected = format!("bytes */{BIG}");
        assert_eq!(
            header(&head, "content-range"),
            Some(expected.as_str()),
            "{head}"
        );
        assert!(body.len() < 100, "-r {range}: no file in a 416");
    }
    // The last 0 bytes: curl sends `bytes=-0` as it is.
    let (code, _) = curl_code(&["-H", "Range: bytes=-0"], &url, &files.out("body"));
    assert_eq!(code, "416", "bytes=-0");
}

#[test]
fn head_gives_the_length_and_no_body() {
    let files = Files::new("files-head", BIG);
    std::fs::write(files.root.join("small.txt"), "small\n").expect("write small.txt");
    let server = Server::start(&files.root);
    let (status, head, err) = curl(&["-I", &server.url("/files/big.bin")]);
    assert!(status.success(), "curl -I failed: {err}");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        header(&head, "content-length"),
        Some(BIG.to_string().as_str())
    );
    assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
    // On one connection: a HEAD of the big file then a GET of the small one. Any byte of
    // the big file after the HEAD's head would show up before the second status line.
    let mut client = connect(server.addr);
    send(
        &mut client,
        b"HEAD /files/big.bin HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /files/small.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let reply = expect_clean_eof(&mut client, "HEAD then GET");
    let reply = String::from_utf8_lossy(&reply);
    let (first, second) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("two responses: {reply}"));
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        first.contains(&format!("\r\nContent-Length: {BIG}")),
        "{reply}"
    );
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second:.200}");
    assert!(second.ends_with("\r\n\r\nsmall\n"), "{second:.200}");
}

/// wget against the example binary, started with `--root`: a whole download, a resumed one
/// (`-c`, which asks for the rest with a Range), and a HEAD (`--spider`).
#[test]
fn wget_downloads_resumes_and_spiders_a_file() {
    let files = Files::new("files-wget", BIG);
    let root = files.root.to_str().expect("a UTF-8 root");
    let server = start_example("http_hello", &["--addr", "127.0.0.1:0", "--root", root]);
    let url = format!("http://{}/files/big.bin", server.addr);
    let wget = |args: &[&str]| {
        let mut all = vec!["--tries=1", "--timeout", CLIENT_MAX_SECS];
        all.extend_from_slice(args);
        run_client_with_input("wget", &all, b"")
    };
    let whole = files.out("whole.bin");
    let (status, _, err) = wget(&["-q", "-O", &whole, &url]);
    assert!(status.success(), "wget failed: {err}");
    assert_eq!(sha256_file(&whole), sha256(&files.big), "wget's download");

    // Resumed: the first MiB is there, wget asks for the rest (`Range: bytes=1048576-`).
    let resumed_dir = files.dir.join("resumed");
    std::fs::create_dir_all(&resumed_dir).expect("create resumed/");
    let resumed = resumed_dir.join("big.bin");
    std::fs::write(&resumed, &files.big[..1 << 20]).expect("write the first MiB");
    let dir_arg = resumed_dir.to_str().expect("UTF-8");
    let (status, _, err) = wget(&["-S", "-nv", "-c", "-P", dir_arg, &url]);
    assert!(status.success(), "wget -c failed: {err}");
    assert!(err.contains("HTTP/1.1 206 Partial Content"), "{err}");
    let expected_range = format!("Content-Range: bytes {}-{}/{BIG}", 1 << 20, BIG - 1);
    assert!(err.contains(&expected_range), "{err}");
    assert_eq!(
        sha256_file(resumed.to_str().expect("UTF-8")),
        sha256(&files.big),
        "wget -c's file"
    );

    let (status, _, err) = wget(&["-S", "--spider", &url]);
    assert!(status.success(), "wget --spider failed: {err}");
    assert!(err.contains(&format!("Content-Length: {BIG}")), "{err}");
}

/// A peer that reads slowly (curl's `--limit-rate`): the server waits for room in the socket
/// again and again, and the file arrives intact. Over a Unix socket, whose buffers stay small:
/// over TCP on loopback the receiver's buffer grows to hold megabytes, and the server would
/// hardly wait.
#[test]
fn a_slow_reader_gets_the_file_intact() {
    let len = 2 * 1024 * 1024;
    let files = Files::new("files-slow", len);
    let socket = files.dir.join("http.sock");
    let mut listen = http_hello::transport::Listen::from(
        "127.0.0.1:0".parse::<SocketAddr>().expect("an address"),
    );
    listen.unix = Some(socket.clone());
    let server = http_hello::start(listen, Some(2), Some(1), Some(&files.root)).expect("start");
    let out = files.out("got");
    // About 2 s.
    let (status, _, err) = curl(&[
        "--limit-rate",
        "1M",
        "--unix-socket",
        socket.to_str().expect("UTF-8"),
        "-o",
        &out,
        "http://localhost/files/big.bin",
    ]);
    assert!(status.success(), "curl failed: {err}");
    assert_eq!(sha256_file(&out), sha256(&files.big), "the slow download");
    let stats = server.stats();
    assert_eq!(stats.body_errors, 0, "{stats:#?}");
    server.shutdown();
}

/// A peer that vanishes in the middle of a file: the server drops that connection (a
/// reset) and serves the next download intact.
#[test]
fn a_peer_that_vanishes_mid_file_leaves_the_server_serving() {
    let len = 16 * 1024 * 1024;
    let files = Files::new("files-vanish", len);
    let server = Server::start(&files.root);
    for _ in 0..3 {
        let mut client = connect(server.addr);
        send(
            &mut client,
            b"GET /files/big.bin HTTP/1.1\r\nHost: t\r\n\r\n",
        );
        // The head and the start of the body; then it leaves with the rest unread (a reset).
        let got = read_exactly(&mut client, 256 * 1024);
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        drop(client);
    }
    wait_for_stats(server.handle(), "the three vanished peers gone", |s| {
        s.connections_closed == 3 && s.connections_open == 0
    });
    let out = files.out("got");
    let (status, _, err) = curl(&["-o", &out, &server.url("/files/big.bin")]);
    assert!(
        status.success(),
        "curl after the vanished peers failed: {err}"
    );
    assert_eq!(sha256_file(&out), sha256(&files.big), "the next download");
    // Each vanished peer ended its connection as a reset, never as a body error (see
    // a_peer_gone_with_epipe_mid_file_is_a_reset below).
    let stats = server.handle().stats();
    assert_eq!((stats.resets, stats.body_errors), (3, 0), "{stats:#?}");
}

/// A file truncated while curl downloads it (stalled: nobody reads its output for a while)
/// to less than was sent already ends that download short; the server counts a body error
/// and serves on. (Truncated to more than was sent: see
/// a_region_longer_than_its_file_ends_at_once_not_at_the_write_stall_timeout.)
#[test]
fn a_file_truncated_during_a_download_ends_it_short() {
    let len = 32 * 1024 * 1024;
    let files = Files::new("files-shrink", len);
    let server = Server::start(&files.root);
    let mut curl = Command::new("curl")
        .args(["-sS", "--max-time", CLIENT_MAX_SECS])
        .arg(server.url("/files/big.bin"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run curl; scripts/test.sh installs it with apt-get");
    let mut body = curl.stdout.take().expect("piped stdout");
    // The download is under way; then curl's output is not read, so it stops reading the
    // socket, the socket fills, and the server waits with most of the file still to send.
    let read_before = 256 * 1024;
    let mut got = vec![0; read_before];
    body.read_exact(&mut got).expect("the first 256 KiB");
    // Shorter than what was sent already: the server's next sendfile finds the file's end.
    let shrunk = 128 * 1024;
    std::fs::OpenOptions::new()
        .write(true)
        .open(files.big_path())
        .and_then(|file| file.set_len(shrunk))
        .expect("truncate big.bin");
    body.read_to_end(&mut got)
        .expect("the rest of curl's output");
    let status = curl.wait().expect("curl's status");
    let mut err = String::new();
    let _ = curl
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut err);
    // 18: CURLE_PARTIAL_FILE, "transfer closed with N bytes remaining to read".
    assert_eq!(status.code(), Some(18), "curl: {err}");
    assert!(got.len() < len, "got all {len} bytes of a file that shrank");
    // What was read before the truncation is the file's. (Bytes queued in the socket with
    // sendfile(2) before it may arrive zeroed after it: those pages are the kernel's.)
    assert_same_bytes(&got[..read_before], &files.big[..read_before], "the start");
    wait_for_stats(server.handle(), "the body error", |s| s.body_errors == 1);
    // The server serves on: the file as it is now.
    let (code, now) = curl_code(&[], &server.url("/files/big.bin"), &files.out("after"));
    assert_eq!(code, "200");
    assert_eq!(sha256(&now), sha256(&files.big[..shrunk as usize]));
}

const STREAM_LEN: usize = 1_000_000 + 7;

#[test]
fn curl_gets_the_stream_chunked_and_decoded() {
    let files = Files::new("files-stream", 0);
    let server = Server::start(&files.root);
    let url = server.url(&format!("/stream?bytes={STREAM_LEN}"));
    let expected = stream_bytes(STREAM_LEN);
    let (raw, head) = (files.out("raw"), files.out("head"));
    let (status, _, err) = curl(&["--raw", "-D", &head, "-o", &raw, &url]);
    assert!(status.success(), "curl --raw failed: {err}");
    let head = std::fs::read_to_string(&head).expect("the head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        header(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
    assert_eq!(header(&head, "content-length"), None, "{head}");
    let (data, chunks) = dechunk(&std::fs::read(&raw).expect("the raw body"));
    assert!(chunks > 1, "a body made in pieces: {chunks} chunk(s)");
    assert_eq!(sha256(&data), sha256(&expected), "the dechunked body");

    let decoded = files.out("decoded");
    let (status, _, err) = curl(&["-o", &decoded, &url]);
    assert!(status.success(), "curl failed: {err}");
    assert_eq!(
        sha256_file(&decoded),
        sha256(&expected),
        "curl's decoded body"
    );

    // Empty, and a bad length.
    let (code, body) = curl_code(&[], &server.url("/stream?bytes=0"), &files.out("empty"));
    assert_eq!((code.as_str(), body.len()), ("200", 0));
    let (code, _) = curl_code(&[], &server.url("/stream?bytes=x"), &files.out("bad"));
    assert_eq!(code, "400");
}

#[test]
fn an_http10_client_gets_the_stream_raw_then_a_close() {
    let files = Files::new("files-stream10", 0);
    let server = Server::start(&files.root);
    let expected = stream_bytes(STREAM_LEN);
    let (body, head) = (files.out("body"), files.out("head"));
    let url = server.url(&format!("/stream?bytes={STREAM_LEN}"));
    let (status, _, err) = curl(&["-0", "-D", &head, "-o", &body, &url]);
    assert!(status.success(), "curl -0 failed: {err}");
    let head = std::fs::read_to_string(&head).expect("the head");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert_eq!(header(&head, "transfer-encoding"), None, "{head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    assert_eq!(sha256_file(&body), sha256(&expected), "curl -0's body");

    // Keep-alive asked for, and a second request pipelined: the stream ends with the
    // connection, so the reply says close, the body is the bytes as they are, then EOF.
    let mut client = connect(server.addr);
    send(
        &mut client,
        b"GET /stream?bytes=100000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n\
          GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    let reply = expect_clean_eof(&mut client, "the HTTP/1.0 stream");
    let at = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&reply[..at]);
    assert!(head.contains("\r\nConnection: close"), "{head}");
    assert_eq!(
        sha256(&reply[at + 4..]),
        sha256(&stream_bytes(100_000)),
        "the raw body, and nothing after it"
    );
}

/// Path escapes: `..` (as is and percent-encoded), encoded slashes, NUL, an absolute path,
/// and symbolic links out of the root get a 400 or a 404, never the outside file.
#[test]
fn path_escapes_never_reach_a_file_outside_the_root() {
    const SECRET: &str = "the secret outside the root";
    let files = Files::new("files-escape", 1000);
    let outside = files.dir.join("outside");
    let secret = outside.join("secret.txt");
    std::fs::write(&secret, SECRET).expect("write secret.txt");
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, files.root.join(name)).expect("symlink");
    };
    link(Path::new("../outside/secret.txt"), "relative.txt");
    link(&secret, "absolute.txt");
    link(Path::new("../outside"), "dir");
    link(Path::new("big.bin"), "alias.bin");
    let server = Server::start(&files.root);
    let secret_path = secret.to_str().expect("UTF-8");
    let escapes = [
        "/files/../outside/secret.txt".to_owned(),
        "/files/../../../../../../etc/passwd".to_owned(),
        "/files/./../outside/secret.txt".to_owned(),
        "/files/%2e%2e/outside/secret.txt".to_owned(),
        "/files/%2E%2E/outside/secret.txt".to_owned(),
        "/files/.%2e/outside/secret.txt".to_owned(),
        "/files/..%2foutside%2fsecret.txt".to_owned(),
        "/files/%2e%2e%2Foutside%2Fsecret.txt".to_owned(),
        "/files/..%5coutside%5csecret.txt".to_owned(),
        "/files/big.bin%00".to_owned(),
        format!("/files/{secret_path}"),
        "/files/relative.txt".to_owned(),
        "/files/absolute.txt".to_owned(),
        "/files/dir/secret.txt".to_owned(),
    ];
    for path in &escapes {
        let (code, body) = curl_code(&["--path-as-is"], &server.url(path), &files.out("body"));
        assert!(
            code == "400" || code == "404",
            "{path}: {code} {:?}",
            String::from_utf8_lossy(&body)
        );
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains(SECRET), "{path} reached the secret: {body}");
    }
    // What curl would not send as it is: a raw NUL, backslashes.
    for request in [
        &b"GET /files/..\\outside\\secret.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..],
        b"GET /files/big.bin\0/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ] {
        let mut client = connect(server.addr);
        send(&mut client, request);
        let reply = expect_clean_eof(&mut client, "an escape");
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 400 ") || reply.starts_with("HTTP/1.1 404 "),
            "{reply}"
        );
        assert!(!reply.contains(SECRET), "{reply}");
    }
    // A link that stays inside the root is served.
    let (code, body) = curl_code(&[], &server.url("/files/alias.bin"), &files.out("alias"));
    assert_eq!(code, "200");
    assert_eq!(sha256(&body), sha256(&files.big));
}

#[test]
fn missing_files_and_directories_get_404() {
    let files = Files::new("files-404", 1000);
    std::fs::create_dir_all(files.root.join("sub")).expect("create sub/");
    let server = Server::start(&files.root);
    for path in [
        "/files/missing.bin",
        "/files/sub",
        "/files/sub/",
        "/files/",
        "/files/big.bin/",
        "/files/sub/missing",
    ] {
        let (code, _) = curl_code(&[], &server.url(path), &files.out("body"));
        assert_eq!(code, "404", "{path}");
    }
    let (code, _) = curl_code(
        &["-X", "DELETE"],
        &server.url("/files/big.bin"),
        &files.out("b"),
    );
    assert_eq!(code, "405");
}

/// On a Unix socket (sendfile there too) and over TLS (the file read 64 KiB at a time and
/// encrypted): curl gets the whole file and a range intact, from the example binary.
#[test]
fn curl_downloads_a_file_over_a_unix_socket() {
    let files = Files::new("files-unix", BIG);
    let root = files.root.to_str().expect("a UTF-8 root");
    let socket = files.out("http.sock");
    let server = start_example_unix("http_hello", &["--unix", &socket, "--root", root]);
    let socket = server.path.to_str().expect("a UTF-8 path");
    let url = "http://localhost/files/big.bin";
    let (code, body) = curl_code(&["--unix-socket", socket], url, &files.out("whole"));
    assert_eq!(code, "200");
    assert_eq!(
        sha256(&body),
        sha256(&files.big),
        "the file over a Unix socket"
    );
    let (code, body) = curl_code(
        &["--unix-socket", socket, "-r", "100000-"],
        url,
        &files.out("part"),
    );
    assert_eq!(code, "206");
    assert_eq!(sha256(&body), sha256(&files.big[100_000..]), "a range");
}

#[cfg(feature = "tls")]
#[test]
fn curl_downloads_a_file_over_tls() {
    let pki = crate::common::TestPki::new();
    let files = Files::new("files-tls", BIG);
    let root = files.root.to_str().expect("a UTF-8 root");
    let server = start_example(
        "http_hello",
        &[
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            &pki.cert,
            "--tls-key",
            &pki.key,
            "--root",
            root,
        ],
    );
    let url = format!("https://localhost:{}/files/big.bin", server.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", server.addr.port());
    let tls = ["--cacert", &pki.ca, "--resolve", &resolve];
    let (code, body) = curl_code(&tls, &url, &files.out("whole"));
    assert_eq!(code, "200");
    assert_eq!(sha256(&body), sha256(&files.big), "the file over TLS");
    let mut args = tls.to_vec();
    args.extend(["-r", "70000-2000000"]);
    let (code, body) = curl_code(&args, &url, &files.out("part"));
    assert_eq!(code, "206");
    assert_eq!(
        sha256(&body),
        sha256(&files.big[70_000..=2_000_000]),
        "a range"
    );
}

/// For the library bugs below: a server whose every response is `extra` bytes more of the
/// file at `path` than it holds (a file that shrank after its length was taken), from a
/// codec that answers whatever arrives.
fn region_server(path: PathBuf, extra: u64) -> ServerHandle {
    use reactor_pool::{
        handler_fn, AfterReply, Builder, Codec, Context, DecodeError, Decoded, FileRegion, Output,
    };
    #[derive(Clone)]
    struct FileCodec;
    impl Codec for FileCodec {
        type Request = Vec<u8>;
        type Response = FileRegion;
        fn decode(&mut self, input: &[u8]) -> Result<Option<Decoded<Vec<u8>>>, DecodeError> {
            Ok((!input.is_empty()).then(|| (input.to_vec(), input.len())))
        }
        fn encode(&mut self, region: FileRegion, output: &mut Output<'_>) -> AfterReply {
            output.file(region);
            AfterReply::KeepOpen
        }
    }
    let handler = handler_fn(move |_: Vec<u8>, _: &Context| {
        let file = std::fs::File::open(&path).expect("open the file");
        let len = file.metadata().expect("its length").len();
        FileRegion::new(file, 0, len + extra)
    });
    Builder::bind("127.0.0.1:0")
        .workers(1)
        .reactors(1)
        .start(FileCodec, handler)
        .expect("start")
}

/// Regression: a file region longer than what is left of its file, when that rest fits in
/// the socket's buffer, hung the connection instead of ending it at once. sendfile(2) sends
/// the rest and returns short (at the file's end, not because the socket is full); the
/// socket took the short count for a full socket and waited for a writable edge that never
/// came, until the write-stall timeout closed the connection (counted in `timeouts`, not
/// `body_errors`). Here: a 1000-byte file sent as a 1001-byte region. (In http_hello: a
/// file truncated, during its download, to a length past what was already sent.)
#[test]
fn a_region_longer_than_its_file_ends_at_once_not_at_the_write_stall_timeout() {
    let dir = TempDir::new("region-long");
    let path = dir.join("short.bin");
    std::fs::write(&path, vec![b'x'; 1000]).expect("write short.bin");
    let server = region_server(path, 1);
    let mut client = connect(server.local_addr().tcp().expect("TCP"));
    // Well under the write-stall timeout: a prompt close comes in milliseconds.
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("set_read_timeout");
    send(&mut client, b"go");
    let got = expect_clean_eof(&mut client, "the body cut short, then the close");
    assert_eq!(got.len(), 1000, "the bytes the file had");
    let stats = wait_for_stats(&server, "the body error", |s| s.connections_closed == 1);
    assert_eq!((stats.body_errors, stats.timeouts), (1, 0), "{stats:#?}");
    server.shutdown();
}

/// Regression: a peer that left mid-file was counted as a body error (its connection closed
/// as `CloseReason::BodyFailed`, with a warning "sending a file: Broken pipe") when
/// sendfile(2) failed with EPIPE rather than ECONNRESET: the error was taken for the
/// file's. A peer that half-closes after its request and then resets (its socket closed
/// with the body unread) gives EPIPE every time: the server's socket is in CLOSE_WAIT when
/// the reset comes. About one in 50 plain resets does too
/// (a_peer_that_vanishes_mid_file_leaves_the_server_serving).
#[test]
fn a_peer_gone_with_epipe_mid_file_is_a_reset() {
    let dir = TempDir::new("region-epipe");
    let path = dir.join("big.bin");
    std::fs::write(&path, Pattern::new().bytes(0, 16 * 1024 * 1024)).expect("write big.bin");
    let server = region_server(path, 0);
    let mut client = connect(server.local_addr().tcp().expect("TCP"));
    send(&mut client, b"go");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown(Write)");
    read_exactly(&mut client, 256 * 1024);
    // Gone, with most of the file unread: a reset.
    drop(client);
    let stats = wait_for_stats(&server, "the connection gone", |s| {
        s.connections_closed == 1
    });
    assert_eq!(
        (stats.resets, stats.body_errors),
        (1, 0),
        "a peer that left mid-file is a reset: {stats:#?}"
    );
    server.shutdown();
}
