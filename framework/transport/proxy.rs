//! The PROXY protocol header (HAProxy's doc/proxy-protocol.txt, versions 1 and 2) that a load
//! balancer sends before the client's bytes to say who the client really is.
//!
//! The parser is strict because the addresses it returns are trusted to name the peer: bytes
//! that are not exactly a header per the spec are refused rather than guessed at. It refuses as
//! soon as the bytes so far cannot begin a header, so a client that connects directly instead of
//! through the proxy is turned away on its first byte, not held in a buffer until a timeout.
//! It is pure and does not allocate: the caller owns the socket and the buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    /// The original client's address; None for v2 LOCAL (a health check from the proxy
    /// itself), v1 UNKNOWN, or an address family other than IPv4/IPv6 (AF_UNSPEC, AF_UNIX),
    /// or a non-STREAM transport.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, on the same terms.
    pub destination: Option<SocketAddr>,
}

/// The outcome of looking at the first bytes of a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// All bytes so far are a valid prefix of a header: read more (at most `MAX_HEADER` in total).
    Incomplete,
    /// A whole header, `len` bytes long; bytes after it belong to the stream.
    Complete {
        /// The addresses the header carries.
        header: ProxyHeader,
        /// How many bytes at the start of the buffer the header takes.
        len: usize,
    },
}

/// Why the bytes are not a PROXY header. Display gives a one-line reason for a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyError(&'static str);

// The reasons, as a log line shows them.
const NOT_PROXY: &str = "not a PROXY protocol header";
const V1_PROTOCOL: &str = "PROXY v1: protocol is not TCP4, TCP6 or UNKNOWN";
const V1_FIELDS: &str = "PROXY v1: wrong number of fields or not single spaces";
const V1_ADDRESS: &str = "PROXY v1: address is not one of the declared family";
const V1_PORT: &str = "PROXY v1: port is not a decimal 0..=65535 without leading zero";
const V1_LINE_END: &str = "PROXY v1: bare LF, or CR not followed by LF";
const V1_TOO_LONG: &str = "PROXY v1: no CRLF within 107 bytes";
const V2_VERSION: &str = "PROXY v2: version is not 2";
const V2_COMMAND: &str = "PROXY v2: command is neither LOCAL nor PROXY";
const V2_FAMILY: &str = "PROXY v2: unknown address family or transport";
const V2_SHORT: &str = "PROXY v2: length too short for the address family";
const V2_TOO_LONG: &str = "PROXY v2: header longer than the server accepts";

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ProxyError {}

/// The longest header accepted (v2 with TLVs is capped here, to bound what one connection may
/// make the server buffer before it knows who the peer is). The largest address block (AF_UNIX,
/// 216 bytes) leaves over 1800 bytes for the TLVs haproxy sends (ALPN, authority, SSL details).
pub(crate) const MAX_HEADER: usize = 16 + 2048;

const V1_PREFIX: &[u8] = b"PROXY ";
/// The spec's bound on a v1 line, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and the 2-byte length.
const V2_FIXED: usize = 16;
const NO_ADDRESS: ProxyHeader = ProxyHeader {
    source: None,
    destination: None,
};

/// Parses the start of `buf` (all bytes received so far on the connection).
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // True while `buf` and `lit` agree on their common length, however short `buf` is.
    let agrees = |lit: &[u8]| buf.iter().zip(lit).all(|(a, b)| a == b);
    let parsed = if agrees(V2_SIGNATURE) {
        parse_v2(buf)
    } else if agrees(V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(NOT_PROXY)
    };
    parsed.map_err(ProxyError)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, &'static str> {
    let line = buf.get(..V1_MAX).unwrap_or(buf);
    let Some(body) = line.get(V1_PREFIX.len()..) else {
        return Ok(Parsed::Incomplete);
    };
    let Some(end) = body.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if line.len() == V1_MAX {
            return Err(V1_TOO_LONG);
        }
        v1_fields(body, false)?;
        return Ok(Parsed::Incomplete);
    };
    let fields = body.get(..end).unwrap_or_default();
    match (body.get(end), body.get(end + 1)) {
        (Some(b'\r'), Some(b'\n')) => Ok(Parsed::Complete {
            header: v1_fields(fields, true)?,
            len: V1_PREFIX.len() + end + 2,
        }),
        // Only the LF can follow, so the fields are final: check them now, not a read later.
        (Some(b'\r'), None) if line.len() < V1_MAX => {
            v1_fields(fields, true).map(|_| Parsed::Incomplete)
        }
        (Some(b'\r'), None) => Err(V1_TOO_LONG),
        _ => Err(V1_LINE_END),
    }
}

/// Checks the fields after "PROXY "; unless `complete`, the last one may be cut short and only
/// has to be able to become valid, and the header returned means nothing.
fn v1_fields(fields: &[u8], complete: bool) -> Result<ProxyHeader, &'static str> {
    let mut split = fields.split(|&b| b == b' ').peekable();
    let protocol = split.next().unwrap_or_default();
    // A strict prefix of TCP4 or TCP6 is a prefix of TCP.
    let alone = !complete && split.peek().is_none();
    let cut_short = |word: &[u8]| alone && word.starts_with(protocol);
    let v6 = match protocol {
        b"TCP4" => false,
        b"TCP6" => true,
        // The spec has the receiver ignore whatever follows UNKNOWN up to the CRLF.
        b"UNKNOWN" => return Ok(NO_ADDRESS),
        _ if cut_short(b"TCP") || cut_short(b"UNKNOWN") => return Ok(NO_ADDRESS),
        _ => return Err(V1_PROTOCOL),
    };
    let (mut ips, mut ports, mut i) = ([None; 2], [0; 2], 0);
    while let Some(field) = split.next() {
        let partial = !complete && split.peek().is_none();
        match i {
            _ if field.is_empty() && !partial => return Err(V1_FIELDS),
            0 | 1 if partial && !v1_ip_may_become(field, v6) => return Err(V1_ADDRESS),
            0 | 1 if !partial => ips[i] = Some(v1_ip(field, v6).ok_or(V1_ADDRESS)?),
            0 | 1 => {}
            2 | 3 => ports[i - 2] = v1_port(field).ok_or(V1_PORT)?,
            _ => return Err(V1_FIELDS),
        }
        i += 1;
    }
    match ips {
        _ if !complete => Ok(NO_ADDRESS),
        [Some(src), Some(dst)] if i == 4 => Ok(ProxyHeader {
            source: Some(SocketAddr::new(src, ports[0])),
            destination: Some(SocketAddr::new(dst, ports[1])),
        }),
        _ => Err(V1_FIELDS),
    }
}

/// std's parsers already refuse what the spec does: leading zeros in IPv4, zone ids, brackets.
fn v1_ip(field: &[u8], v6: bool) -> Option<IpAddr> {
    let text = std::str::from_utf8(field).ok()?;
    if v6 {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// A coarse check on an address still arriving; the full parse happens once it ends.
fn v1_ip_may_become(field: &[u8], v6: bool) -> bool {
    let ok =
        |b: &u8| b.is_ascii_digit() || *b == b'.' || (v6 && (b.is_ascii_hexdigit() || *b == b':'));
    // 45 is "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".
    field.len() <= if v6 { 45 } else { 15 } && field.iter().all(ok)
}

/// A port, or a port's first digits (0 for none yet): no sign, no leading zero.
/// `str::parse` is not used because it accepts a leading '+'.
fn v1_port(field: &[u8]) -> Option<u16> {
    if field.len() > 1 && field.first() == Some(&b'0') {
        return None;
    }
    field.iter().try_fold(0u16, |acc, &b| {
        let digit = b.is_ascii_digit().then(|| u16::from(b - b'0'))?;
        acc.checked_mul(10)?.checked_add(digit)
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, &'static str> {
    let Some(&version_command) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if version_command >> 4 != 2 {
        return Err(V2_VERSION);
    }
    let proxy = match version_command & 0x0F {
        0x0 => false,
        0x1 => true,
        _ => return Err(V2_COMMAND),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // The spec has the receiver of LOCAL ignore the address information, family byte included.
    // Address block sizes for AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX; transports go up to DGRAM.
    let block = match (proxy, [0, 12, 36, 216].get(usize::from(family >> 4))) {
        (false, _) => 0,
        (true, Some(&size)) if family & 0x0F <= 2 => size,
        _ => return Err(V2_FAMILY),
    };
    let (Some(&high), Some(&low)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let declared = usize::from(u16::from_be_bytes([high, low]));
    if declared < block {
        return Err(V2_SHORT);
    }
    let len = V2_FIXED + declared;
    if len > MAX_HEADER {
        return Err(V2_TOO_LONG);
    }
    let Some(body) = buf.get(V2_FIXED..len) else {
        return Ok(Parsed::Incomplete);
    };
    // Only STREAM is TCP; a datagram's addresses do not name this connection's peer.
    let pair = match family {
        0x11 if proxy => v2_pair::<4>(body),
        0x21 if proxy => v2_pair::<16>(body),
        _ => None,
    };
    let header = pair.map_or(NO_ADDRESS, |(s, d)| ProxyHeader {
        source: Some(s),
        destination: Some(d),
    });
    Ok(Parsed::Complete { header, len })
}

/// Source and destination from an address block: both addresses, then both ports.
fn v2_pair<const N: usize>(body: &[u8]) -> Option<(SocketAddr, SocketAddr)>
where
    IpAddr: From<[u8; N]>,
{
    let ip = |at: usize| {
        body.get(at..at + N)?
            .try_into()
            .ok()
            .map(|b: [u8; N]| IpAddr::from(b))
    };
    let port = |at: usize| Some(u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?));
    Some((
        SocketAddr::new(ip(0)?, port(2 * N)?),
        SocketAddr::new(ip(N)?, port(2 * N + 2)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INCOMPLETE: Result<Parsed, ProxyError> = Ok(Parsed::Incomplete);
    type Pair = (Option<SocketAddr>, Option<SocketAddr>);

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let len = u16::try_from(body.len()).unwrap().to_be_bytes();
        [V2_SIGNATURE, &[0x20 | command, family], &len, body].concat()
    }

    fn some(src: &str, dst: &str) -> Pair {
        (Some(src.parse().unwrap()), Some(dst.parse().unwrap()))
    }

    fn reason(buf: &[u8]) -> &'static str {
        match parse(buf) {
            Err(ProxyError(r)) => r,
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    /// Feeds `header` a byte at a time, then whole with `tail` after it; returns what it says.
    fn whole(header: &[u8], tail: &[u8]) -> Pair {
        for end in 0..header.len() {
            assert_eq!(parse(&header[..end]), INCOMPLETE, "{end} bytes");
        }
        match parse(&[header, tail].concat()) {
            Ok(Parsed::Complete { header: h, len }) if len == header.len() => {
                (h.source, h.destination)
            }
            other => panic!("{} byte header gave {other:?}", header.len()),
        }
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let cases: [(&[u8], Pair); 4] = [
            (
                b"PROXY TCP4 10.0.0.1 1.2.3.4 56324 443\r\n",
                some("10.0.0.1:56324", "1.2.3.4:443"),
            ),
            (
                b"PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 65535 0\r\n",
                some("[2001:db8::1]:65535", "[::ffff:1.2.3.4]:0"),
            ),
            (b"PROXY UNKNOWN\r\n", (None, None)),
            (b"PROXY UNKNOWN ffff:: 1.2.3.4 +1 x\r\n", (None, None)),
        ];
        for (line, want) in cases {
            assert_eq!(whole(line, b"GET / HTTP/1.1\r\n"), want);
        }
    }

    #[test]
    fn v1_line_is_at_most_107_bytes() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX - 2, b'x');
        line.extend(b"\r\n");
        assert_eq!(whole(&line, b"\r\n"), (None, None));
        line[V1_MAX - 2..].copy_from_slice(b"xx");
        assert_eq!(parse(&line[..V1_MAX - 1]), INCOMPLETE);
        assert_eq!(reason(&line), V1_TOO_LONG); // on the 107th byte, not after
        line[V1_MAX - 1] = b'\r'; // no room left for the LF
        assert_eq!(reason(&line), V1_TOO_LONG);
    }

    #[test]
    fn v1_bad_fields_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", V1_FIELDS),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", V1_FIELDS),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", V1_FIELDS),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", V1_FIELDS),
            (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1_PROTOCOL),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", V1_PROTOCOL),
            (b"PROXY UNKNOWNx\r\n", V1_PROTOCOL),
            (b"PROXY \r\n", V1_PROTOCOL),
            (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", V1_ADDRESS),
            (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", V1_ADDRESS),
            (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", V1_ADDRESS),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", V1_ADDRESS),
            (b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", V1_ADDRESS),
            (b"PROXY TCP6 [::1] ::2 1 2\r\n", V1_ADDRESS),
            (b"PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n", V1_ADDRESS),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", V1_PORT),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", V1_PORT),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", V1_PORT),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", V1_LINE_END),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", V1_LINE_END),
            (b"PROXY UNKNOWN a\nb\r\n", V1_LINE_END),
        ];
        for (line, want) in cases {
            assert_eq!(reason(line), *want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn refused_as_soon_as_no_header_can_follow() {
        assert_eq!(parse(b""), INCOMPLETE);
        assert_eq!(reason(b"G"), NOT_PROXY); // "GET / HTTP/1.1"
        assert_eq!(reason(&[0x16]), NOT_PROXY); // a TLS ClientHello
        assert_eq!(parse(b"PROX"), INCOMPLETE);
        assert_eq!(reason(b"PROXZ"), NOT_PROXY);
        assert_eq!(parse(b"\r\n\r\n"), INCOMPLETE);
        assert_eq!(reason(b"\r\n\r\n\x01"), NOT_PROXY);
        assert_eq!(reason(b"PROXY TCP5"), V1_PROTOCOL);
        assert_eq!(reason(b"PROXY TCP4 1.2.3.4:"), V1_ADDRESS);
        assert_eq!(parse(b"PROXY TCP4 111111111111111"), INCOMPLETE);
        assert_eq!(reason(b"PROXY TCP4 1111111111111111"), V1_ADDRESS); // over 15
        assert_eq!(reason(b"PROXY TCP4 1.2.3.4  "), V1_FIELDS);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 0"), INCOMPLETE);
        assert_eq!(reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 01"), V1_PORT);
        assert_eq!(reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536"), V1_PORT);
        // A CR can only be followed by LF, so the fields are judged when it arrives.
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"), INCOMPLETE);
        assert_eq!(reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r"), V1_FIELDS);
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6_with_and_without_tlvs() {
        let v4 = [192, 168, 0, 1, 10, 0, 0, 2, 0xDC, 0x04, 0x01, 0xBB];
        let noop_tlv: &[u8] = &[0x04, 0x00, 0x03, b'a', b'b', b'c'];
        let want = some("192.168.0.1:56324", "10.0.0.2:443");
        assert_eq!(whole(&v2(1, 0x11, &v4), b"\x16\x03"), want);
        assert_eq!(whole(&v2(1, 0x11, &[&v4, noop_tlv].concat()), b""), want);
        let mut v6 = [0u8; 36];
        (v6[0], v6[1], v6[15], v6[31]) = (0x20, 0x01, 1, 2);
        v6[32..].copy_from_slice(&[0xFF, 0xFF, 0, 80]);
        let want = some("[2001::1]:65535", "[::2]:80");
        assert_eq!(whole(&v2(1, 0x21, &v6), b"x"), want);
        assert_eq!(whole(&v2(1, 0x21, &[&v6, noop_tlv].concat()), b""), want);
    }

    #[test]
    fn v2_without_usable_addresses() {
        let v4 = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        assert_eq!(whole(&v2(0, 0x00, &[]), b"x"), (None, None)); // LOCAL: a health check
        assert_eq!(whole(&v2(0, 0x11, &v4), b""), (None, None));
        assert_eq!(whole(&v2(0, 0x21, &[1; 36]), b""), (None, None));
        assert_eq!(whole(&v2(0, 0xFF, &[9; 5]), b""), (None, None));
        assert_eq!(whole(&v2(1, 0x00, &[]), b""), (None, None)); // AF_UNSPEC
        assert_eq!(whole(&v2(1, 0x31, &[b'/'; 216]), b""), (None, None)); // AF_UNIX
        assert_eq!(whole(&v2(1, 0x12, &v4), b""), (None, None)); // DGRAM
    }

    #[test]
    fn v2_bad_headers_are_refused_from_the_fixed_part() {
        let v4 = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        let mut version_1 = v2(1, 0x11, &v4);
        version_1[12] = 0x11;
        assert_eq!(reason(&version_1[..13]), V2_VERSION);
        assert_eq!(reason(&v2(2, 0x11, &v4)[..13]), V2_COMMAND);
        assert_eq!(reason(&v2(0xF, 0x11, &v4)[..13]), V2_COMMAND);
        assert_eq!(reason(&v2(1, 0x41, &v4)[..14]), V2_FAMILY);
        assert_eq!(reason(&v2(1, 0x13, &v4)[..14]), V2_FAMILY);
        assert_eq!(reason(&v2(1, 0x11, &v4[..11])[..16]), V2_SHORT);
        assert_eq!(reason(&v2(1, 0x21, &[0; 35])[..16]), V2_SHORT);
        assert_eq!(reason(&v2(1, 0x31, &[0; 215])[..16]), V2_SHORT);
        let biggest = v2(1, 0x11, &[0; MAX_HEADER - V2_FIXED]);
        assert_eq!(whole(&biggest, b""), some("0.0.0.0:0", "0.0.0.0:0"));
        let over = v2(0, 0, &[0; MAX_HEADER - V2_FIXED + 1]);
        assert_eq!(reason(&over[..16]), V2_TOO_LONG);
    }

    proptest! {
        /// A verdict never changes as more bytes arrive (an error stays an error, a complete
        /// header stays the same), and nothing panics.
        #[test]
        fn more_bytes_never_change_a_verdict(
            start in prop::sample::select(vec![
                &b""[..], b"PROXY ", b"PROXY TCP4 1.2.3.4 ", b"PROXY TCP6 ::1 ", b"PROXY UNKNOWN",
                b"\r\n\r\n\0\r\nQUIT\n\x21", b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00",
            ]),
            rest in prop::collection::vec(any::<u8>(), 0..160),
        ) {
            let buf = [start, &rest].concat();
            let last = parse(&buf);
            for end in 0..buf.len() {
                match parse(&buf[..end]) {
                    Err(_) => prop_assert!(last.is_err(), "{end}: {last:?}"),
                    Ok(Parsed::Complete { header, len }) => {
                        prop_assert!(len <= end);
                        prop_assert_eq!(&last, &Ok(Parsed::Complete { header, len }));
                    }
                    Ok(Parsed::Incomplete) => {}
                }
            }
        }

        #[test]
        fn generated_headers_parse_back(
            (text, v6) in any::<(bool, bool)>(),
            (src, dst, ports) in any::<([u8; 16], [u8; 16], [u16; 2])>(),
            tlvs in prop::collection::vec(any::<u8>(), 0..300),
            tail in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let (n, tcp) = if v6 { (16, 6) } else { (4, 4) };
            let ip = |b: &[u8; 16]| if v6 { IpAddr::from(*b) } else { IpAddr::from([b[0], b[1], b[2], b[3]]) };
            let (s, d) = (SocketAddr::new(ip(&src), ports[0]), SocketAddr::new(ip(&dst), ports[1]));
            let header = if text {
                let (s, d) = (s.ip(), d.ip());
                format!("PROXY TCP{tcp} {s} {d} {} {}\r\n", ports[0], ports[1]).into_bytes()
            } else {
                let ports = [ports[0].to_be_bytes(), ports[1].to_be_bytes()].concat();
                v2(1, if v6 { 0x21 } else { 0x11 }, &[&src[..n], &dst[..n], &ports, &tlvs].concat())
            };
            prop_assert_eq!(whole(&header, &tail), (Some(s), Some(d)));
        }
    }
}
