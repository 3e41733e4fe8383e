//! TLS of a client: the CA that signed the nodes' certificates, and the
//! client's own certificate, whose subject names its role (see
//! `stockd_proto::roles`). Without a certificate the client is anonymous and
//! reaches gRPC health only.
//!
//! The files are the ones `stockd certs --out DIR` writes: `ca.crt`, and
//! `<role>.crt` / `<role>.key` for each client role.

use std::path::Path;
use std::path::PathBuf;

use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Identity;

use crate::ClientError;

/// Largest certificate or key file read (a PEM chain is a few KiB).
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// The TLS settings of a [`crate::Client`]. PEM contents, read once.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    ca_pem: Vec<u8>,
    /// Certificate chain and private key, PEM.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Where it came from, for messages ("certs/checkout.crt").
    source: String,
}

impl std::fmt::Debug for TlsConfig {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("source", &self.source).field("anonymous", &self.identity.is_none()).finish()
    }
}

impl TlsConfig {
    /// `ca.crt` and `<role>.crt` / `<role>.key` from a directory made by
    /// `stockd certs`.
    pub fn from_dir(dir: &Path, role: &str) -> Result<TlsConfig, ClientError> {
        if role.is_empty() || role.contains(['/', '\\', '.']) {
            return Err(ClientError::InvalidConfig(format!("TLS: `{role}` is not a role name")));
        }
        let cert = dir.join(format!("{role}.crt"));
        let key = dir.join(format!("{role}.key"));
        TlsConfig::from_files(&dir.join("ca.crt"), Some((&cert, &key)))
    }

    /// A CA file and, unless anonymous, a certificate and its key.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<TlsConfig, ClientError> {
        let ca_pem = read_pem(ca)?;
        let (identity, source) = match identity {
            Some((cert, key)) => (Some((read_pem(cert)?, read_pem(key)?)), cert.display().to_string()),
            None => (None, format!("{} (anonymous)", ca.display())),
        };
        Ok(TlsConfig { ca_pem, identity, source })
    }

    /// From PEM text already in memory.
    pub fn from_pem(ca_pem: Vec<u8>, identity: Option<(Vec<u8>, Vec<u8>)>) -> TlsConfig {
        TlsConfig { ca_pem, identity, source: "PEM in memory".to_owned() }
    }

    /// True when no client certificate is presented.
    pub fn is_anonymous(&self) -> bool {
        self.identity.is_none()
    }

    /// Where the certificate came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn tonic_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ClientError> {
    let invalid = |message: String| ClientError::InvalidConfig(format!("TLS: {}: {message}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
    if meta.len() > PEM_FILE_BYTES_MAX {
        return Err(invalid(format!("larger than {PEM_FILE_BYTES_MAX} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(invalid("not a PEM file".to_owned()));
    }
    Ok(bytes)
}

/// The certificate directory of a `stockd dev` cluster started in `dir`.
pub fn dev_certs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("certs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_bad_role_names_are_config_errors() {
        let dir = std::env::temp_dir().join(format!("stockd-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let error = TlsConfig::from_dir(&dir, "checkout").expect_err("no files");
        assert!(error.to_string().contains("ca.crt"), "{error}");
        assert!(TlsConfig::from_dir(&dir, "../etc").is_err());
        std::fs::write(dir.join("ca.crt"), b"not pem").expect("write");
        let error = TlsConfig::from_files(&dir.join("ca.crt"), None).expect_err("not PEM");
        assert!(error.to_string().contains("not a PEM file"), "{error}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let tls = TlsConfig::from_pem(b"-----BEGIN CERTIFICATE-----".to_vec(), Some((b"cert".to_vec(), b"SECRET KEY".to_vec())));
        assert!(!format!("{tls:?}").contains("SECRET"));
    }
}
