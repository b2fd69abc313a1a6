//! Client settings and credentials.

use std::time::Duration;

/// How the client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `?channel=` (servers in anonymous mode).
    Channel(String),
    /// A JWT, sent as `?token=`.
    Token(String),
}

/// Client settings. Build with [`ClientConfig::channel`] or
/// [`ClientConfig::token`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's base URL, `ws://host:port` (`/messages` is appended).
    pub url: String,
    pub credentials: Credentials,
    pub device: Option<String>,
    /// Answer 200 when a message is handed over by [`Client::recv`](crate::Client::recv).
    pub auto_ack: bool,
    /// How often to ping; a missing pong for `timeout` means a reconnect.
    pub ping_interval: Duration,
    /// Bound on connecting, on a pong, and the default for receipts.
    pub timeout: Duration,
    /// First reconnect delay; doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up after this many failed reconnects in a row (`None`: never).
    pub max_reconnects: Option<u32>,
    /// With a `wss://` URL: CA certificates (PEM) to trust besides the
    /// system's roots (a private CA, a test one).
    pub ca_pem: Option<Vec<u8>>,
}

impl ClientConfig {
    fn new(url: &str, credentials: Credentials) -> Self {
        ClientConfig {
            url: url.trim_end_matches('/').to_owned(),
            credentials,
            device: None,
            auto_ack: true,
            ping_interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_reconnects: None,
            ca_pem: None,
        }
    }

    /// Connect as `channel` (anonymous mode).
    pub fn channel(url: &str, channel: &str) -> Self {
        Self::new(url, Credentials::Channel(channel.to_owned()))
    }

    /// Connect with a JWT.
    pub fn token(url: &str, token: &str) -> Self {
        Self::new(url, Credentials::Token(token.to_owned()))
    }

    pub fn device(mut self, device: &str) -> Self {
        self.device = Some(device.to_owned());
        self
    }

    /// Trusts the CA certificates in `pem` besides the system's roots
    /// (`wss://` only).
    pub fn ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }

    /// The TLS settings of a `wss://` connection: the system's roots and
    /// [`ClientConfig::ca_pem`]. An unreadable PEM is an error; system
    /// roots that cannot be read are skipped (a private CA may be all
    /// there is).
    pub(crate) fn tls(&self) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(pem) = &self.ca_pem {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the CA file: {e}"))?;
            if certs.is_empty() {
                return Err("the CA file holds no certificate".to_owned());
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("the CA file: {e}"))?;
            }
        }
        let provider = std::sync::Arc::new(ring_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// The full `/messages` URL with the query.
    pub fn endpoint(&self) -> String {
        let (key, value) = match &self.credentials {
            Credentials::Channel(c) => ("channel", c),
            Credentials::Token(t) => ("token", t),
        };
        let mut url = format!("{}/messages?{key}={}", self.url, encode(value));
        if let Some(device) = &self.device {
            url.push_str(&format!("&device={}", encode(device)));
        }
        url
    }
}

/// rustls with *ring*, bachata's crypto provider (no C toolchain needed,
/// unlike aws-lc-rs). rustls 0.23.48 deprecates it for lacking
/// post-quantum key exchange; choosing another provider is a decision of
/// its own (docs/security.md), so the deprecation is not a warning here.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Percent-encodes a query value (every byte but letters and digits).
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
