//! Test certificates (rcgen) and a blocking STOMP client over rustls.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brokk::protocol::stomp::{parse, Frame, Limits, Parsed, Version};
use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA and what it signed, written as PEM files into `dir`.
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    /// A new CA named `name`; `name.pem` in `dir` is its certificate.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        let cn = self
            .ca
            .params()
            .distinguished_name
            .get(&DnType::CommonName)
            .map(|v| match v {
                rcgen::DnValue::Utf8String(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap();
        self.dir.join(format!("{cn}.pem"))
    }

    /// Signs a certificate for `cn` (a server's for localhost/127.0.0.1,
    /// or a client's); returns the (cert, key) PEM file paths.
    pub fn issue(&self, cn: &str, server: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let sans = if server {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (
            self.dir.join(format!("{cn}.crt")),
            self.dir.join(format!("{cn}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A client config trusting `ca`, with an optional client certificate.
pub fn client_config(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(brokk::security::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some((c, k)) => {
            let chain = CertificateDer::pem_file_iter(c)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(k).unwrap())
                .unwrap()
        }
    };
    Arc::new(config)
}

pub struct TlsClient {
    pub stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: BytesMut,
    pub connected: Option<Frame>,
}

/// A read that ended for its timeout, not because of the peer.
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// How a read ended when a frame was not there.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// End of stream, a reset or a TLS alert: the broker closed it.
    Closed,
    /// Nothing within the deadline.
    Silent,
}

impl TlsClient {
    /// Connects over TLS (the handshake runs with the first write) and
    /// sends CONNECT with `headers`; the reply, if any, is in `connected`.
    pub fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        headers: &[(&str, &str)],
    ) -> TlsClient {
        let tcp = TcpStream::connect(addr).unwrap();
        let conn =
            rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
                .unwrap();
        let mut c = TlsClient {
            stream: rustls::StreamOwned::new(conn, tcp),
            buf: BytesMut::new(),
            connected: None,
        };
        let mut f = String::from("CONNECT\naccept-version:1.2\nhost:localhost\n");
        for (k, v) in headers {
            f.push_str(&format!("{k}:{v}\n"));
        }
        f.push_str("\n\0");
        if c.stream.write_all(f.as_bytes()).is_ok() {
            c.connected = c.recv().ok();
        }
        c
    }

    pub fn is_connected(&self) -> bool {
        matches!(&self.connected, Some(f) if f.command.as_str() == "CONNECTED")
    }

    pub fn frame(&mut self, command: &str, headers: &[(&str, &str)], body: &[u8]) {
        let bytes = super::frame_bytes(command, headers, body);
        self.stream.write_all(&bytes).unwrap();
    }

    /// The next frame within 10 s, or how the connection ended.
    pub fn recv(&mut self) -> Result<Frame, Ended> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match parse(&mut self.buf, Version::V1_2, &Limits::default()) {
                Ok(Some(Parsed::Frame(f))) => return Ok(f),
                Ok(Some(Parsed::Heartbeat)) => continue,
                Ok(None) => {}
                Err(e) => panic!("broker sent a malformed frame: {e}"),
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Ended::Silent);
            }
            self.stream.sock.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Ended::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => return Err(Ended::Silent),
                Err(_) => return Err(Ended::Closed),
            }
        }
    }

    pub fn expect(&mut self, command: &str) -> Frame {
        let f = self
            .recv()
            .unwrap_or_else(|e| panic!("expected {command}, got {e:?}"));
        assert_eq!(f.command.as_str(), command, "{f:?}");
        f
    }
}
