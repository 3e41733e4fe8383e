//! `stockd certs`: a certificate authority and the certificates of a cluster.
//!
//! Writes into one directory: `ca.crt` / `ca.key` (made once, reused on later
//! runs so that new certificates join the same cluster), `node-<id>.crt/.key`
//! for each node (role `peer`; SANs 127.0.0.1, localhost and the given hosts;
//! usable as server and as client certificate) and `<role>.crt/.key` for each
//! client role. A certificate's role is its subject's organizational unit
//! (`OU=checkout`), see `stockd_proto::roles`.
//!
//! Every file is written to a temporary name and renamed, so a node watching
//! the directory never reads half a file; keys are readable by their owner
//! only.

use std::path::Path;
use std::path::PathBuf;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use stockd_proto::roles::Role;
use thiserror::Error;

/// Organization of every certificate this module makes.
pub const ORGANIZATION: &str = "stockd";
/// Default validity of node and client certificates.
pub const LEAF_DAYS_DEFAULT: u32 = 365;
/// Longest validity accepted for any certificate.
pub const DAYS_MAX: u32 = 3650;
/// Validity of a new CA.
pub const CA_DAYS: u32 = DAYS_MAX;
/// Most nodes and extra host names in one run.
pub const NODES_MAX: usize = 1024;
pub const HOSTS_MAX: usize = 64;

#[derive(Debug, Error)]
pub enum CertError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("failed to {action} {path}: {reason}")]
    Io { action: &'static str, path: String, reason: String },
    #[error("failed to make a certificate for {subject}: {reason}")]
    Generate { subject: String, reason: String },
}

/// What to make.
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub out: PathBuf,
    pub nodes: Vec<u64>,
    /// Extra SANs of the node certificates (IP addresses or DNS names).
    pub hosts: Vec<String>,
    /// Validity of the node and client certificates.
    pub days: u32,
}

/// What was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertReport {
    pub ca_reused: bool,
    /// Files written, in order.
    pub written: Vec<PathBuf>,
}

impl CertRequest {
    fn validate(&self) -> Result<(), CertError> {
        let invalid = |field, reason: String| Err(CertError::Invalid { field, reason });
        if self.nodes.is_empty() || self.nodes.len() > NODES_MAX {
            return invalid("nodes", format!("give 1 to {NODES_MAX} node ids"));
        }
        if self.nodes.contains(&0) {
            return invalid("nodes", "node ids start at 1".into());
        }
        if self.hosts.len() > HOSTS_MAX {
            return invalid("hosts", format!("at most {HOSTS_MAX}"));
        }
        if let Some(bad) = self.hosts.iter().find(|h| h.is_empty() || h.len() > 253 || h.chars().any(|c| c.is_whitespace() || c == ',')) {
            return invalid("hosts", format!("`{bad}` is not a host name or IP address"));
        }
        if self.days == 0 || self.days > DAYS_MAX {
            return invalid("days", format!("must be between 1 and {DAYS_MAX}"));
        }
        Ok(())
    }
}

/// Makes (or reuses) the CA and writes every requested certificate.
pub fn create(request: &CertRequest) -> Result<CertReport, CertError> {
    request.validate()?;
    let out = &request.out;
    std::fs::create_dir_all(out).map_err(|e| io_error("create", out, e))?;
    let mut written = Vec::new();
    let (issuer, ca_reused) = match load_ca(out)? {
        Some(issuer) => (issuer, true),
        None => {
            let (issuer, cert_pem, key_pem) = new_ca()?;
            written.push(write_file(&out.join("ca.key"), &key_pem, true)?);
            written.push(write_file(&out.join("ca.crt"), &cert_pem, false)?);
            (issuer, false)
        }
    };
    let mut sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    sans.extend(request.hosts.iter().filter(|h| !["127.0.0.1", "localhost"].contains(&h.as_str())).cloned());
    for id in &request.nodes {
        let leaf = Leaf { name: format!("node-{id}"), role: Role::Peer, sans: sans.clone(), days: request.days };
        written.extend(leaf.write(out, &issuer)?);
    }
    for role in Role::CLIENTS {
        let leaf = Leaf { name: role.as_str().to_owned(), role, sans: Vec::new(), days: request.days };
        written.extend(leaf.write(out, &issuer)?);
    }
    Ok(CertReport { ca_reused, written })
}

/// The files of node `id` in a certificate directory.
pub fn node_files(dir: &Path, id: u64) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join("ca.crt"), dir.join(format!("node-{id}.crt")), dir.join(format!("node-{id}.key")))
}

/// True when `dir` holds a CA and the certificate and key of each of `nodes`
/// and of every client role.
pub fn complete(dir: &Path, nodes: &[u64]) -> bool {
    let roles_present = Role::CLIENTS.iter().all(|r| dir.join(format!("{r}.crt")).exists() && dir.join(format!("{r}.key")).exists());
    let nodes_present = nodes.iter().all(|id| {
        let (ca, cert, key) = node_files(dir, *id);
        ca.exists() && cert.exists() && key.exists()
    });
    roles_present && nodes_present && dir.join("ca.key").exists()
}

type CaIssuer = Issuer<'static, KeyPair>;

fn load_ca(out: &Path) -> Result<Option<CaIssuer>, CertError> {
    let (cert_path, key_path) = (out.join("ca.crt"), out.join("ca.key"));
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => return Ok(None),
        (true, true) => {}
        _ => {
            return Err(CertError::Invalid {
                field: "out",
                reason: format!("{} holds only one of ca.crt and ca.key; remove it or restore the other", out.display()),
            })
        }
    }
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| io_error("read", &cert_path, e))?;
    let key_pem = std::fs::read_to_string(&key_path).map_err(|e| io_error("read", &key_path, e))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::Invalid { field: "out", reason: format!("{}: {e}", key_path.display()) })?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CertError::Invalid { field: "out", reason: format!("{}: {e}", cert_path.display()) })?;
    Ok(Some(issuer))
}

fn new_ca() -> Result<(CaIssuer, String, String), CertError> {
    let generate = |reason: rcgen::Error| CertError::Generate { subject: "the CA".into(), reason: reason.to_string() };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "stockd CA");
    params.distinguished_name.push(DnType::OrganizationName, ORGANIZATION);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, CA_DAYS);
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    let key_pem = key.serialize_pem();
    Ok((Issuer::new(params, key), cert.pem(), key_pem))
}

/// A node or client certificate.
struct Leaf {
    /// File stem and common name: `node-3`, `checkout`.
    name: String,
    role: Role,
    sans: Vec<String>,
    days: u32,
}

impl Leaf {
    fn write(&self, out: &Path, issuer: &CaIssuer) -> Result<Vec<PathBuf>, CertError> {
        let generate = |reason: rcgen::Error| CertError::Generate { subject: self.name.clone(), reason: reason.to_string() };
        let mut params = CertificateParams::new(self.sans.clone()).map_err(generate)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, self.name.as_str());
        params.distinguished_name.push(DnType::OrganizationalUnitName, self.role.as_str());
        params.distinguished_name.push(DnType::OrganizationName, ORGANIZATION);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if self.role == Role::Peer {
            // A node serves both planes and calls its peers.
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, self.days);
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, issuer).map_err(generate)?;
        // Key first: a watcher that sees the new certificate finds its key.
        let key_path = write_file(&out.join(format!("{}.key", self.name)), &key.serialize_pem(), true)?;
        let cert_path = write_file(&out.join(format!("{}.crt", self.name)), &cert.pem(), false)?;
        Ok(vec![cert_path, key_path])
    }
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that lag this one.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<PathBuf, CertError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| io_error("create", &tmp, e))?;
    file.write_all(contents.as_bytes()).map_err(|e| io_error("write", &tmp, e))?;
    file.sync_all().map_err(|e| io_error("sync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error("rename", path, e))?;
    Ok(path.to_path_buf())
}

fn io_error(action: &'static str, path: &Path, e: std::io::Error) -> CertError {
    CertError::Io { action, path: path.display().to_string(), reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dir: &Path) -> CertRequest {
        CertRequest { out: dir.to_path_buf(), nodes: vec![1, 2], hosts: vec!["10.0.0.7".into(), "db.example".into()], days: 30 }
    }

    #[test]
    fn makes_a_ca_nodes_and_every_role_then_reuses_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = create(&request(dir.path())).expect("certificates");
        assert!(!first.ca_reused);
        for name in ["ca.crt", "ca.key", "node-1.crt", "node-1.key", "node-2.crt", "reader.crt", "checkout.key", "feed.crt", "operator.key"] {
            assert!(dir.path().join(name).exists(), "{name}");
        }
        assert!(complete(dir.path(), &[1, 2]) && !complete(dir.path(), &[3]));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("checkout.key")).expect("key").permissions().mode();
        assert_eq!(mode & 0o077, 0, "keys are private: {mode:o}");
        let ca_before = std::fs::read(dir.path().join("ca.crt")).expect("ca");
        let node_before = std::fs::read(dir.path().join("node-1.crt")).expect("node");
        let second = create(&request(dir.path())).expect("again");
        assert!(second.ca_reused);
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).expect("ca"), ca_before, "the CA is kept");
        assert_ne!(std::fs::read(dir.path().join("node-1.crt")).expect("node"), node_before, "leaves are made anew");
    }

    #[test]
    fn certificates_carry_their_role_and_hosts() {
        let dir = tempfile::tempdir().expect("tempdir");
        create(&request(dir.path())).expect("certificates");
        let pem = std::fs::read(dir.path().join("node-2.crt")).expect("read");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
        let cert = pem.parse_x509().expect("x509");
        let subject = cert.subject().to_string();
        assert!(subject.contains("CN=node-2") && subject.contains("OU=peer"), "{subject}");
        let sans = cert.subject_alternative_name().expect("ext").expect("sans").value.general_names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        for host in ["IPAddress(7f:00:00:01)", "DNSName(localhost)", "IPAddress(0a:00:00:07)", "DNSName(db.example)"] {
            assert!(sans.iter().any(|s| s == host), "{host} in {sans:?}");
        }
    }

    #[test]
    fn bad_requests_name_the_field_and_write_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (bad, field) in [
            (CertRequest { nodes: vec![], ..request(dir.path()) }, "nodes"),
            (CertRequest { nodes: vec![0], ..request(dir.path()) }, "nodes"),
            (CertRequest { hosts: vec!["a b".into()], ..request(dir.path()) }, "hosts"),
            (CertRequest { days: 0, ..request(dir.path()) }, "days"),
        ] {
            let error = create(&bad).expect_err("refused");
            assert!(error.to_string().contains(field), "{error}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        std::fs::write(dir.path().join("ca.crt"), "x").expect("write");
        assert!(create(&request(dir.path())).expect_err("half a CA").to_string().contains("ca.key"));
    }
}
