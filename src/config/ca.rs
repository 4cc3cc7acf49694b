//! `[forgejo] ca_file`: extra CA certificates for a Forgejo behind a private CA.

use std::path::Path;
use std::sync::Arc;

/// The PEM text of one or more CA certificates, checked when loaded. Cheap to clone; handed to each HTTP
/// client that talks to Forgejo (the API client and the git mirror's).
#[derive(Clone)]
pub struct CaBundle {
    pem: Arc<Vec<u8>>,
    certificates: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").field("certificates", &self.certificates.len()).finish()
    }
}

impl CaBundle {
    /// Reads and checks `path`: every certificate in it must parse, and there must be at least one. The error
    /// says why, for `config check`.
    pub fn load(path: &Path) -> Result<CaBundle, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_pem(pem).map_err(|why| format!("{}: {why}", path.display()))
    }

    pub fn from_pem(pem: Vec<u8>) -> Result<CaBundle, String> {
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
        if certs.is_empty() {
            return Err("holds no certificate (no `-----BEGIN CERTIFICATE-----` block)".into());
        }
        Ok(CaBundle { certificates: certs, pem: Arc::new(pem) })
    }

    /// The PEM text, for TLS clients of other reqwest versions (gix's).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// The certificates, for the API client.
    pub fn certificates(&self) -> &[reqwest::Certificate] {
        &self.certificates
    }
}
