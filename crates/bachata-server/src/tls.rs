//! The TLS listener (`--tls-cert`, `--tls-key`): HTTPS and `wss://` on the
//! same address as the plain listener would have, with rustls (the `ring`
//! provider, as everywhere in bachata).
//!
//! The certificate chain and the key are PEM files, read at start: a
//! missing or unreadable file, a key that does not match the certificate
//! and an expired certificate stop the server with the reason; a
//! certificate that expires within [`EXPIRY_WARNING`] is logged at `warn`.
//! SIGHUP reads both files again ([`Tls::reload`]): new connections get the
//! new certificate, open ones keep theirs, and a failed reload keeps the
//! old certificate and logs why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate closer than this to its end is logged at each (re)load.
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read --tls-cert {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read --tls-key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("--tls-cert {cert} and --tls-key {key} do not go together: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("--tls-cert {path} expired {ago} ago; renew it")]
    Expired { path: PathBuf, ago: String },
}

/// The listener's TLS settings, swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<ServerConfig>,
}

impl Tls {
    /// Reads the files; see the module docs for what stops the start.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let config = server_config(cert, key)?;
        Ok(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(config),
        })
    }

    /// The acceptor for a new connection: the certificate loaded last.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Reads the files again; on success new connections use them, else
    /// the certificate in use stays and the error says why.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        self.current.store(Arc::new(config));
        Ok(())
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let cert_error = |reason: String| TlsError::Cert {
        path: cert.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error("no certificate in the file".into()));
    };
    check_expiry(cert, leaf)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(ring_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    // HTTP/1.1 only (WebSockets and the API need nothing else).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// rustls with *ring*: bachata's crypto provider, for the TLS listener and
/// the HTTP clients of the hooks and the webhook (no C toolchain needed,
/// unlike aws-lc-rs). rustls 0.23.48 deprecates it for lacking post-quantum
/// key exchange; choosing another provider is a decision of its own
/// (docs/security.md), so the deprecation is not a warning here.
#[allow(deprecated)]
pub(crate) fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Refuses an expired leaf certificate; warns when it ends soon.
fn check_expiry(path: &Path, leaf: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| TlsError::Cert {
            path: path.to_owned(),
            reason: format!("not an X.509 certificate: {e}"),
        })?;
    let not_after = parsed.validity().not_after.timestamp();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if not_after <= now {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            ago: humantime::format_duration(Duration::from_secs((now - not_after) as u64))
                .to_string(),
        });
    }
    let left = Duration::from_secs((not_after - now) as u64);
    if left < EXPIRY_WARNING {
        tracing::warn!(
            cert = %path.display(),
            expires_in = %humantime::format_duration(left),
            "the TLS certificate expires soon; renew it and send SIGHUP"
        );
    }
    Ok(())
}
