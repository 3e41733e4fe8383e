//! Who may call what: the one role table of stockd.
//!
//! A caller's role comes from its TLS client certificate: the subject's
//! organizational unit (`OU`) names one of [`Role::ALL`]. Nodes enforce this
//! table in one place before any handler runs (the server's `security`
//! module); `stockctl roles` prints it; `stockctl` picks, for each command,
//! the least role of this table that may make its calls.
//!
//! - [`Role::Reader`]: reads (positions, availability, reservations, status).
//! - [`Role::Checkout`]: a reader that also reserves, commits, releases,
//!   fulfils and cancels.
//! - [`Role::Feed`]: a reader that also applies feed adjustments.
//! - [`Role::Operator`]: everything in `Admin`.
//! - [`Role::Peer`]: a node; the peer protocol only, which no other role may
//!   call.
//!
//! A call without a certificate reaches gRPC health only (UNAUTHENTICATED
//! otherwise); a role outside an RPC's row is PERMISSION_DENIED.

/// The role a certificate grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Checkout,
    Feed,
    Operator,
    Peer,
}

impl Role {
    /// Every role, in the order `stockctl roles` prints them.
    pub const ALL: [Role; 5] = [Role::Reader, Role::Checkout, Role::Feed, Role::Operator, Role::Peer];
    /// The roles a client certificate may carry, least privileged first.
    pub const CLIENTS: [Role; 4] = [Role::Reader, Role::Checkout, Role::Feed, Role::Operator];

    /// The name used in certificates (`OU=checkout`), file names
    /// (`checkout.crt`) and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Checkout => "checkout",
            Role::Feed => "feed",
            Role::Operator => "operator",
            Role::Peer => "peer",
        }
    }

    /// The role named `text` (exactly as [`Role::as_str`] spells it).
    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may call one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any caller, with or without a certificate.
    Anyone,
    /// Callers whose certificate carries one of these roles.
    Roles(&'static [Role]),
}

impl Access {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Anyone => true,
            Access::Roles(roles) => roles.contains(&role),
        }
    }
}

/// One row of the table: a full gRPC path (`/package.Service/Method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rpc {
    pub path: &'static str,
    pub access: Access,
}

const READ: Access = Access::Roles(&[Role::Reader, Role::Checkout, Role::Feed]);
const READ_AND_OPERATE: Access = Access::Roles(&[Role::Reader, Role::Checkout, Role::Feed, Role::Operator]);
const CHECKOUT: Access = Access::Roles(&[Role::Checkout]);
const FEED: Access = Access::Roles(&[Role::Feed]);
const OPERATOR: Access = Access::Roles(&[Role::Operator]);
const PEER: Access = Access::Roles(&[Role::Peer]);
const OPERATOR_AND_PEER: Access = Access::Roles(&[Role::Operator, Role::Peer]);

const fn rpc(path: &'static str, access: Access) -> Rpc {
    Rpc { path, access }
}

/// Every RPC a node serves, on either plane, and who may call it.
pub const TABLE: &[Rpc] = &[
    // Inventory: reads.
    rpc("/stockd.v1.Inventory/GetPosition", READ),
    rpc("/stockd.v1.Inventory/CheckAvailability", READ),
    rpc("/stockd.v1.Inventory/CheckAvailabilityBatch", READ),
    rpc("/stockd.v1.Inventory/RankFulfillment", READ),
    rpc("/stockd.v1.Inventory/GetReservation", READ),
    // Inventory: checkout.
    rpc("/stockd.v1.Inventory/Reserve", CHECKOUT),
    rpc("/stockd.v1.Inventory/BatchReserve", CHECKOUT),
    rpc("/stockd.v1.Inventory/Commit", CHECKOUT),
    rpc("/stockd.v1.Inventory/Release", CHECKOUT),
    rpc("/stockd.v1.Inventory/Fulfill", CHECKOUT),
    rpc("/stockd.v1.Inventory/Cancel", CHECKOUT),
    // Inventory: feeds.
    rpc("/stockd.v1.Inventory/Adjust", FEED),
    // Admin: status for every client role, the rest for operators.
    rpc("/stockd.v1.Admin/Status", READ_AND_OPERATE),
    rpc("/stockd.v1.Admin/ModelStatus", READ_AND_OPERATE),
    rpc("/stockd.v1.Admin/LoadModel", OPERATOR),
    rpc("/stockd.v1.Admin/PromoteModel", OPERATOR),
    rpc("/stockd.v1.Admin/RollbackModel", OPERATOR),
    rpc("/stockd.v1.Admin/SetModelCandidate", OPERATOR),
    rpc("/stockd.v1.Admin/SetModelDisabled", OPERATOR),
    rpc("/stockd.v1.Admin/SplitShard", OPERATOR),
    rpc("/stockd.v1.Admin/MergeShard", OPERATOR),
    rpc("/stockd.v1.Admin/MoveShard", OPERATOR),
    rpc("/stockd.v1.Admin/DrainNode", OPERATOR),
    rpc("/stockd.v1.Admin/RemoveNode", OPERATOR),
    rpc("/stockd.v1.Admin/SetBalance", OPERATOR),
    // A joining node asks with its node certificate; operators may look.
    // The one client-plane RPC a node certificate reaches (`PEER_ON_CLIENT_PLANE`).
    rpc("/stockd.v1.Admin/ClusterSettings", OPERATOR_AND_PEER),
    // The peer plane: nodes only.
    rpc("/stockd.peer.v1.RaftPeer/AppendEntries", PEER),
    rpc("/stockd.peer.v1.RaftPeer/Vote", PEER),
    rpc("/stockd.peer.v1.RaftPeer/InstallSnapshot", PEER),
    rpc("/stockd.peer.v1.RaftPeer/Propose", PEER),
    rpc("/stockd.peer.v1.RaftPeer/Read", PEER),
    rpc("/stockd.peer.v1.RaftPeer/MoveReplica", PEER),
    rpc("/stockd.peer.v1.RaftPeer/TransferLeader", PEER),
    rpc("/stockd.peer.v1.RaftPeer/Campaign", PEER),
    rpc("/stockd.peer.v1.RaftPeer/Leaders", PEER),
    rpc("/stockd.peer.v1.RaftPeer/RaftStream", PEER),
    // Standard services: health for anyone (load balancers), reflection for
    // client certificates.
    rpc("/grpc.health.v1.Health/Check", Access::Anyone),
    rpc("/grpc.health.v1.Health/Watch", Access::Anyone),
    rpc("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", READ_AND_OPERATE),
    rpc("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", READ_AND_OPERATE),
];

/// The row of `path`; `None` for an RPC stockd does not serve.
pub fn access(path: &str) -> Option<Access> {
    TABLE.iter().find(|row| row.path == path).map(|row| row.access)
}

/// The client-plane RPCs a node certificate may call: a node joining the
/// cluster knows only the client-plane addresses `--join` names, and asks
/// them for the cluster's settings (read-only, nothing a peer cannot read
/// on the peer plane already). Every other client-plane RPC refuses peers.
pub const PEER_ON_CLIENT_PLANE: &[&str] = &["/stockd.v1.Admin/ClusterSettings"];

/// True when `role` may call `path` (false for unknown paths).
pub fn may_call(role: Role, path: &str) -> bool {
    access(path).is_some_and(|access| access.allows(role))
}

/// The least privileged client role that may call every one of `paths`:
/// what `stockctl` uses when no role is given.
pub fn least_client_role(paths: &[&str]) -> Option<Role> {
    Role::CLIENTS.into_iter().find(|role| paths.iter().all(|path| may_call(*role, path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_listed_once_and_names_are_round_trips() {
        for (i, row) in TABLE.iter().enumerate() {
            assert!(row.path.starts_with('/') && row.path[1..].contains('/'), "{}", row.path);
            assert!(TABLE[i + 1..].iter().all(|other| other.path != row.path), "{} listed twice", row.path);
        }
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("Operator"), None, "names are exact");
    }

    #[test]
    fn only_peers_reach_the_peer_protocol_and_peers_reach_nothing_else_but_the_join_settings() {
        for row in TABLE {
            let peer_rpc = row.path.starts_with("/stockd.peer.v1.");
            for role in Role::CLIENTS {
                if peer_rpc {
                    assert!(!row.access.allows(role), "{role} may call {}", row.path);
                }
            }
            if row.access != Access::Anyone {
                let peer_may = peer_rpc || PEER_ON_CLIENT_PLANE.contains(&row.path);
                assert_eq!(row.access.allows(Role::Peer), peer_may, "{}", row.path);
            }
        }
        // The exceptions are read-only admin calls that no other client
        // role but operators reaches.
        for path in PEER_ON_CLIENT_PLANE {
            assert!(path.starts_with("/stockd.v1.Admin/"), "{path}");
            assert_eq!(access(path), Some(OPERATOR_AND_PEER), "{path}");
        }
    }

    #[test]
    fn stockctl_gets_the_least_role_for_a_command() {
        assert_eq!(least_client_role(&["/stockd.v1.Inventory/GetPosition"]), Some(Role::Reader));
        assert_eq!(least_client_role(&["/stockd.v1.Inventory/Reserve", "/stockd.v1.Admin/Status"]), Some(Role::Checkout));
        assert_eq!(least_client_role(&["/stockd.v1.Inventory/Adjust"]), Some(Role::Feed));
        assert_eq!(least_client_role(&["/stockd.v1.Admin/LoadModel"]), Some(Role::Operator));
        assert_eq!(least_client_role(&["/stockd.v1.Inventory/Adjust", "/stockd.v1.Inventory/Reserve"]), None, "no one role does both");
        assert_eq!(least_client_role(&["/stockd.peer.v1.RaftPeer/Propose"]), None);
    }

    /// A new RPC in the proto without a row here would be refused to
    /// everyone: the table must name every method of the public services.
    #[test]
    fn the_table_covers_every_public_rpc() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("the embedded descriptor set decodes");
        let mut paths = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
        assert!(paths.len() >= 19, "{paths:?}");
        for path in paths {
            assert!(access(&path).is_some(), "{path} has no row in the role table");
        }
    }
}
