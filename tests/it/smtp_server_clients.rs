//! examples/smtp_server against the clients its users already have: Python's smtplib and
//! swaks; and the built binary, for its flags and its SIGTERM handling.

use crate::common;

use crate::common::{run_client, start_example, wait_until};
use crate::smtp_support::*;

const SMTPLIB_SCRIPT: &str = r#"
import json, smtplib, sys
port, messages = int(sys.argv[1]), json.loads(sys.argv[2])
with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
    smtp.ehlo("smtplib.test")
    out = {"features": smtp.esmtp_features, "queued": []}
    for m in messages:
        body = m["body"].encode()
        code, reply = smtp.mail(m["from"], ["SIZE=%d" % len(body), "BODY=8BITMIME"])
        assert code == 250, (code, reply)
        for to in m["to"]:
            code, reply = smtp.rcpt(to)
            assert code == 250, (code, reply)
        out["queued"].append(list(smtp.data(body)))
        out["queued"][-1][1] = out["queued"][-1][1].decode()
    out["quit"] = smtp.quit()[0]
print(json.dumps(out))
"#;

#[test]
fn smtplib_sends_several_messages_to_several_recipients_on_one_connection() {
    let server = Server::start("smtplib", |_| {});
    let bodies = [
        "Subject: one\r\n\r\nHello.\r\n.\r\n.leading dot\r\n..two dots\r\nRSET\r\n".to_string(),
        "Subject: two\r\n\r\nh\u{e9}llo, 8 bits\r\n.\r\n...\r\nlast\r\n".to_string(),
        "Subject: three\r\n\r\n.\r\n".to_string(),
    ];
    let envelopes: [(&str, &[&str]); 3] = [
        (
            "alice@example.org",
            &["bob@example.org", "carol@example.net"],
        ),
        (
            "dave@example.org",
            &["erin@example.com", "frank@example.com", "postmaster"],
        ),
        ("", &["grace@example.org", "heidi@example.org"]),
    ];
    let messages: Vec<serde_json::Value> = envelopes
        .iter()
        .zip(&bodies)
        .map(|((from, to), body)| serde_json::json!({"from": from, "to": to, "body": body}))
        .collect();
    let port = server.addr().port().to_string();
    let json = serde_json::to_string(&messages).unwrap();
    let (status, out, err) = run_client("python3", &["-c", SMTPLIB_SCRIPT, &port, &json]);
    assert!(status.success(), "smtplib failed: {out}{err}");
    let out: serde_json::Value = serde_json::from_str(&out).expect("the script's JSON");

    let features = &out["features"];
    assert_eq!(features["pipelining"], "");
    assert_eq!(features["size"], "10485760");
    assert_eq!(features["8bitmime"], "");
    assert_eq!(out["quit"], 221);
    let queued = out["queued"].as_array().expect("a list");
    assert_eq!(queued.len(), 3);
    let mut ids = Vec::new();
    for (((from, to), body), reply) in envelopes.iter().zip(&bodies).zip(queued) {
        assert_eq!(reply[0], 250, "{reply}");
        let text = reply[1].as_str().unwrap();
        let id = text.strip_prefix("2.0.0 OK queued as ").expect(text);
        server.dir.message(id).check(from, to, body.as_bytes());
        ids.push(id.to_string());
    }
    ids.sort();
    assert_eq!(server.dir.files("new"), ids, "one file per message");
    assert!(server.dir.files("tmp").is_empty());
}

/// Runs swaks against `server`, checks the message it stored; returns swaks's transcript.
fn swaks(server: &Server, extra: &[&str]) -> String {
    let port = server.addr().port().to_string();
    let mut args = vec![
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--helo",
        "swaks.test",
        "--from",
        "sender@example.org",
        "--to",
        "a@example.org,b@example.org",
        "--header",
        "Subject: via swaks",
        "--body",
        "first line\n.dot line\nlast line",
        "--timeout",
        "30",
    ];
    args.extend_from_slice(extra);
    let (status, out, err) = run_client("swaks", &args);
    assert!(status.success(), "swaks failed: {out}{err}");
    let id = out
        .lines()
        .find_map(|line| line.split_once("<-  250 2.0.0 OK queued as "))
        .unwrap_or_else(|| panic!("no queued reply: {out}"))
        .1;
    let stored = server.dir.message(id.trim());
    assert_eq!(stored.return_path, "<sender@example.org>");
    assert_eq!(stored.envelope_to, ["<a@example.org>", "<b@example.org>"]);
    assert!(
        stored.received.contains("from swaks.test ([127.0.0.1])"),
        "{stored:?}"
    );
    // Stored is what swaks sent after the 354 (its transcript shows it), dot-unstuffed.
    let sent: String = out
        .lines()
        .skip_while(|line| !line.starts_with("<-  354 "))
        .skip(1)
        .take_while(|line| *line != " -> .")
        .map(|line| line.strip_prefix(" -> ").expect("a line sent"))
        .map(|line| format!("{}\r\n", line.strip_prefix('.').unwrap_or(line)))
        .collect();
    assert!(sent.contains("Subject: via swaks\r\n"), "{out}");
    assert!(
        sent.contains("\r\n\r\nfirst line\r\n.dot line\r\nlast line\r\n"),
        "{out}"
    );
    common::assert_same_bytes(&stored.body, sent.as_bytes(), "the message swaks sent");
    out
}

#[test]
fn swaks_sends_a_message() {
    let server = Server::start("swaks", |_| {});
    let transcript = swaks(&server, &[]);
    assert!(
        transcript.contains("<-  221 2.0.0 mx.test closing connection"),
        "{transcript}"
    );
}

#[test]
fn swaks_pipelines_a_message() {
    let server = Server::start("swaks-pipeline", |_| {});
    let transcript = swaks(&server, &["--pipeline"]);
    // Pipelined: DATA went out before the reply to MAIL came back.
    let data_sent = transcript.find(" -> DATA").expect(&transcript);
    let mail_answered = transcript
        .find("<-  250 2.1.0 Sender OK")
        .expect(&transcript);
    assert!(data_sent < mail_answered, "not pipelined:\n{transcript}");
}

#[test]
fn the_binary_takes_its_flags_and_says_421_on_sigterm() {
    let dir = TestDir::new("binary");
    let maildir = dir.0.to_str().expect("a UTF-8 temp dir");
    let mut server = start_example(
        "smtp_server",
        &[
            "--addr",
            "127.0.0.1:0",
            "--maildir",
            maildir,
            "--max-size",
            "5000",
            "--hostname",
            HOST,
            "--workers",
            "2",
        ],
    );
    let mut client = Client::new(server.addr);
    assert_eq!(client.reply(), "220 mx.test ESMTP reactor-pool\r\n");
    assert!(client
        .command("EHLO bin.test")
        .contains("250-SIZE 5000\r\n"));
    let over = [&[b'.'; 4999][..], b"\r\n"].concat();
    assert_eq!(send_message(&mut client, &over), TOO_BIG);
    let body = b"Subject: from the binary\r\n\r\nhi\r\n";
    let id = queued_id(&send_message(&mut client, body));
    dir.message(&id)
        .check("a@example.org", &["b@example.org"], body);

    // SAFETY: kill(2) only sends a signal, to the child this test started.
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    assert_eq!(client.reply(), FAREWELL);
    client.expect_eof("after SIGTERM");
    drop(client);
    let status = wait_until("the server to exit", || {
        server.child.try_wait().expect("try_wait")
    });
    assert!(status.success(), "exit status {status}");
}
