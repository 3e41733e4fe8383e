//! The node's certificates: read from the directory `stockd certs` made
//! (`ca.crt`, `node-<id>.crt`, `node-<id>.key`), checked, turned into the TLS
//! settings of both planes and of the peer client, and reloaded without a
//! restart when the files change (polled every `tls-reload-ms`) or on SIGHUP.
//!
//! - Client plane: a client certificate is optional at the handshake (a
//!   caller without one reaches gRPC health only; `security` decides).
//! - Peer plane: a certificate signed by the CA is required.
//! - A reload that fails (a missing key, a certificate of another CA than
//!   its key...) keeps the previous settings and logs one error per change.
//! - New connections use the reloaded settings; open ones keep theirs.

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use raft::NodeId;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::PrivateKeyDer;
use stockd_proto::roles::Role;
use thiserror::Error;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::security;
use crate::security::ConnInfo;

/// Largest certificate or key file read.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most TLS handshakes under way on one listener; more connections wait in
/// the kernel's accept queue.
pub const HANDSHAKES_MAX: usize = 256;
/// Time a client gets to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A node certificate that expires sooner than this is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("failed to read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid TLS files ({path}): {reason}")]
    Invalid { path: String, reason: String },
}

/// Which plane a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Client,
    Peer,
}

/// The three files of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// `ca.crt`, `node-<id>.crt`, `node-<id>.key` of `dir`.
    pub fn in_dir(dir: &Path, node: NodeId) -> CertFiles {
        CertFiles { ca: dir.join("ca.crt"), cert: dir.join(format!("node-{node}.crt")), key: dir.join(format!("node-{node}.key")) }
    }
}

/// The settings made from one version of the files.
struct Loaded {
    digest: [u8; 32],
    client_plane: Arc<ServerConfig>,
    peer_plane: Arc<ServerConfig>,
    peer_client: tonic::transport::ClientTlsConfig,
    /// "CN=node-1, OU=peer, O=stockd, valid until ..."
    summary: String,
}

/// A node's TLS settings, reloadable.
pub struct NodeTls {
    files: CertFiles,
    current: RwLock<Arc<Loaded>>,
    /// Bumped by every successful reload: the peer client reconnects.
    generation: AtomicU64,
    /// Digest of the last contents that failed to load (logged once).
    last_failure: Mutex<Option<[u8; 32]>>,
}

impl NodeTls {
    /// Loads the files; an error here stops the node from starting.
    pub fn load(files: CertFiles) -> Result<Arc<NodeTls>, TlsError> {
        let loaded = build(&files, &read_all(&files)?)?;
        tracing::info!(certificate = %loaded.summary, ca = %files.ca.display(), "TLS on both planes");
        Ok(Arc::new(NodeTls { files, current: RwLock::new(Arc::new(loaded)), generation: AtomicU64::new(0), last_failure: Mutex::new(None) }))
    }

    fn current(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The settings for new connections of `plane`.
    pub fn server_config(&self, plane: Plane) -> Arc<ServerConfig> {
        let current = self.current();
        match plane {
            Plane::Client => current.client_plane.clone(),
            Plane::Peer => current.peer_plane.clone(),
        }
    }

    /// The peer client's settings (this node's certificate as its identity).
    pub fn peer_client_config(&self) -> tonic::transport::ClientTlsConfig {
        self.current().peer_client.clone()
    }

    /// Number of reloads so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the files again; installs them when they changed and are valid.
    /// `Ok(true)`: new settings installed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.files)?;
        if digest(&contents) == self.current().digest {
            return Ok(false);
        }
        let loaded = build(&self.files, &contents)?;
        tracing::info!(certificate = %loaded.summary, "TLS certificates reloaded");
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// [`NodeTls::reload`], logging a failure once per new file contents.
    fn reload_logged(&self) {
        if let Err(error) = self.reload() {
            let failed = read_all(&self.files).ok().map(|c| digest(&c));
            let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
            if failed.is_none() || *last != failed {
                tracing::error!(%error, "TLS certificates not reloaded; the previous ones stay in use");
                *last = failed;
            }
        }
    }

    /// Reloads every `interval` when the files changed, and at once on
    /// SIGHUP, until the task is aborted.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| tracing::warn!(error = %e, "cannot watch SIGHUP; certificate files are still polled"))
                .ok();
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let hup = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = hup => tracing::info!("SIGHUP: reloading the TLS certificates"),
                }
                tls.reload_logged();
            }
        })
    }
}

/// The three files' contents.
struct Contents {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read_all(files: &CertFiles) -> Result<Contents, TlsError> {
    Ok(Contents { ca: read_pem(&files.ca)?, cert: read_pem(&files.cert)?, key: read_pem(&files.key)? })
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |reason: String| TlsError::Read { path: path.display().to_string(), reason };
    let meta = std::fs::metadata(path).map_err(|e| read_error(e.to_string()))?;
    if meta.len() > PEM_FILE_BYTES_MAX {
        return Err(read_error(format!("larger than {PEM_FILE_BYTES_MAX} bytes")));
    }
    std::fs::read(path).map_err(|e| read_error(e.to_string()))
}

fn digest(contents: &Contents) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in [&contents.ca, &contents.cert, &contents.key] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn build(files: &CertFiles, contents: &Contents) -> Result<Loaded, TlsError> {
    let invalid = |path: &Path, reason: String| TlsError::Invalid { path: path.display().to_string(), reason };
    let cas = CertificateDer::pem_slice_iter(&contents.ca).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(&files.ca, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&contents.cert).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(&files.cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|e| invalid(&files.key, e.to_string()))?;
    if cas.is_empty() {
        return Err(invalid(&files.ca, "holds no certificate".into()));
    }
    let Some(leaf) = chain.first() else { return Err(invalid(&files.cert, "holds no certificate".into())) };
    let summary = check_node_certificate(leaf).map_err(|reason| invalid(&files.cert, reason))?;
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| invalid(&files.ca, e.to_string()))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = |require_client_cert: bool| -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let verifier = if require_client_cert { verifier } else { verifier.allow_unauthenticated() };
        let verifier = verifier.build().map_err(|e| invalid(&files.ca, e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&files.cert, e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| invalid(&files.key, format!("does not go with {}: {e}", files.cert.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    };
    let peer_client = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&contents.ca))
        .identity(tonic::transport::Identity::from_pem(&contents.cert, &contents.key));
    Ok(Loaded { digest: digest(contents), client_plane: server(false)?, peer_plane: server(true)?, peer_client, summary })
}

/// A node's own certificate must carry the peer role and be in its validity
/// period; returns a one-line summary.
fn check_node_certificate(der: &CertificateDer<'_>) -> Result<String, String> {
    let caller = security::caller_from_certificate(der);
    if caller.role != Some(Role::Peer) {
        return Err(format!("{} is not a node certificate (its OU must be `peer`; `stockd certs` makes node-<id>.crt)", caller.subject));
    }
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let validity = cert.validity();
    let not_after = validity.not_after.to_datetime();
    if !validity.is_valid() {
        return Err(format!("{} is outside its validity ({} to {})", caller.subject, validity.not_before, validity.not_after));
    }
    if validity.time_to_expiration().is_some_and(|left| left.whole_seconds() < EXPIRY_WARNING.as_secs() as i64) {
        tracing::warn!(certificate = %caller.subject, %not_after, "the node certificate expires within a week");
    }
    Ok(format!("{}, valid until {}", caller.subject, validity.not_after))
}

/// A TLS connection accepted by a node, with what its handshake proved.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: ConnInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The connections of `listener` whose TLS handshake succeeded, with the
/// settings current at each accept. Handshakes run concurrently (at most
/// [`HANDSHAKES_MAX`], each within [`HANDSHAKE_TIMEOUT`]); a refused one is
/// logged at debug level and dropped. Ends when the stream is dropped.
pub fn incoming(listener: TcpListener, tls: Arc<NodeTls>, plane: Plane) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(HANDSHAKES_MAX);
    tokio::spawn(accept_loop(listener, tls, plane, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(listener: TcpListener, tls: Arc<NodeTls>, plane: Plane, tx: mpsc::Sender<io::Result<TlsConn>>) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors, say: pause instead of spinning.
                tracing::warn!(error = %e, ?plane, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config(plane));
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let caller =
                        stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|leaf| Arc::new(security::caller_from_certificate(leaf)));
                    let info = ConnInfo { remote: Some(remote), caller };
                    let _ = tx.send(Ok(TlsConn { stream, info })).await;
                }
                Ok(Err(e)) => tracing::debug!(%remote, ?plane, error = %e, "TLS handshake refused"),
                Err(_) => tracing::debug!(%remote, ?plane, "TLS handshake timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::certs::create(&crate::certs::CertRequest { out: dir.path().to_path_buf(), nodes: vec![1, 2], hosts: Vec::new(), days: 2 }).expect("certs");
        dir
    }

    #[test]
    fn a_node_loads_its_own_certificate_and_refuses_others() {
        let dir = certs();
        let tls = NodeTls::load(CertFiles::in_dir(dir.path(), 1)).expect("node 1 loads");
        assert_eq!(tls.generation(), 0);
        assert!(!tls.reload().expect("same files"), "unchanged files are no reload");

        let client_cert = CertFiles { ca: dir.path().join("ca.crt"), cert: dir.path().join("checkout.crt"), key: dir.path().join("checkout.key") };
        let error = NodeTls::load(client_cert).err().expect("a client certificate is no node certificate").to_string();
        assert!(error.contains("not a node certificate"), "{error}");

        let mismatched = CertFiles { key: dir.path().join("node-2.key"), ..CertFiles::in_dir(dir.path(), 1) };
        let error = NodeTls::load(mismatched).err().expect("another node's key").to_string();
        assert!(error.contains("node-2.key"), "{error}");

        let missing = CertFiles::in_dir(dir.path(), 9);
        let error = NodeTls::load(missing).err().expect("no such node").to_string();
        assert!(error.contains("node-9.crt"), "{error}");
    }

    #[test]
    fn a_changed_valid_set_is_installed_and_a_broken_one_is_not() {
        let dir = certs();
        let tls = NodeTls::load(CertFiles::in_dir(dir.path(), 1)).expect("loads");
        crate::certs::create(&crate::certs::CertRequest { out: dir.path().to_path_buf(), nodes: vec![1], hosts: Vec::new(), days: 2 }).expect("new leaves");
        assert!(tls.reload().expect("valid"), "new certificates are installed");
        assert_eq!(tls.generation(), 1);
        std::fs::write(dir.path().join("node-1.key"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").expect("write");
        assert!(tls.reload().is_err(), "a broken key is refused");
        assert_eq!(tls.generation(), 1, "and the last good set stays");
    }
}
