//! A workload of the echo, blocking, hold and TLS scenarios.

use serde::Serialize;

/// One workload.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub connections: usize,
    pub message_size: usize,
    /// Requests outstanding per connection.
    pub depth: usize,
    /// Handler sleep per request (the blocking workload), microseconds; 0 for plain echo.
    pub sleep_us: u64,
    /// Threads allowed to block in the handler (reactor-pool workers, tokio's blocking
    /// threads) in the blocking workload; 0 for plain echo.
    pub blocking_workers: usize,
    /// Pause between a reply and the connection's next request, milliseconds; 0 for a
    /// closed loop. Non-zero in the hold scenario.
    pub think_ms: u64,
    /// The measured window is at least this long whatever `--duration` says (the hold
    /// scenario: every connection pings at least twice).
    pub min_duration_s: f64,
    /// Over TLS (feature `tls`): the servers are reactor-pool with `Builder::tls` and
    /// tokio-rustls; the handshake is once per connection unless `reconnect`.
    #[serde(skip_serializing_if = "is_false")]
    pub tls: bool,
    /// Each connection sends one request, and once its echo is in closes (after TLS's
    /// close_notify) and a new connection takes its place: req/s counts connections, each
    /// with its handshake (the `tls handshakes` scenario). Latency is from the start of the
    /// connect to the echo.
    #[serde(skip_serializing_if = "is_false")]
    pub reconnect: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

impl Scenario {
    pub fn echo(connections: usize, message_size: usize, depth: usize) -> Scenario {
        Scenario {
            name: format!("echo c{connections} {} d{depth}", size_label(message_size)),
            connections,
            message_size,
            depth,
            sleep_us: 0,
            blocking_workers: 0,
            think_ms: 0,
            min_duration_s: 0.0,
            tls: false,
            reconnect: false,
        }
    }

    pub fn blocking(connections: usize, sleep_us: u64, workers: usize) -> Scenario {
        Scenario {
            name: format!("blocking c{connections} 64B d1 sleep{}ms", sleep_us / 1000),
            connections,
            message_size: 64,
            depth: 1,
            sleep_us,
            blocking_workers: workers,
            think_ms: 0,
            min_duration_s: 0.0,
            tls: false,
            reconnect: false,
        }
    }

    /// Many mostly idle connections: each sends a 64 B ping, waits for its echo, thinks
    /// `think_ms`, and so on, for at least `duration_s` (and at least 2.5 think times, so
    /// every connection pings at least twice in the window).
    pub fn hold(connections: usize, think_ms: u64, duration_s: f64) -> Scenario {
        Scenario::hold_sized(connections, 64, think_ms, duration_s)
    }

    /// [`Scenario::hold`] with `message_size`-byte pings: what an idle connection keeps
    /// after large exchanges (the settled RSS columns).
    pub fn hold_sized(
        connections: usize,
        message_size: usize,
        think_ms: u64,
        duration_s: f64,
    ) -> Scenario {
        let think = if think_ms % 1000 == 0 {
            format!("{}s", think_ms / 1000)
        } else {
            format!("{think_ms}ms")
        };
        Scenario {
            name: format!(
                "hold c{connections} {} think{think}",
                size_label(message_size)
            ),
            connections,
            message_size,
            depth: 1,
            sleep_us: 0,
            blocking_workers: 0,
            think_ms,
            min_duration_s: duration_s.max(2.5 * think_ms as f64 / 1000.0),
            tls: false,
            reconnect: false,
        }
    }

    /// [`Scenario::echo`] over TLS: one handshake per connection, then echoes.
    #[cfg(feature = "tls")]
    pub fn tls_echo(connections: usize, message_size: usize, depth: usize) -> Scenario {
        let echo = Scenario::echo(connections, message_size, depth);
        Scenario {
            name: format!("tls {}", echo.name),
            tls: true,
            ..echo
        }
    }

    /// Connections with a full TLS handshake, one 64 B echo and close_notify each, over and
    /// over, `connections` at a time.
    #[cfg(feature = "tls")]
    pub fn tls_handshakes(connections: usize) -> Scenario {
        Scenario {
            name: format!("tls handshakes c{connections}"),
            reconnect: true,
            ..Scenario::tls_echo(connections, 64, 1)
        }
    }

    pub fn is_hold(&self) -> bool {
        self.think_ms > 0
    }

    /// `workers / sleep`: what a pool of that many threads each sleeping per request allows.
    pub fn ideal_req_per_s(&self) -> Option<f64> {
        (self.sleep_us > 0).then(|| self.blocking_workers as f64 * 1e6 / self.sleep_us as f64)
    }

    /// Whether this scenario is a point of the connection sweep drawn in the chart.
    pub fn in_sweep(&self) -> bool {
        self.sleep_us == 0
            && self.think_ms == 0
            && self.message_size == 64
            && self.depth == 1
            && !self.tls
    }
}

pub fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}
