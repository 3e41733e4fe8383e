//! How `stockctl` reaches a cluster: which certificate it presents (and so
//! which role it calls as), or plaintext for `--insecure` nodes; the RPCs
//! each command makes; and `stockctl roles`, the role table printed.
//!
//! Invariants:
//! - Without `--role`, a command calls with the least role of the table that
//!   may make all of its calls (`stockd_proto::roles::least_client_role`).
//! - Plaintext only when asked (`--insecure`); certificates from the flags,
//!   then `$STOCKCTL_CERTS`, then `./data/certs` (where `make dev` puts them).

use std::path::Path;
use std::path::PathBuf;

use serde_json::json;
use serde_json::Value;
use stockd_client::TlsConfig;
use stockd_proto::roles;
use stockd_proto::roles::Access;
use stockd_proto::roles::Role;

use crate::bench::Workload;
use crate::cli::parse_role;
use crate::cli::render_table;
use crate::cli::Cli;
use crate::cli::Command;
use crate::cli::ModelCommand;

/// Environment variables read when the flags are not given.
pub const CERTS_ENV: &str = "STOCKCTL_CERTS";
pub const ROLE_ENV: &str = "STOCKCTL_ROLE";
/// Where `make dev` (`stockd dev`) puts the dev cluster's certificates.
pub const DEV_CERTS_DIR: &str = "data/certs";

/// The security flags of the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessArgs {
    pub certs: Option<PathBuf>,
    pub role: Option<Role>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure: bool,
}

impl AccessArgs {
    /// The security flags of `cli`.
    pub fn of(cli: &Cli) -> AccessArgs {
        AccessArgs { certs: cli.certs.clone(), role: cli.role, ca: cli.ca.clone(), cert: cli.cert.clone(), key: cli.key.clone(), insecure: cli.insecure }
    }
}

/// How calls are secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Plaintext (nodes started with `--insecure`).
    Insecure,
    /// A directory made by `stockd certs`; the role picks the certificate.
    Dir { dir: PathBuf, role: Option<Role> },
    /// Explicit files; without a certificate the client is anonymous.
    Files { ca: PathBuf, identity: Option<(PathBuf, PathBuf)> },
}

/// Decides the [`Credentials`] from the flags, the environment and whether the dev
/// cluster's directory exists.
pub fn resolve_access(args: &AccessArgs, env_certs: Option<&str>, env_role: Option<&str>, dev_dir: &Path) -> Result<Credentials, String> {
    let env_role = match env_role.filter(|r| !r.trim().is_empty()) {
        Some(text) => Some(parse_role(text.trim()).map_err(|e| format!("invalid ${ROLE_ENV}: {e}"))?),
        None => None,
    };
    let role = args.role.or(env_role);
    let explicit_files = args.ca.is_some() || args.cert.is_some() || args.key.is_some();
    if args.insecure {
        if explicit_files || args.certs.is_some() || args.role.is_some() {
            return Err("--insecure takes no --certs, --role, --ca, --cert or --key".into());
        }
        return Ok(Credentials::Insecure);
    }
    if explicit_files {
        if args.certs.is_some() || args.role.is_some() {
            return Err("give either --certs DIR [--role ROLE] or --ca/--cert/--key (the certificate names its role)".into());
        }
        let ca = args.ca.clone().ok_or("--cert and --key need --ca (the CA that signed the nodes' certificates)")?;
        let identity = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err("give --cert and --key together".into()),
        };
        return Ok(Credentials::Files { ca, identity });
    }
    let dir = args
        .certs
        .clone()
        .or_else(|| env_certs.filter(|d| !d.trim().is_empty()).map(PathBuf::from))
        .or_else(|| dev_dir.is_dir().then(|| dev_dir.to_path_buf()));
    match dir {
        Some(dir) => Ok(Credentials::Dir { dir, role }),
        None => Err(format!(
            "no certificates: give --certs DIR (or ${CERTS_ENV}; `stockd certs` makes them), --ca/--cert/--key, or --insecure for nodes started with --insecure"
        )),
    }
}

/// The client TLS settings for calls that make `rpcs`; `None` for plaintext.
pub fn tls_for(credentials: &Credentials, rpcs: &[&str]) -> Result<Option<TlsConfig>, String> {
    match credentials {
        Credentials::Insecure => Ok(None),
        Credentials::Files { ca, identity } => {
            let identity = identity.as_ref().map(|(cert, key)| (cert.as_path(), key.as_path()));
            TlsConfig::from_files(ca, identity).map(Some).map_err(|e| e.to_string())
        }
        Credentials::Dir { dir, role } => {
            let role = match role {
                Some(role) => *role,
                None => roles::least_client_role(rpcs).ok_or_else(|| format!("no one role may call {}; give --role", rpcs.join(", ")))?,
            };
            TlsConfig::from_dir(dir, role.as_str()).map(Some).map_err(|e| format!("{e} (role {role})"))
        }
    }
}

const INVENTORY: &str = "/stockd.v1.Inventory/";
const ADMIN: &str = "/stockd.v1.Admin/";

fn inventory(method: &str) -> &'static str {
    rpc_path(INVENTORY, method)
}

fn admin(method: &str) -> &'static str {
    rpc_path(ADMIN, method)
}

/// The table's own `&'static str` for `prefix + method`.
fn rpc_path(prefix: &str, method: &str) -> &'static str {
    roles::TABLE.iter().map(|row| row.path).find(|path| path.strip_prefix(prefix) == Some(method)).expect("stockctl only names RPCs of the role table")
}

/// The RPCs `command` makes (the benchmark's stocking aside, see
/// [`bench_stock_rpcs`]). Empty for commands that make none.
pub fn command_rpcs(command: &Command) -> Vec<&'static str> {
    match command {
        Command::Status | Command::Shard(crate::cli::ShardCommand::List) | Command::Node(crate::cli::NodeCommand::List) => vec![admin("Status")],
        Command::Node(crate::cli::NodeCommand::Drain(_)) => vec![admin("DrainNode"), admin("Status")],
        Command::Node(crate::cli::NodeCommand::Remove(_)) => vec![admin("RemoveNode")],
        Command::Balance(crate::cli::BalanceCommand::On | crate::cli::BalanceCommand::Off) => vec![admin("SetBalance")],
        Command::Balance(crate::cli::BalanceCommand::Status) => vec![admin("Status")],
        Command::Shard(crate::cli::ShardCommand::Split(_)) => vec![admin("SplitShard")],
        Command::Shard(crate::cli::ShardCommand::Merge(_)) => vec![admin("MergeShard")],
        Command::Shard(crate::cli::ShardCommand::Move(_)) => vec![admin("MoveShard")],
        Command::Adjust(_) => vec![inventory("Adjust")],
        Command::Reserve(_) => vec![inventory("Reserve")],
        Command::Commit(_) => vec![inventory("Commit")],
        Command::Release(_) => vec![inventory("Release")],
        Command::Fulfill(_) => vec![inventory("Fulfill")],
        Command::Cancel(_) => vec![inventory("Cancel")],
        Command::Reservation(_) => vec![inventory("GetReservation")],
        Command::Get(_) => vec![inventory("GetPosition")],
        Command::Check(_) => vec![inventory("CheckAvailability"), inventory("CheckAvailabilityBatch")],
        Command::Rank(_) => vec![inventory("RankFulfillment")],
        Command::Model(op) => vec![admin(match op {
            ModelCommand::Status => "ModelStatus",
            ModelCommand::Load { .. } => "LoadModel",
            ModelCommand::Promote { .. } => "PromoteModel",
            ModelCommand::Rollback => "RollbackModel",
            ModelCommand::Candidate { .. } => "SetModelCandidate",
            ModelCommand::Disable | ModelCommand::Enable => "SetModelDisabled",
        })],
        Command::Bench(args) => {
            let load = match args.workload {
                Workload::Hot | Workload::Uniform | Workload::Cart => [inventory("Reserve"), inventory("BatchReserve")],
                Workload::Check => [inventory("CheckAvailability"), inventory("CheckAvailabilityBatch")],
            };
            // Leader routing (Status) and the final conservation reads.
            let mut rpcs = load.to_vec();
            rpcs.extend([inventory("GetPosition"), admin("Status")]);
            rpcs
        }
        Command::Roles => Vec::new(),
    }
}

/// The benchmark stocks its SKUs with feed receipts, as a feed would.
pub fn bench_stock_rpcs() -> Vec<&'static str> {
    vec![inventory("Adjust"), admin("Status")]
}

fn allowed_roles(access: Access) -> Vec<&'static str> {
    match access {
        Access::Anyone => vec!["anyone"],
        Access::Roles(roles) => Role::ALL.iter().filter(|r| roles.contains(r)).map(|r| r.as_str()).collect(),
    }
}

/// `stockctl roles`: one line per RPC, a column per role.
pub fn roles_human() -> String {
    let mut headers = vec!["RPC"];
    headers.extend(Role::ALL.iter().map(|r| r.as_str()));
    let rows: Vec<Vec<String>> = roles::TABLE
        .iter()
        .map(|row| {
            let mut cells = vec![row.path.trim_start_matches('/').to_owned()];
            cells.extend(Role::ALL.iter().map(|role| if row.access.allows(*role) { "yes" } else { "-" }.to_owned()));
            cells
        })
        .collect();
    let mut out = render_table(&headers, &rows);
    out.push_str("Health is open to callers without a certificate; every other RPC needs one whose OU names a role above.\n");
    out
}

/// `stockctl --json roles`: `[{"rpc": "...", "roles": [...]}, ...]`.
pub fn roles_json() -> Value {
    Value::Array(roles::TABLE.iter().map(|row| json!({"rpc": row.path.trim_start_matches('/'), "roles": allowed_roles(row.access)})).collect())
}
