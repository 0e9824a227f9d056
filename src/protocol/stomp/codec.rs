//! Incremental STOMP frame parser.
//!
//! Split in two as in mini-redis: a cheap scan that decides whether a whole
//! frame is buffered (and enforces the limits before anything is allocated),
//! then a parse that slices headers and body out of the frozen frame bytes.
//! A partial frame costs nothing but the scan.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::frame::{Command, Frame, Header, Version};

/// Bounds on what one frame may occupy, as ActiveMQ's transport connector
/// bounds them (`maxFrameSize`, 10 KiB of headers, 1000 headers).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame_size: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 104_857_600,
            max_header_bytes: 10 * 1024,
            max_headers: 1000,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds max_frame_size ({max} bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("header section exceeds {max} bytes")]
    HeadersTooLarge { max: usize },
    #[error("frame has more than {max} headers")]
    TooManyHeaders { max: usize },
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// The peer speaks another protocol on the STOMP port.
    #[error("expected a STOMP frame, got {0}; this port speaks plain STOMP")]
    NotStomp(&'static str),
    #[error("malformed header line '{0}': expected name:value")]
    MalformedHeader(String),
    #[error("invalid escape sequence in header '{0}'")]
    BadEscape(String),
    #[error("content-length '{0}' is not a valid length")]
    BadContentLength(String),
    #[error("frame body is not terminated by a NUL octet")]
    MissingNul,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A bare EOL between frames: a heart-beat from the peer.
    Heartbeat,
    Frame(Frame),
}

/// Takes one frame (or heart-beat) off the front of `buf`, if a whole one is
/// there. `version` decides header unescaping (frames before CONNECTED use
/// 1.0 rules, and CONNECT is never escaped anyway).
pub fn parse(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Option<Parsed>, FrameError> {
    match buf.first() {
        None => return Ok(None),
        Some(b'\n') => {
            let _ = buf.split_to(1);
            return Ok(Some(Parsed::Heartbeat));
        }
        Some(b'\r') => {
            if buf.len() < 2 {
                return Ok(None);
            }
            if buf[1] == b'\n' {
                let _ = buf.split_to(2);
                return Ok(Some(Parsed::Heartbeat));
            }
        }
        _ => {}
    }
    let Some(scan) = scan(buf, version, limits)? else {
        return Ok(None);
    };
    let frame = buf.split_to(scan.total).freeze();
    build(frame, scan.header_end, scan.body_len, version).map(|f| Some(Parsed::Frame(f)))
}

struct Scan {
    /// Offset of the first body byte.
    header_end: usize,
    body_len: usize,
    /// Body plus its NUL terminator.
    total: usize,
}

fn scan(buf: &[u8], version: Version, limits: &Limits) -> Result<Option<Scan>, FrameError> {
    check_command(buf)?;
    let mut pos = 0;
    let mut headers = 0usize;
    let mut content_length: Option<usize> = None;
    let header_end = loop {
        let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
            if buf.len() > limits.max_header_bytes {
                return Err(FrameError::HeadersTooLarge {
                    max: limits.max_header_bytes,
                });
            }
            return Ok(None);
        };
        let line = trim_cr(&buf[pos..pos + nl]);
        let next = pos + nl + 1;
        if next > limits.max_header_bytes {
            return Err(FrameError::HeadersTooLarge {
                max: limits.max_header_bytes,
            });
        }
        if pos > 0 {
            if line.is_empty() {
                break next;
            }
            headers += 1;
            if headers > limits.max_headers {
                return Err(FrameError::TooManyHeaders {
                    max: limits.max_headers,
                });
            }
            // The first content-length wins, as for any repeated header.
            if content_length.is_none() {
                content_length = content_length_of(line, version)?;
            }
        }
        pos = next;
    };
    match content_length {
        Some(len) => {
            // Checked: content-length is the peer's number and may be huge.
            let size = header_end.saturating_add(len);
            if size > limits.max_frame_size {
                return Err(FrameError::TooLarge {
                    size,
                    max: limits.max_frame_size,
                });
            }
            let total = size + 1;
            if buf.len() < total {
                return Ok(None);
            }
            if buf[total - 1] != 0 {
                return Err(FrameError::MissingNul);
            }
            Ok(Some(Scan {
                header_end,
                body_len: len,
                total,
            }))
        }
        None => match memchr::memchr(0, &buf[header_end..]) {
            Some(len) => Ok(Some(Scan {
                header_end,
                body_len: len,
                total: header_end + len + 1,
            })),
            None if buf.len() > limits.max_frame_size => Err(FrameError::TooLarge {
                size: buf.len(),
                max: limits.max_frame_size,
            }),
            None => Ok(None),
        },
    }
}

/// Refuses a frame as soon as its first line cannot become a command, not
/// once it is complete: an HTTP request or a TLS handshake sent to this port
/// never ends the way a frame does, and would otherwise be buffered until
/// a limit or a timeout ends it.
fn check_command(buf: &[u8]) -> Result<(), FrameError> {
    let ok = match memchr::memchr(b'\n', buf) {
        Some(nl) => Command::parse(trim_cr(&buf[..nl])).is_some(),
        None => match buf.strip_suffix(b"\r") {
            // Only a whole command may stand before the CR of a CRLF.
            Some(cmd) => Command::parse(cmd).is_some(),
            None => Command::ALL
                .iter()
                .any(|c| c.as_str().as_bytes().starts_with(buf)),
        },
    };
    if ok {
        return Ok(());
    }
    if let Some(what) = foreign_protocol(buf) {
        return Err(FrameError::NotStomp(what));
    }
    let line = memchr::memchr(b'\n', buf).map_or(buf, |nl| trim_cr(&buf[..nl]));
    Err(FrameError::UnknownCommand(lossy(line)))
}

/// Names the protocol a client that is not speaking STOMP speaks, when its
/// first bytes make that plain: an HTTP request line (HTTP/2's preface
/// included) or a TLS handshake record (content type 22, version 3.x).
fn foreign_protocol(buf: &[u8]) -> Option<&'static str> {
    const HTTP: [&[u8]; 10] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
        b"CONNECT ",
        b"PRI * HTTP/2",
    ];
    if buf.starts_with(&[0x16, 0x03]) {
        Some("a TLS handshake")
    } else if HTTP.iter().any(|m| buf.starts_with(m)) {
        Some("an HTTP request")
    } else {
        None
    }
}

/// The value of a `content-length` header line, read the way [`build`]
/// will read the header (1.0 trims whitespace around name and value).
fn content_length_of(line: &[u8], version: Version) -> Result<Option<usize>, FrameError> {
    let Some(colon) = memchr::memchr(b':', line) else {
        return Ok(None);
    };
    let (k, v) = (&line[..colon], &line[colon + 1..]);
    let k = if version == Version::V1_0 {
        k.trim_ascii()
    } else {
        k
    };
    if k != b"content-length" {
        return Ok(None);
    }
    parse_len(v).map(Some)
}

fn parse_len(v: &[u8]) -> Result<usize, FrameError> {
    let s = std::str::from_utf8(v)
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| FrameError::BadContentLength(String::from_utf8_lossy(v).into_owned()))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn build(
    frame: Bytes,
    header_end: usize,
    body_len: usize,
    version: Version,
) -> Result<Frame, FrameError> {
    let head = &frame[..header_end];
    let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
    let raw_cmd = lines.next().unwrap_or_default();
    let command =
        Command::parse(raw_cmd).ok_or_else(|| FrameError::UnknownCommand(lossy(raw_cmd)))?;
    let unescape = version.escapes() && command.escapes_headers();
    let mut headers: Vec<Header> = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let colon =
            memchr::memchr(b':', line).ok_or_else(|| FrameError::MalformedHeader(lossy(line)))?;
        let (k, v) = (&line[..colon], &line[colon + 1..]);
        let (k, v) = if version == Version::V1_0 {
            (k.trim_ascii(), v.trim_ascii())
        } else {
            (k, v)
        };
        headers.push((
            value(&frame, k, unescape, version)?,
            value(&frame, v, unescape, version)?,
        ));
    }
    let body = frame.slice(header_end..header_end + body_len);
    Ok(Frame {
        command,
        headers,
        body,
    })
}

/// A header name or value: a zero-copy slice unless it holds an escape.
fn value(frame: &Bytes, raw: &[u8], unescape: bool, version: Version) -> Result<Bytes, FrameError> {
    if !unescape || memchr::memchr(b'\\', raw).is_none() {
        return Ok(frame.slice_ref(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut it = raw.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'c') => out.push(b':'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'r') if version == Version::V1_2 => out.push(b'\r'),
            _ => return Err(FrameError::BadEscape(lossy(raw))),
        }
    }
    Ok(Bytes::from(out))
}

fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(64)]);
    s.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8], v: Version) -> Result<Option<Parsed>, FrameError> {
        let mut buf = BytesMut::from(input);
        parse(&mut buf, v, &Limits::default())
    }

    fn frame(input: &[u8]) -> Frame {
        match one(input, Version::V1_2) {
            Ok(Some(Parsed::Frame(f))) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn parses_send_with_headers_and_body() {
        let f = frame(b"SEND\ndestination:/queue/a\nreceipt:7\n\nhello\0");
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.header_str("destination"), Some("/queue/a"));
        assert_eq!(f.header_str("receipt"), Some("7"));
        assert_eq!(&f.body[..], b"hello");
    }

    #[test]
    fn content_length_body_may_contain_nul() {
        let f = frame(b"SEND\ndestination:/queue/a\ncontent-length:3\n\na\0b\0");
        assert_eq!(&f.body[..], b"a\0b");
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let f = frame(b"SEND\r\ndestination:/queue/a\r\n\r\nx\0");
        assert_eq!(f.header_str("destination"), Some("/queue/a"));
        assert_eq!(&f.body[..], b"x");
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let full = b"SEND\ndestination:/q\ncontent-length:5\n\nhello\0";
        for cut in 0..full.len() {
            assert_eq!(one(&full[..cut], Version::V1_2), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn eol_between_frames_is_a_heartbeat() {
        assert_eq!(one(b"\n", Version::V1_2), Ok(Some(Parsed::Heartbeat)));
        assert_eq!(one(b"\r\n", Version::V1_2), Ok(Some(Parsed::Heartbeat)));
    }

    #[test]
    fn escapes_decode_in_1_2_and_stay_literal_in_1_0() {
        let f = frame(b"SEND\nk\\cx:a\\nb\\\\c\\r\n\n\0");
        assert_eq!(f.headers[0].0.as_ref(), b"k:x");
        assert_eq!(f.headers[0].1.as_ref(), b"a\nb\\c\r");
        match one(b"SEND\nk:a\\nb\n\n\0", Version::V1_0) {
            Ok(Some(Parsed::Frame(f))) => assert_eq!(f.header("k"), Some(&b"a\\nb"[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_escape_is_an_error() {
        assert!(matches!(
            one(b"SEND\nk:a\\tb\n\n\0", Version::V1_2),
            Err(FrameError::BadEscape(_))
        ));
        assert!(matches!(
            one(b"SEND\nk:a\\rb\n\n\0", Version::V1_1),
            Err(FrameError::BadEscape(_))
        ));
    }

    #[test]
    fn content_length_with_whitespace_counts_in_1_0() {
        let mut buf = BytesMut::from(&b"SEND\n  content-length: 3 \n\na\0b\0"[..]);
        match parse(&mut buf, Version::V1_0, &Limits::default()) {
            Ok(Some(Parsed::Frame(f))) => assert_eq!(&f.body[..], b"a\0b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repeated_header_keeps_first_value() {
        let f = frame(b"SEND\nfoo:1\nfoo:2\n\n\0");
        assert_eq!(f.header_str("foo"), Some("1"));
    }

    #[test]
    fn limits_are_enforced_before_buffering_the_body() {
        let limits = Limits {
            max_frame_size: 10,
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:100\n\n"[..]);
        assert!(matches!(
            parse(&mut buf, Version::V1_2, &limits),
            Err(FrameError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:18446744073709551615\n\n"[..]);
        assert!(matches!(
            parse(&mut buf, Version::V1_2, &Limits::default()),
            Err(FrameError::TooLarge { .. })
        ));
        let mut long_header = b"SEND\n".to_vec();
        long_header.extend_from_slice(&[b'a'; 20_000]);
        let mut buf = BytesMut::from(&long_header[..]);
        assert!(matches!(
            parse(&mut buf, Version::V1_2, &Limits::default()),
            Err(FrameError::HeadersTooLarge { .. })
        ));
    }

    #[test]
    fn malformed_input_is_rejected() {
        assert!(matches!(
            one(b"FOO\n\n\0", Version::V1_2),
            Err(FrameError::UnknownCommand(_))
        ));
        assert!(matches!(
            one(b"SEND\nnocolon\n\n\0", Version::V1_2),
            Err(FrameError::MalformedHeader(_))
        ));
        assert!(matches!(
            one(b"SEND\ncontent-length:x\n\n\0", Version::V1_2),
            Err(FrameError::BadContentLength(_))
        ));
        assert_eq!(
            one(b"SEND\ncontent-length:1\n\nab", Version::V1_2),
            Err(FrameError::MissingNul)
        );
    }

    #[test]
    fn an_unknown_command_is_refused_before_the_frame_is_complete() {
        assert!(matches!(
            one(b"BOGUS", Version::V1_2),
            Err(FrameError::UnknownCommand(c)) if c == "BOGUS"
        ));
        assert!(matches!(
            one(b"SEN\r", Version::V1_2),
            Err(FrameError::UnknownCommand(_))
        ));
        for prefix in [&b"S"[..], b"SUBSC", b"CONNECT", b"CONNECT\r", b"CONNECT\n"] {
            assert_eq!(one(prefix, Version::V1_0), Ok(None), "{prefix:?}");
        }
    }

    #[test]
    fn http_and_tls_are_named_from_their_first_bytes() {
        for http in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST ",
            b"CONNECT host:443 HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(
                one(http, Version::V1_0),
                Err(FrameError::NotStomp("an HTTP request")),
                "{http:?}"
            );
        }
        assert_eq!(
            one(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01], Version::V1_0),
            Err(FrameError::NotStomp("a TLS handshake"))
        );
    }

    #[test]
    fn two_frames_in_one_buffer_parse_in_order() {
        let mut buf = BytesMut::from(&b"SEND\n\na\0\nSEND\n\nb\0"[..]);
        let l = Limits::default();
        let a = parse(&mut buf, Version::V1_2, &l).unwrap().unwrap();
        assert!(matches!(a, Parsed::Frame(ref f) if &f.body[..] == b"a"));
        assert_eq!(
            parse(&mut buf, Version::V1_2, &l).unwrap(),
            Some(Parsed::Heartbeat)
        );
        let b = parse(&mut buf, Version::V1_2, &l).unwrap().unwrap();
        assert!(matches!(b, Parsed::Frame(ref f) if &f.body[..] == b"b"));
    }
}
