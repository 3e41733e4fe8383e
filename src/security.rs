//! Who may call what, decided in one place: the caller's role comes from its
//! TLS client certificate (the subject's OU, see `stockd_proto::roles`), and
//! one tower layer ([`AuthorizeLayer`]) checks it against the role table
//! before any handler runs, on both planes. Handlers only read the
//! [`Caller`] it attaches (for the audit log and the peer-only checks).
//!
//! - No certificate: gRPC health only; everything else UNAUTHENTICATED.
//! - A role outside the RPC's row: PERMISSION_DENIED naming the role and the
//!   RPC.
//! - `--insecure` nodes serve plaintext and check nothing: every caller is
//!   trusted (a warning at start says so).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::LazyLock;
use std::task::Context;
use std::task::Poll;

use stockd_proto::roles;
use stockd_proto::roles::Access;
use stockd_proto::roles::Role;
use tonic::Status;

/// Who is calling, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The certificate subject (`CN=checkout, OU=checkout, O=stockd`), or a
    /// description of its absence.
    pub subject: String,
    /// `None`: no certificate, or one whose OU names no role.
    pub role: Option<Role>,
    /// The node runs `--insecure`: nobody is authenticated, everybody trusted.
    pub insecure: bool,
}

impl Caller {
    /// A node whose certificate proves it is one (or any caller of an
    /// `--insecure` node): what a forwarded risk verdict needs.
    pub fn is_trusted_peer(&self) -> bool {
        self.insecure || self.role == Some(Role::Peer)
    }
}

static INSECURE: LazyLock<Arc<Caller>> =
    LazyLock::new(|| Arc::new(Caller { subject: "unauthenticated (node runs --insecure)".into(), role: None, insecure: true }));
static ANONYMOUS: LazyLock<Arc<Caller>> = LazyLock::new(|| Arc::new(Caller { subject: "anonymous (no certificate)".into(), role: None, insecure: false }));

/// Per TLS connection: what the handshake established.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// `None`: the client presented no certificate.
    pub caller: Option<Arc<Caller>>,
}

/// The caller named by a verified client certificate (DER).
pub fn caller_from_certificate(der: &[u8]) -> Caller {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let subject = cert.subject();
            let role = subject.iter_organizational_unit().find_map(|ou| ou.as_str().ok().and_then(Role::parse));
            Caller { subject: subject.to_string(), role, insecure: false }
        }
        Err(e) => Caller { subject: format!("unreadable certificate ({e})"), role: None, insecure: false },
    }
}

/// Decides one call: the caller to hand to the handler, or the refusal.
pub fn authorize(insecure: bool, path: &str, conn: Option<&ConnInfo>) -> Result<Arc<Caller>, Status> {
    if insecure {
        return Ok(INSECURE.clone());
    }
    let access = roles::access(path).ok_or_else(|| Status::unimplemented(format!("stockd serves no RPC {path}")))?;
    let caller = conn.and_then(|c| c.caller.clone());
    let rpc = path.trim_start_matches('/');
    match (access, caller) {
        (Access::Anyone, caller) => Ok(caller.unwrap_or_else(|| ANONYMOUS.clone())),
        (Access::Roles(_), None) => {
            Err(Status::unauthenticated(format!("{rpc} needs a client certificate signed by the cluster's CA (`stockd certs` makes one per role)")))
        }
        (Access::Roles(_), Some(caller)) => match caller.role {
            Some(role) if access.allows(role) => Ok(caller),
            Some(role) => Err(Status::permission_denied(format!("role {role} may not call {rpc} (certificate {}; see `stockctl roles`)", caller.subject))),
            None => Err(Status::permission_denied(format!(
                "certificate {} names no stockd role (its OU must be one of reader, checkout, feed, operator, peer); {rpc} refused",
                caller.subject
            ))),
        },
    }
}

/// The caller the layer attached to `request`.
pub fn caller<T>(request: &tonic::Request<T>) -> Arc<Caller> {
    // Every served request passed the layer; a missing caller would be a
    // wiring bug, and the safe reading of it is "nobody".
    request.extensions().get::<Arc<Caller>>().cloned().unwrap_or_else(|| ANONYMOUS.clone())
}

/// One audit line for an Admin mutation: who, what, and how it ended.
pub fn audit(caller: &Caller, rpc: &str, detail: &str, outcome: &Result<(), String>) {
    match outcome {
        Ok(()) => tracing::info!(caller = %caller.subject, rpc, detail, "admin mutation done"),
        Err(error) => tracing::warn!(caller = %caller.subject, rpc, detail, %error, "admin mutation refused"),
    }
}

/// The tower layer of both planes' servers.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeLayer {
    insecure: bool,
}

impl AuthorizeLayer {
    pub fn new(insecure: bool) -> Self {
        Self { insecure }
    }
}

impl<S> tower_layer::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner, insecure: self.insecure }
    }
}

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    insecure: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower_service::Service<http::Request<B>> for Authorize<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match authorize(self.insecure, request.uri().path(), request.extensions().get::<ConnInfo>()) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                // The service that was polled ready serves this call.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(request))
            }
            Err(status) => {
                tracing::debug!(path = request.uri().path(), code = ?status.code(), "call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(role: Option<Role>) -> ConnInfo {
        let caller = role.map(|role| Arc::new(Caller { subject: format!("CN={role}"), role: Some(role), insecure: false }));
        ConnInfo { remote: None, caller }
    }

    #[test]
    fn refusals_name_the_role_and_the_rpc() {
        let denied = authorize(false, "/stockd.v1.Admin/LoadModel", Some(&conn(Some(Role::Checkout)))).expect_err("checkout loads no model");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("role checkout") && denied.message().contains("stockd.v1.Admin/LoadModel"), "{}", denied.message());
        let anonymous = authorize(false, "/stockd.v1.Inventory/GetPosition", Some(&conn(None))).expect_err("no certificate");
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        assert!(authorize(false, "/grpc.health.v1.Health/Check", None).is_ok(), "health for anyone");
        assert_eq!(authorize(false, "/x.Y/Z", Some(&conn(Some(Role::Operator)))).expect_err("unknown").code(), tonic::Code::Unimplemented);
        let no_role = Arc::new(Caller { subject: "CN=x, OU=admins".into(), role: None, insecure: false });
        let denied = authorize(false, "/stockd.v1.Admin/Status", Some(&ConnInfo { remote: None, caller: Some(no_role) })).expect_err("no role");
        assert!(denied.message().contains("names no stockd role"), "{}", denied.message());
        assert!(authorize(true, "/stockd.peer.v1.RaftPeer/Propose", None).expect("insecure").is_trusted_peer());
        assert!(!authorize(false, "/stockd.v1.Admin/Status", Some(&conn(Some(Role::Reader)))).expect("reader").is_trusted_peer());
    }
}
