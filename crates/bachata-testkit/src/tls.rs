//! Throw-away TLS material for tests: a certificate authority and a server
//! certificate it signed for `127.0.0.1` and `localhost`, as PEM files in a
//! temporary directory (removed on drop).
//!
//! ```ignore
//! let ca = bachata_testkit::tls::TestCa::new();
//! // redis-server --tls-cert-file ca.cert_file() --tls-key-file ca.key_file() ...
//! // a client trusts ca.ca_file() (or ca.ca_pem()).
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// See the module docs.
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
    ca_pem: String,
}

impl TestCa {
    /// Generates the CA and the server certificate and writes `ca.pem`,
    /// `server.pem` and `server.key` into a new temporary directory.
    /// Panics when that fails (a test fixture).
    pub fn new() -> TestCa {
        TestCa::make(false)
    }

    /// Like [`TestCa::new`], with a server certificate that expired in
    /// 2001 (for the tests of refusing it).
    pub fn expired() -> TestCa {
        TestCa::make(true)
    }

    fn make(expired: bool) -> TestCa {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bachata test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("self-signed CA");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bachata-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create tls dir {}: {e}", dir.display()));
        let ca_pem = ca.pem();
        for (name, text) in [
            ("ca.pem", ca_pem.as_str()),
            ("server.pem", cert.pem().as_str()),
            ("server.key", key.serialize_pem().as_str()),
        ] {
            std::fs::write(dir.join(name), text)
                .unwrap_or_else(|e| panic!("write {name} in {}: {e}", dir.display()));
        }
        TestCa { dir, ca_pem }
    }

    /// The CA's certificate (PEM), for a client to trust.
    pub fn ca_pem(&self) -> &[u8] {
        self.ca_pem.as_bytes()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server's certificate (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
