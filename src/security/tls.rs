//! TLS for the listeners: one `rustls::ServerConfig` built from `[tls]`,
//! usable by the glommio shards (through `futures-rustls`) and by tokio
//! listeners alike. rustls with the `ring` provider: no OpenSSL, no C build.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use thiserror::Error;

use crate::config::TlsConfig;

/// A TLS setting that cannot be used, with the config key that names it.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct TlsError {
    key: &'static str,
    message: String,
}

impl TlsError {
    fn new(key: &'static str, message: impl Into<String>) -> TlsError {
        TlsError {
            key,
            message: message.into(),
        }
    }

    /// The config key at fault (`tls.cert_file`, `tls.key_file`, ...).
    pub fn key(&self) -> &'static str {
        self.key
    }
}

/// The crypto provider of every TLS endpoint: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the PEM files named by `[tls]` and builds the server side of TLS
/// 1.2 and 1.3: the certificate chain and its key (checked to match), and
/// with `client_ca_file`, client certificates verified against that CA.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs("tls.cert_file", &tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        TlsError::new(
            "tls.key_file",
            format!(
                "cannot read a private key from {}: {e}",
                tls.key_file.display()
            ),
        )
    })?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::new("tls", e.to_string()))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("tls.client_ca_file", path)? {
                roots.add(c).map_err(|e| {
                    TlsError::new(
                        "tls.client_ca_file",
                        format!("{}: not a usable CA certificate: {e}", path.display()),
                    )
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if tls.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::new("tls.client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Fails when the key cannot be loaded or is not the certificate's.
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::new(
            "tls.key_file",
            format!(
                "{} does not fit the certificate in {}: {e}",
                tls.key_file.display(),
                tls.cert_file.display()
            ),
        )
    })?;
    Ok(Arc::new(config))
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |e: &dyn std::fmt::Display| {
        TlsError::new(
            key,
            format!("cannot read PEM certificates from {}: {e}", path.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no CERTIFICATE section found"));
    }
    Ok(certs)
}

/// The subject CN of the client's verified certificate, if it sent one:
/// the login of a mutual-TLS client. rustls has verified the chain by the
/// time the handshake completes; only the name is read here.
pub fn peer_login(conn: &ServerConnection) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}
