//! The STOMP frame: a command, ordered headers and a body, all borrowed from
//! the connection's read buffer (`Bytes` slices) so a SEND body travels to
//! every consumer without a copy.

use bytes::{BufMut, Bytes, BytesMut};

/// Protocol version negotiated on CONNECT. It decides header escaping and
/// which ACK headers name a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// 1.0 has no escaping; 1.1 escapes all but `\r`; 1.2 escapes `\r` too.
    pub fn escapes(self) -> bool {
        self != Version::V1_0
    }

    /// The escaping to use for headers of `command` sent to this peer.
    pub fn escaping_for(self, command: Command) -> Option<Version> {
        command.escapes_headers().then_some(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    pub fn parse(raw: &[u8]) -> Option<Command> {
        Some(match raw {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"CONNECTED" => Command::Connected,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// CONNECT and CONNECTED headers are never escaped (STOMP 1.2 §Value Encoding).
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

pub type Header = (Bytes, Bytes);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    /// In wire order; a repeated header keeps its first value for lookups.
    pub headers: Vec<Header>,
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .map(|(_, v)| v.as_ref())
    }

    /// A header's value as a shared slice of the frame (no copy).
    pub fn header_bytes(&self, name: &str) -> Option<Bytes> {
        self.headers
            .iter()
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .map(|(_, v)| v.clone())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn with(mut self, name: &'static str, value: impl Into<Bytes>) -> Frame {
        self.headers
            .push((Bytes::from_static(name.as_bytes()), value.into()));
        self
    }

    /// Serialises the frame for a peer speaking `version`, appending to `out`
    /// so that many frames share one write.
    pub fn encode(&self, version: Version, out: &mut BytesMut) {
        encode_head(self.command, version, &self.headers, out);
        finish_body(&self.body, out);
    }
}

/// Writes command and headers, then `content-length`, and the blank line.
/// Callers append the body with [`finish_body`].
pub fn encode_head(command: Command, version: Version, headers: &[Header], out: &mut BytesMut) {
    out.put_slice(command.as_str().as_bytes());
    out.put_u8(b'\n');
    let escape = version.escaping_for(command);
    // content-length is always written by `finish_body` from the real body.
    for (k, v) in headers
        .iter()
        .filter(|(k, _)| k.as_ref() != b"content-length")
    {
        put_header(out, k, v, escape);
    }
}

/// Writes one `name:value` line, escaping both when the version requires it.
/// `escape` is the peer's version, or None for CONNECT/CONNECTED headers.
pub fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8], escape: Option<Version>) {
    put_value(out, name, escape);
    out.put_u8(b':');
    put_value(out, value, escape);
    out.put_u8(b'\n');
}

pub fn finish_body(body: &[u8], out: &mut BytesMut) {
    out.put_slice(b"content-length:");
    out.put_slice(itoa_buf(body.len()).digits());
    out.put_slice(b"\n\n");
    out.put_slice(body);
    out.put_u8(0);
}

struct ItoaBuf {
    bytes: [u8; 20],
    start: usize,
}

impl ItoaBuf {
    fn digits(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

fn itoa_buf(mut n: usize) -> ItoaBuf {
    let mut bytes = [0u8; 20];
    let mut i = bytes.len();
    loop {
        i -= 1;
        bytes[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ItoaBuf { bytes, start: i }
}

fn put_value(out: &mut BytesMut, v: &[u8], escape: Option<Version>) {
    if !v.iter().any(|b| matches!(b, b'\n' | b'\r' | b':' | b'\\')) {
        out.put_slice(v);
        return;
    }
    match escape {
        Some(Version::V1_1) | Some(Version::V1_2) => {
            for &b in v {
                match b {
                    b'\n' => out.put_slice(b"\\n"),
                    // 1.1 has no escape for CR; a literal one is legal there.
                    b'\r' if escape == Some(Version::V1_2) => out.put_slice(b"\\r"),
                    b':' => out.put_slice(b"\\c"),
                    b'\\' => out.put_slice(b"\\\\"),
                    _ => out.put_u8(b),
                }
            }
        }
        // 1.0 and CONNECT-family frames cannot carry a line break in a value:
        // it would end the header line, so it travels as a space.
        _ => {
            for &b in v {
                out.put_u8(if matches!(b, b'\n' | b'\r') { b' ' } else { b });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_headers_are_escaped_for_1_2_but_not_1_0() {
        let f = Frame::new(Command::Message).with("k", Bytes::from_static(b"a:b\nc"));
        let mut out = BytesMut::new();
        f.encode(Version::V1_2, &mut out);
        assert!(out.starts_with(b"MESSAGE\nk:a\\cb\\nc\ncontent-length:0\n\n\0"));
        let mut out = BytesMut::new();
        f.encode(Version::V1_0, &mut out);
        assert!(out.starts_with(b"MESSAGE\nk:a:b c\n"));
    }

    #[test]
    fn carriage_return_is_escaped_only_in_1_2() {
        let f = Frame::new(Command::Message).with("k", Bytes::from_static(b"a\rb"));
        let mut out = BytesMut::new();
        f.encode(Version::V1_2, &mut out);
        assert!(out.starts_with(b"MESSAGE\nk:a\\rb\n"));
        let mut out = BytesMut::new();
        f.encode(Version::V1_1, &mut out);
        assert!(out.starts_with(b"MESSAGE\nk:a\rb\n"));
    }

    #[test]
    fn every_command_parses_from_its_name() {
        for c in Command::ALL {
            assert_eq!(Command::parse(c.as_str().as_bytes()), Some(c));
        }
    }

    #[test]
    fn content_length_counts_body_bytes() {
        let mut f = Frame::new(Command::Message);
        f.body = Bytes::from_static(b"a\0b");
        let mut out = BytesMut::new();
        f.encode(Version::V1_2, &mut out);
        assert_eq!(&out[..], b"MESSAGE\ncontent-length:3\n\na\0b\0");
    }
}
