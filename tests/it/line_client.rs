//! A client program that runs beside a test (`redis-cli SUBSCRIBE`, `nc`): lines written to
//! its stdin, its stdout read line by line on a thread of its own, so a test waits for the
//! line it expects (a hang shows as a failure after [`WAIT_DEADLINE`]).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::common::WAIT_DEADLINE;

/// A program running in the background; killed on drop.
pub struct LineClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    what: String,
}

impl LineClient {
    /// Starts `program` with `args`, its stdin a pipe and its stdout read line by line.
    pub fn spawn(program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {program} ({e}); scripts/test.sh installs it with apt-get")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LineClient {
            stdin: child.stdin.take(),
            child,
            lines,
            what: format!("{program} {args:?}"),
        }
    }

    /// Writes `line` and a newline to the program's stdin.
    pub fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing {line:?} to {}: {e}", self.what));
    }

    /// The next line the program prints; its end or a hang fails the test.
    pub fn next_line(&self) -> String {
        match self.lines.recv_timeout(WAIT_DEADLINE) {
            Ok(line) => line,
            Err(RecvTimeoutError::Disconnected) => panic!("{} ended its output", self.what),
            Err(RecvTimeoutError::Timeout) => {
                panic!("{} printed nothing for {WAIT_DEADLINE:?}", self.what)
            }
        }
    }

    /// The next lines must be `expected`, in this order.
    pub fn expect_lines(&self, expected: &[&str]) {
        for want in expected {
            let got = self.next_line();
            assert_eq!(&got, want, "{}: expected {expected:?}", self.what);
        }
    }
}

impl Drop for LineClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
