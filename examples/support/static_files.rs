//! http_hello's static file route (`--root DIR`): `GET` and `HEAD` of the regular files under
//! a root directory, with one byte range. The file is opened here, on the worker that runs
//! the handler; its body leaves as a [`FileRegion`] (`sendfile(2)` on plain TCP and Unix
//! sockets), never read into memory.
//!
//! What a path may name: its segments, percent-decoded, each a plain file name (after a
//! trailing `/` is cut off: a directory, so a 404). A segment that is empty (`//`, so no
//! absolute path), `.` or `..`, or that holds a NUL or a backslash, and a
//! `%` that does not encode a byte or that encodes `.`, `/`, `\` or NUL, is a 400. The path is
//! then resolved (symbolic links followed) and must still lie under the root, or it is a 404
//! like a missing file, a directory or anything else that is not a regular file. (A link
//! swapped in between the check and the open is not guarded against: a server that must
//! resist that opens each segment with `openat(O_NOFOLLOW)`.)

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use reactor_pool::{Body, FileRegion};

use super::Response;

/// The directory files are served from, resolved once at start.
#[derive(Debug, Clone)]
pub struct Root(PathBuf);

impl Root {
    /// `dir`, which must be a directory.
    ///
    /// # Errors
    ///
    /// `dir` cannot be resolved or is not a directory.
    pub fn new(dir: &Path) -> std::io::Result<Root> {
        let dir = dir.canonicalize()?;
        if !dir.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Ok(Root(dir))
    }

    /// The answer to a `GET` (`get`) or `HEAD` of `path` (the request target after the
    /// route's prefix, its query cut off), with the request's `Range` header. A `HEAD`
    /// ignores the range (RFC 9110 section 14.2) and its body is dropped by the codec.
    pub fn serve(&self, path: &str, range: Option<&str>, get: bool) -> Response {
        let Some(relative) = relative_path(path) else {
            return Response::text(400, "Bad Request\n");
        };
        if path.is_empty() || path.ends_with('/') {
            // A directory, or nothing.
            return Response::text(404, "Not Found\n");
        }
        let Some((file, len)) = self.open(&relative) else {
            return Response::text(404, "Not Found\n");
        };
        let content_type = content_type(&relative);
        let (status, offset, count, content_range) =
            match range.filter(|_| get).map(|value| byte_range(value, len)) {
                None | Some(Range::Whole) => (200, 0, len, None),
                Some(Range::Part(first, last)) => (
                    206,
                    first,
                    last - first + 1,
                    Some(format!("bytes {first}-{last}/{len}")),
                ),
                Some(Range::Unsatisfiable) => {
                    let mut response = Response::text(416, "Range Not Satisfiable\n");
                    response.headers = format!("Content-Range: bytes */{len}\r\n");
                    return response;
                }
            };
        let mut headers = String::from("Accept-Ranges: bytes\r\n");
        if let Some(content_range) = content_range {
            headers.push_str(&format!("Content-Range: {content_range}\r\n"));
        }
        Response {
            status,
            content_type,
            headers,
            body: Body::File(FileRegion::new(file, offset, count)),
        }
    }

    /// Opens the regular file at `relative` under the root, with its length; `None` when it
    /// is missing, not a regular file, or resolves outside the root.
    fn open(&self, relative: &Path) -> Option<(File, u64)> {
        let path = self.0.join(relative).canonicalize().ok()?;
        if !path.starts_with(&self.0) {
            return None;
        }
        let file = File::open(&path).ok()?;
        // The length of what was opened, not of what the path names now.
        let meta = file.metadata().ok()?;
        meta.is_file().then_some((file, meta.len()))
    }
}

/// `path` as a path relative to the root, or `None` when it may not name a file there.
fn relative_path(path: &str) -> Option<PathBuf> {
    // A trailing `/` (a directory, so a 404 in the end) is no empty segment.
    let path = path.strip_suffix('/').unwrap_or(path);
    let mut relative = PathBuf::new();
    if path.is_empty() {
        return Some(relative);
    }
    for segment in path.split('/') {
        let name = percent_decode(segment)?;
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.iter().any(|&b| b == 0 || b == b'\\')
        {
            return None;
        }
        relative.push(OsStr::from_bytes(&name));
    }
    Some(relative)
}

/// `segment` with its `%XX` escapes decoded; `None` for a `%` that is not followed by two
/// hex digits or that encodes a byte a file name must not hide (`.`, `/`, `\`, NUL).
fn percent_decode(segment: &str) -> Option<Vec<u8>> {
    let mut bytes = segment.bytes();
    let mut name = Vec::with_capacity(segment.len());
    while let Some(b) = bytes.next() {
        if b != b'%' {
            name.push(b);
            continue;
        }
        let hex = [bytes.next()?, bytes.next()?];
        let byte = u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?;
        if matches!(byte, b'.' | b'/' | b'\\' | 0) {
            return None;
        }
        name.push(byte);
    }
    Some(name)
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// No range this server honours (another unit, several ranges, bad syntax): the whole
    /// file, 200.
    Whole,
    /// Bytes `first..=last`, 206.
    Part(u64, u64),
    /// A range that starts past the end (or asks for the last 0 bytes), 416.
    Unsatisfiable,
}

/// One range of RFC 9110 section 14.1.2: `bytes=a-b`, `bytes=a-` or `bytes=-n`.
fn byte_range(value: &str, len: u64) -> Range {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || len == 0 {
                Range::Unsatisfiable
            } else {
                Range::Part(len - n.min(len), len - 1)
            }
        }
        // bytes=a-: from a to the end.
        (Some(first), None) if last.is_empty() => {
            if first >= len {
                Range::Unsatisfiable
            } else {
                Range::Part(first, len - 1)
            }
        }
        // bytes=a-b, b clamped to the end; b < a is no valid range.
        (Some(first), Some(last)) if first <= last => {
            if first >= len {
                Range::Unsatisfiable
            } else {
                Range::Part(first, last.min(len - 1))
            }
        }
        _ => Range::Whole,
    }
}

/// The Content-Type of a file, by its extension.
fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(OsStr::to_str) {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}
