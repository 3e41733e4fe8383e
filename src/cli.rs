//! `stockctl`: command-line surface, input parsers, exit codes and output
//! formatting. The binary (`src/bin/stockctl.rs`) only wires these to a
//! [`stockd_client::Client`].
//!
//! Invariants:
//! - Exit codes: [`EXIT_DONE`] done as asked (replays of a success included),
//!   [`EXIT_REFUSED`] refused by a business rule, [`EXIT_USAGE`] bad usage or
//!   invalid input, [`EXIT_UNAVAILABLE`] unavailable or outcome unknown,
//!   [`EXIT_DENIED`] the certificate or its role was refused.
//! - Formatting functions are pure: they return the text, callers print it.
//! - Words are the proto's in lower case ("pending", "insufficient_stock").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use stockd_proto::roles::Role;

use crate::bench::{BenchError, BenchReport, Workload};
use stockd_client::{ClientError, NodeStatusReport};
use stockd_proto::v1::{
    AdjustResponse, AdjustmentKind, Change, Consistency, GroupStatus, Line, LineRisk, Outcome, Position, PositionResponse, Reservation, ReservationResponse,
    ReservationState, ReserveResponse, Shortfall, StatusResponse,
};
use stockd_proto::v1::{CheckAvailabilityResponse, Decision, ModelStatusResponse, RankFulfillmentResponse};

/// Done as asked, including the replay of an earlier success.
pub const EXIT_DONE: u8 = 0;
/// Refused by a business rule (any outcome other than OK).
pub const EXIT_REFUSED: u8 = 1;
/// Bad usage or invalid input (clap errors and INVALID_ARGUMENT).
pub const EXIT_USAGE: u8 = 2;
/// Unavailable, or the outcome of a write is unknown.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// The node refused the certificate (none, another CA's, expired) or its
/// role for the RPC.
pub const EXIT_DENIED: u8 = 4;

/// Addresses of the cluster `stockd dev` starts.
pub const DEFAULT_ADDRS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";
/// Environment variable read when `--addr` is not given.
pub const ADDR_ENV: &str = "STOCKCTL_ADDR";
/// Longest duration accepted anywhere on the command line.
pub const DURATION_MAX: Duration = Duration::from_secs(366 * 24 * 60 * 60);
/// Most `--line` values of one reservation.
pub const LINES_MAX: usize = 1000;

/// Operate a stockd cluster.
#[derive(Debug, Parser)]
#[command(name = "stockctl", version, about, disable_help_subcommand = true)]
pub struct Cli {
    /// Node addresses (host:port), comma separated or repeated.
    /// Default: $STOCKCTL_ADDR, else 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103.
    #[arg(long, global = true, value_delimiter = ',', value_name = "HOST:PORT")]
    pub addr: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Time allowed for one attempt of a request (e.g. 500ms, 5s); a command
    /// retries on other nodes for at most twice this long.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_timeout, value_name = "DURATION")]
    pub timeout: Duration,
    /// Certificates made by `stockd certs` (ca.crt, <role>.crt/.key).
    /// Default: $STOCKCTL_CERTS, else ./data/certs (the `make dev` cluster's).
    #[arg(long, global = true, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Call as this role (its certificate in --certs): reader, checkout,
    /// feed or operator. Default: $STOCKCTL_ROLE, else the least role the
    /// command needs (see `stockctl roles`).
    #[arg(long, global = true, value_parser = parse_role, value_name = "ROLE")]
    pub role: Option<Role>,
    /// The CA certificate, instead of --certs (alone: anonymous, health only).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This client's certificate (its OU names the role), with --ca and --key.
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The key of --cert.
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Plaintext, for nodes started with --insecure.
    #[arg(long, global = true)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Status of every node and of the groups each one hosts.
    Status,
    /// Apply a warehouse or seller feed event to a position.
    Adjust(AdjustArgs),
    /// Hold units for a checkout (all lines or none).
    Reserve(ReserveArgs),
    /// Order placed: reserved -> committed.
    Commit(IdArgs),
    /// Checkout abandoned: reserved units return to ATP.
    Release(IdArgs),
    /// Committed order shipped: committed units leave on_hand.
    Fulfill(IdArgs),
    /// Committed order cancelled before shipping.
    Cancel(IdArgs),
    /// Show one reservation.
    Reservation(IdArgs),
    /// Show one position.
    Get(GetArgs),
    /// Load the cluster with reservations, then check conservation.
    Bench(BenchArgs),
    /// Can we promise this? Decision, calibrated probability, rules, degraded reasons.
    Check(CheckArgs),
    /// Which locations should ship this order, best first.
    Rank(RankArgs),
    /// Model serving on every node: status, load, promote, rollback, candidate, kill switch.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Which role may call which RPC (the nodes' role table).
    Roles,
    /// The shard map as the groups serve it.
    #[command(subcommand)]
    Shard(ShardCommand),
    /// The cluster's nodes as the topology holds them.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The placement loop's balancing of replicas and leaders per node.
    #[command(subcommand)]
    Balance(BalanceCommand),
}

#[derive(Debug, Subcommand)]
pub enum BalanceCommand {
    /// Balance replicas, then leaders, per up node of each region: one step
    /// every 2 s, by the metadata group's leader.
    On,
    /// Pause the balancing: replicas and leaders stay where they are
    /// (a drain still moves replicas off its node).
    Off,
    /// Whether balancing is on, replicas and leaders per node, and the next
    /// step the balancer would take.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// One row per node of the topology (joined ones too): address, region,
    /// state, replicas and leaders it holds, whether it answered.
    List,
    /// Moves every replica (and so every leader) off a node, one at a time,
    /// to up nodes of its region; waits until it holds none.
    Drain(NodeArgs),
    /// Forgets a node that holds no replica (drain it first); its id is
    /// never given to another node.
    Remove(NodeArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's id (`stockctl node list` shows them).
    pub node: u64,
    /// How long `drain` waits for the last replica to leave before it
    /// returns (the drain goes on).
    #[arg(long, default_value = "120s", value_parser = parse_timeout, value_name = "DURATION")]
    pub wait: Duration,
}

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// One row per group: range, epoch, replicas, leader, positions, load.
    List,
    /// Splits a group's range in two: [start, AT) stays, [AT, end) becomes a
    /// new group on the same replicas. Waits until the new group serves.
    Split(SplitArgs),
    /// Merges a group with the range after it: that range's records move
    /// into the group and its id is retired. Waits until the topology shows
    /// it. Refused while a cart is in flight in the range after it.
    Merge(MergeArgs),
    /// Moves a group's replica from one node to another of its region, while
    /// the group serves: the new one is caught up, then the voters change.
    /// Waits until the topology shows it. Group 0 is the metadata group
    /// (its replicas may go to a node of any region).
    Move(MoveArgs),
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The group whose replica moves (0: the metadata group).
    #[arg(long)]
    pub group: u32,
    /// The node holding the replica now.
    #[arg(long)]
    pub from: u64,
    /// The node to hold it (same region, not a replica of the group yet).
    #[arg(long)]
    pub to: u64,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The left group of the two (`stockctl shard list` shows them).
    #[arg(long)]
    pub group: u32,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// The group to split (`stockctl shard list` shows them).
    #[arg(long)]
    pub group: u32,
    /// The first SKU of the new group; default: the group's middle SKU.
    #[arg(long)]
    pub at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContextArg {
    ProductPage,
    Checkout,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Repeat for several SKUs: one CheckAvailabilityBatch call (at most
    /// 256), the same question for each.
    #[arg(long, required = true)]
    pub sku: Vec<String>,
    /// Default: the best location holding the SKU.
    #[arg(long)]
    pub location: Option<String>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub qty: u64,
    #[arg(long, value_enum)]
    pub context: ContextArg,
    /// strong, bounded:MS or any.
    #[arg(long, default_value = "any", value_parser = parse_consistency, value_name = "CONSISTENCY")]
    pub consistency: ReadConsistency,
    /// The SKU is on promotion.
    #[arg(long)]
    pub promo: bool,
    /// Key of the A/B split (default: the SKU).
    #[arg(long, default_value = "")]
    pub route_key: String,
}

#[derive(Debug, Args)]
pub struct RankArgs {
    #[arg(long)]
    pub sku: String,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub qty: u64,
    /// Region the order ships to.
    #[arg(long)]
    pub region: String,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Versions, serving / candidate / previous, drift, latency, fallback rate.
    Status,
    /// Load a version directory (verified by SHA-256 and golden vectors) beside the others.
    Load {
        /// Directory with manifest.json under the node's model root (a
        /// relative path is taken from the root: `v2`).
        dir: String,
    },
    /// Make a loaded version the serving one.
    Promote { version: String },
    /// Go back to the version served before the last promote.
    Rollback,
    /// Set (or clear, with no VERSION) a candidate for A/B and shadow scoring.
    Candidate {
        version: Option<String>,
        /// Share of route keys the candidate answers, 0-100.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        ab_percent: u32,
        /// Also score the candidate off the critical path and compare.
        #[arg(long)]
        shadow: bool,
    },
    /// The kill switch: every answer from the conservative rule.
    Disable,
    /// Turn the kill switch off.
    Enable,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Reservation id.
    #[arg(long)]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct AdjustArgs {
    /// Idempotency key of the feed event.
    #[arg(long)]
    pub event_id: String,
    #[arg(long)]
    pub sku: String,
    #[arg(long)]
    pub location: String,
    #[arg(long, value_enum)]
    pub kind: AdjustKindArg,
    /// Quantity (a delta, or the absolute value for count and safety-stock).
    #[arg(long)]
    pub qty: u64,
    /// Feed that produced the event.
    #[arg(long, default_value = "stockctl")]
    pub source: String,
    /// Sequence number of the event in its source (default: now, in ms since the epoch).
    #[arg(long)]
    pub seq: Option<u64>,
    /// When the feed observed the event, in ms since the epoch (gives the feed lag).
    #[arg(long)]
    pub observed_at_ms: Option<u64>,
    /// Why (kept on the audit trail).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct ReserveArgs {
    /// Reservation id (idempotency key).
    #[arg(long)]
    pub id: String,
    /// A line SKU:LOCATION:QTY; repeat for several lines.
    #[arg(long = "line", required = true, value_parser = parse_line, value_name = "SKU:LOC:QTY")]
    pub lines: Vec<Line>,
    /// Time to live (e.g. 30s, 15m); 0 means the cluster default.
    #[arg(long, default_value = "0", value_parser = parse_duration, value_name = "DURATION")]
    pub ttl: Duration,
    /// Reserve only if the checkout risk gate lets every line through (the
    /// same score and rules as `check --context checkout`).
    #[arg(long)]
    pub risk_gate: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[arg(long)]
    pub sku: String,
    #[arg(long)]
    pub location: String,
    /// strong, bounded:MS (e.g. bounded:500) or any.
    #[arg(long, default_value = "strong", value_parser = parse_consistency, value_name = "CONSISTENCY")]
    pub consistency: ReadConsistency,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// hot: every reservation on one SKU; uniform: spread over --skus SKUs;
    /// cart: reservations of --lines distinct SKUs of --skus (across shard
    /// groups); check: CheckAvailability (product page) over --skus SKUs,
    /// read-only.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// SKUs of the uniform and check workloads.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub skus: u32,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// How long to load the cluster (e.g. 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_bench_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Location of the benchmark positions.
    #[arg(long, default_value = "bench")]
    pub location: String,
    /// Reservations per BatchReserve call, or checks per
    /// CheckAvailabilityBatch call (at most 256); 1 sends plain calls.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
    /// Lines (distinct SKUs) per reservation of the cart workload.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub lines: u32,
    /// Start every SKU name with PREFIX, so that all fall in one range
    /// (e.g. `SKU-`; default: spread over the ranges).
    #[arg(long, value_name = "PREFIX", value_parser = parse_sku_prefix)]
    pub sku_prefix: Option<String>,
    /// Print the reservations answered per second this often (e.g. 5s),
    /// on stderr, while the load runs.
    #[arg(long, value_parser = parse_bench_duration, value_name = "DURATION")]
    pub report_every: Option<Duration>,
}

/// Longest `--sku-prefix`, bytes: the names it starts stay well within
/// the SKU length limit.
pub const SKU_PREFIX_BYTES_MAX: usize = 64;

fn parse_sku_prefix(text: &str) -> Result<String, String> {
    storage::validate::check_token("--sku-prefix", text, SKU_PREFIX_BYTES_MAX).map_err(|e| e.to_string())?;
    Ok(text.to_owned())
}

/// `--kind` of `stockctl adjust`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdjustKindArg {
    Receipt,
    Return,
    Damage,
    Shrink,
    Count,
    Hold,
    Unhold,
    SafetyStock,
}

impl From<AdjustKindArg> for AdjustmentKind {
    fn from(kind: AdjustKindArg) -> Self {
        match kind {
            AdjustKindArg::Receipt => AdjustmentKind::Receipt,
            AdjustKindArg::Return => AdjustmentKind::Return,
            AdjustKindArg::Damage => AdjustmentKind::Damage,
            AdjustKindArg::Shrink => AdjustmentKind::Shrink,
            AdjustKindArg::Count => AdjustmentKind::Count,
            AdjustKindArg::Hold => AdjustmentKind::Hold,
            AdjustKindArg::Unhold => AdjustmentKind::Unhold,
            AdjustKindArg::SafetyStock => AdjustmentKind::SafetyStock,
        }
    }
}

/// `--consistency` of `stockctl get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadConsistency {
    pub consistency: Consistency,
    /// Bound of a BOUNDED read; 0 otherwise.
    pub max_staleness_ms: u64,
}

// ---------------------------------------------------------------------------
// Parsers
// ---------------------------------------------------------------------------

/// Parses `500ms`, `30s`, `2m`, `1h` (whole numbers only); a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!("expected a whole number with a unit (ms, s, m, h), e.g. 30s; got {text:?}"));
    }
    let value: u64 = digits.parse().map_err(|_| format!("{digits:?} is too large"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("missing unit in {text:?}: use ms, s, m or h (e.g. {value}s)")),
        other => return Err(format!("unknown unit {other:?} in {text:?}: use ms, s, m or h")),
    };
    let ms = value.checked_mul(unit_ms).ok_or_else(|| format!("{text:?} is too large"))?;
    let duration = Duration::from_millis(ms);
    if duration > DURATION_MAX {
        return Err(format!("{text:?} is longer than {} days", DURATION_MAX.as_secs() / 86_400));
    }
    Ok(duration)
}

/// `--role`: one of the client roles.
pub fn parse_role(text: &str) -> Result<Role, String> {
    match Role::parse(text) {
        Some(role) if role != Role::Peer => Ok(role),
        Some(_) => Err("`peer` is the nodes' own role; a client is reader, checkout, feed or operator".into()),
        None => Err(format!("`{text}` is not a role: reader, checkout, feed or operator")),
    }
}

/// A duration that must not be zero (`--timeout`).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be greater than 0".to_owned());
    }
    Ok(duration)
}

/// `--duration` of the benchmark: between 1 s and 1 h.
pub fn parse_bench_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(1) || duration > Duration::from_secs(3600) {
        return Err("must be between 1s and 1h".to_owned());
    }
    Ok(duration)
}

/// Parses `SKU:LOCATION:QTY` into a reservation line. The quantity must be a
/// whole number; its range is checked by the server.
pub fn parse_line(text: &str) -> Result<Line, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let [sku, location, quantity] = parts.as_slice() else {
        return Err(format!("expected SKU:LOC:QTY, got {text:?}"));
    };
    if sku.is_empty() {
        return Err(format!("empty SKU in {text:?}"));
    }
    if location.is_empty() {
        return Err(format!("empty location in {text:?}"));
    }
    let quantity: u64 = quantity.parse().map_err(|_| format!("quantity {quantity:?} in {text:?} is not a whole number"))?;
    Ok(Line { sku: (*sku).to_owned(), location: (*location).to_owned(), quantity })
}

/// Parses `strong`, `bounded:MS` (milliseconds, or a duration such as
/// `bounded:2s`) or `any`.
pub fn parse_consistency(text: &str) -> Result<ReadConsistency, String> {
    let lower = text.trim().to_ascii_lowercase();
    match lower.as_str() {
        "strong" => return Ok(ReadConsistency { consistency: Consistency::Strong, max_staleness_ms: 0 }),
        "any" => return Ok(ReadConsistency { consistency: Consistency::Any, max_staleness_ms: 0 }),
        _ => {}
    }
    let Some(bound) = lower.strip_prefix("bounded:") else {
        return Err(format!("expected strong, bounded:MS or any, got {text:?}"));
    };
    let max_staleness_ms = match bound.parse::<u64>() {
        Ok(ms) => ms,
        Err(_) => parse_duration(bound)
            .map_err(|error| format!("invalid bound in {text:?}: {error}"))?
            .as_millis()
            .try_into()
            .map_err(|_| format!("bound in {text:?} is too large"))?,
    };
    if max_staleness_ms == 0 {
        return Err(format!("the bound of {text:?} must be greater than 0 ms"));
    }
    Ok(ReadConsistency { consistency: Consistency::Bounded, max_staleness_ms })
}

/// The node addresses to use: `--addr` when given, else `env` (the value of
/// `$STOCKCTL_ADDR`) when set and not blank, else [`DEFAULT_ADDRS`].
pub fn resolve_addrs(flag: &[String], env: Option<&str>) -> Result<Vec<String>, String> {
    let addrs: Vec<String> = if !flag.is_empty() {
        flag.iter().map(|a| a.trim().to_owned()).collect()
    } else {
        let source = env.filter(|e| !e.trim().is_empty()).unwrap_or(DEFAULT_ADDRS);
        source.split(',').map(|a| a.trim().to_owned()).collect()
    };
    if let Some(index) = addrs.iter().position(|a| a.is_empty()) {
        return Err(format!("invalid --addr: address #{} is empty", index + 1));
    }
    Ok(addrs)
}

// ---------------------------------------------------------------------------
// Exit codes and errors
// ---------------------------------------------------------------------------

/// Exit code of a request that reached the state machine.
pub fn exit_code_for_outcome(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Ok => EXIT_DONE,
        _ => EXIT_REFUSED,
    }
}

/// Exit code of a request that did not produce a response.
pub fn exit_code_for_error(error: &ClientError) -> u8 {
    match error {
        ClientError::InvalidAddress { .. } | ClientError::InvalidConfig(_) | ClientError::InvalidArgument(_) => EXIT_USAGE,
        ClientError::Unavailable { .. } | ClientError::Rpc { .. } => EXIT_UNAVAILABLE,
        ClientError::PermissionDenied(_) | ClientError::Unauthenticated(_) => EXIT_DENIED,
    }
}

/// The one line printed on stderr for `error`, starting with "error: ".
pub fn error_line(error: &ClientError) -> String {
    let text = match error {
        ClientError::InvalidAddress { addr, message } => format!("invalid --addr {addr:?}: {message}"),
        ClientError::InvalidConfig(message) if message.starts_with("TLS") => format!("invalid certificates: {message}"),
        ClientError::InvalidConfig(message) => format!("invalid --timeout: {message}"),
        ClientError::PermissionDenied(message) => format!("permission denied: {message}"),
        ClientError::Unauthenticated(message) => format!("not authenticated: {message}"),
        ClientError::InvalidArgument(message) if message.starts_with("invalid") => message.clone(),
        ClientError::InvalidArgument(message) => format!("invalid argument: {message}"),
        ClientError::Unavailable { outcome_unknown: true, message } => {
            format!("outcome unknown, retry with the same id: {message}")
        }
        ClientError::Unavailable { outcome_unknown: false, message } => format!("unavailable: {message}"),
        ClientError::Rpc { code, message } => format!("server answered {code:?}: {message}"),
    };
    format!("error: {}", one_line(&text))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// Words
// ---------------------------------------------------------------------------

pub fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Unspecified => "unspecified",
        Outcome::Ok => "ok",
        Outcome::InsufficientStock => "insufficient_stock",
        Outcome::IdempotencyConflict => "idempotency_conflict",
        Outcome::NotFound => "not_found",
        Outcome::InvalidState => "invalid_state",
        Outcome::StaleEvent => "stale_event",
        Outcome::InsufficientQuantity => "insufficient_quantity",
        Outcome::RiskRefused => "risk_refused",
    }
}

pub fn state_word(state: ReservationState) -> &'static str {
    match state {
        ReservationState::Unspecified => "unspecified",
        ReservationState::Pending => "pending",
        ReservationState::Committed => "committed",
        ReservationState::Released => "released",
        ReservationState::Expired => "expired",
        ReservationState::Fulfilled => "fulfilled",
        ReservationState::Cancelled => "cancelled",
    }
}

pub fn kind_word(kind: AdjustmentKind) -> &'static str {
    match kind {
        AdjustmentKind::Unspecified => "unspecified",
        AdjustmentKind::Receipt => "receipt",
        AdjustmentKind::Return => "return",
        AdjustmentKind::Damage => "damage",
        AdjustmentKind::Shrink => "shrink",
        AdjustmentKind::Count => "count",
        AdjustmentKind::Hold => "hold",
        AdjustmentKind::Unhold => "unhold",
        AdjustmentKind::SafetyStock => "safety-stock",
    }
}

/// "ok", or "ok (replay)" for the stored answer of an earlier request.
pub fn outcome_label(outcome: Outcome, replay: bool) -> String {
    if replay {
        format!("{} (replay)", outcome_word(outcome))
    } else {
        outcome_word(outcome).to_owned()
    }
}

// ---------------------------------------------------------------------------
// Layout helpers
// ---------------------------------------------------------------------------

/// Columns aligned on the widest cell; every line ends with '\n' and carries
/// no trailing spaces.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (column, cell) in row.iter().enumerate() {
            if column < widths.len() {
                widths[column] = widths[column].max(cell.chars().count());
            } else {
                widths.push(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for cells in std::iter::once(&header_cells).chain(rows.iter()) {
        let mut line = String::new();
        for (column, cell) in cells.iter().enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[column].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key  value` lines with the values aligned.
pub fn render_key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(key, _)| key.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let line = format!("{key:<width$}  {value}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `1700000000000` -> `2023-11-14T22:13:20.000Z`; 0 -> `-`.
pub fn format_ms_utc(ms: u64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn ms_with_time(ms: u64) -> String {
    if ms == 0 {
        "-".to_owned()
    } else {
        format!("{ms} ({})", format_ms_utc(ms))
    }
}

fn explain_refusal(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "done",
        Outcome::InsufficientStock => "at least one line does not fit in ATP",
        Outcome::IdempotencyConflict => "the id was used before with another payload",
        Outcome::NotFound => "no reservation with this id (never made, or past the retention window)",
        Outcome::InvalidState => "the reservation is in a state that does not allow this",
        Outcome::StaleEvent => "an event at least as new from this source was already applied to this position",
        Outcome::InsufficientQuantity => "the decrease is larger than the quantity it decreases",
        Outcome::RiskRefused => "the checkout risk gate refused a line",
        Outcome::Unspecified => "the server gave no outcome",
    }
}

// ---------------------------------------------------------------------------
// Reservations
// ---------------------------------------------------------------------------

pub fn line_json(line: &Line) -> Value {
    json!({ "sku": line.sku, "location": line.location, "quantity": line.quantity })
}

/// `{id, state, lines: [{sku, location, quantity}], expires_at_ms, created_at_ms, finished_at_ms,
/// home_group, parts: [{group_id, state, lines}]}`.
pub fn reservation_json(reservation: &Reservation) -> Value {
    json!({
        "id": reservation.id,
        "state": state_word(reservation.state()),
        "lines": reservation.lines.iter().map(line_json).collect::<Vec<_>>(),
        "expires_at_ms": reservation.expires_at_ms,
        "created_at_ms": reservation.created_at_ms,
        "finished_at_ms": reservation.finished_at_ms,
        "home_group": reservation.home_group,
        "parts": reservation.parts.iter().map(|part| json!({
            "group_id": part.group_id,
            "state": part_state_word(part),
            "lines": part.lines.iter().map(line_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// A part's state; `following` while its group has not yet confirmed the
/// state of the reservation's record.
fn part_state_word(part: &crate::proto::v1::ReservationPart) -> &'static str {
    match part.state() {
        ReservationState::Unspecified => "following",
        state => state_word(state),
    }
}

/// A short aligned block: id, state, times, home group, then the lines as a
/// table grouped by shard group, with each group's state.
pub fn reservation_human(reservation: &Reservation) -> String {
    let mut fields = vec![
        ("id", reservation.id.clone()),
        ("state", state_word(reservation.state()).to_owned()),
        ("created_at_ms", ms_with_time(reservation.created_at_ms)),
        ("expires_at_ms", ms_with_time(reservation.expires_at_ms)),
        ("finished_at_ms", ms_with_time(reservation.finished_at_ms)),
    ];
    if reservation.parts.is_empty() {
        let mut out = render_key_values(&fields);
        let rows: Vec<Vec<String>> = reservation.lines.iter().map(|line| vec![line.sku.clone(), line.location.clone(), line.quantity.to_string()]).collect();
        out.push_str(&render_table(&["SKU", "LOCATION", "QUANTITY"], &rows));
        return out;
    }
    fields.push(("home_group", reservation.home_group.to_string()));
    let mut out = render_key_values(&fields);
    let rows: Vec<Vec<String>> = reservation
        .parts
        .iter()
        .flat_map(|part| {
            part.lines.iter().map(move |line| {
                vec![part.group_id.to_string(), line.sku.clone(), line.location.clone(), line.quantity.to_string(), part_state_word(part).to_owned()]
            })
        })
        .collect();
    out.push_str(&render_table(&["GROUP", "SKU", "LOCATION", "QUANTITY", "STATE"], &rows));
    out
}

pub fn shortfall_json(shortfall: &Shortfall) -> Value {
    json!({
        "sku": shortfall.sku,
        "location": shortfall.location,
        "requested": shortfall.requested,
        "atp": shortfall.atp,
    })
}

pub fn shortfalls_table(shortfalls: &[Shortfall]) -> String {
    let rows: Vec<Vec<String>> = shortfalls.iter().map(|s| vec![s.sku.clone(), s.location.clone(), s.requested.to_string(), s.atp.to_string()]).collect();
    render_table(&["SKU", "LOCATION", "REQUESTED", "ATP"], &rows)
}

pub fn reserve_json(response: &ReserveResponse) -> Value {
    json!({
        "outcome": outcome_word(response.outcome()),
        "replay": response.replay,
        "applied_index": response.applied_index,
        "reservation": response.reservation.as_ref().map(reservation_json),
        "shortfalls": response.shortfalls.iter().map(shortfall_json).collect::<Vec<_>>(),
        "risk": response.risk.iter().map(line_risk_json).collect::<Vec<_>>(),
    })
}

/// One line's gate verdict; `p_sellable` is null when no model answered.
pub fn line_risk_json(risk: &LineRisk) -> Value {
    json!({
        "p_sellable": risk.scored.then_some(risk.p_sellable),
        "threshold": risk.threshold,
        "model_version": risk.model_version,
        "refused_by": risk.refused_by,
        "degraded": risk.degraded,
    })
}

/// The gate's verdicts, a row per line.
pub fn risk_table(lines: &[Line], risk: &[LineRisk]) -> String {
    let rows: Vec<Vec<String>> = lines
        .iter()
        .zip(risk)
        .map(|(line, r)| {
            let p = if r.scored { format!("{:.3}", r.p_sellable) } else { "-".to_owned() };
            let verdict = if r.refused_by.is_empty() { "pass".to_owned() } else { format!("refused: {}", r.refused_by.join(", ")) };
            let degraded = if r.degraded.is_empty() { "-".to_owned() } else { r.degraded.join(", ") };
            vec![line.sku.clone(), line.location.clone(), p, format!("{:.3}", r.threshold), verdict, degraded]
        })
        .collect();
    render_table(&["SKU", "LOCATION", "P_SELLABLE", "THRESHOLD", "GATE", "DEGRADED"], &rows)
}

pub fn reserve_human(reservation_id: &str, lines: &[Line], response: &ReserveResponse) -> String {
    let outcome = response.outcome();
    let label = outcome_label(outcome, response.replay);
    let mut out = match outcome {
        Outcome::Ok => format!("{label}: reserved {reservation_id}\n"),
        Outcome::InsufficientStock => {
            let mut text = format!("{label}: reservation {reservation_id} not made, short on:\n");
            text.push_str(&shortfalls_table(&response.shortfalls));
            text
        }
        other => format!("{label}: reservation {reservation_id} not made: {}\n", explain_refusal(other)),
    };
    if outcome == Outcome::Ok {
        if let Some(reservation) = &response.reservation {
            out.push_str(&reservation_human(reservation));
        }
    }
    if !response.risk.is_empty() {
        out.push_str(&risk_table(lines, &response.risk));
    }
    out
}

/// A reservation state change asked by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Commit,
    Release,
    Fulfill,
    Cancel,
}

impl Transition {
    /// The command word ("commit").
    pub fn verb(self) -> &'static str {
        match self {
            Transition::Commit => "commit",
            Transition::Release => "release",
            Transition::Fulfill => "fulfill",
            Transition::Cancel => "cancel",
        }
    }

    /// The past tense ("committed").
    pub fn past(self) -> &'static str {
        match self {
            Transition::Commit => "committed",
            Transition::Release => "released",
            Transition::Fulfill => "fulfilled",
            Transition::Cancel => "cancelled",
        }
    }
}

pub fn reservation_response_json(response: &ReservationResponse) -> Value {
    json!({
        "outcome": outcome_word(response.outcome()),
        "replay": response.replay,
        "applied_index": response.applied_index,
        "reservation": response.reservation.as_ref().map(reservation_json),
    })
}

/// Human answer of commit / release / fulfill / cancel.
pub fn transition_human(transition: Transition, reservation_id: &str, response: &ReservationResponse) -> String {
    let verb = transition.verb();
    let outcome = response.outcome();
    let label = outcome_label(outcome, response.replay);
    let mut out = match (outcome, &response.reservation) {
        (Outcome::Ok, _) => format!("{label}: {} {reservation_id}\n", transition.past()),
        (Outcome::InvalidState, Some(reservation)) => format!("{label}: cannot {verb} {reservation_id}: it is {}\n", state_word(reservation.state())),
        (other, _) => format!("{label}: cannot {verb} {reservation_id}: {}\n", explain_refusal(other)),
    };
    if let Some(reservation) = &response.reservation {
        out.push_str(&reservation_human(reservation));
    }
    out
}

/// JSON of `stockctl reservation`: the reservation itself when found, else
/// `{outcome, id}`.
pub fn get_reservation_json(reservation_id: &str, response: &ReservationResponse) -> Value {
    match (response.outcome(), &response.reservation) {
        (Outcome::Ok, Some(reservation)) => reservation_json(reservation),
        (outcome, _) => json!({ "outcome": outcome_word(outcome), "id": reservation_id }),
    }
}

pub fn get_reservation_human(reservation_id: &str, response: &ReservationResponse) -> String {
    match (response.outcome(), &response.reservation) {
        (Outcome::Ok, Some(reservation)) => reservation_human(reservation),
        (Outcome::Ok, None) => format!("unspecified: reservation {reservation_id}: the server sent no reservation\n"),
        (outcome, _) => {
            format!("{}: reservation {reservation_id}: {}\n", outcome_word(outcome), explain_refusal(outcome))
        }
    }
}

/// Exit code of `stockctl reservation`: found with any state is success.
pub fn get_reservation_exit_code(response: &ReservationResponse) -> u8 {
    match (response.outcome(), &response.reservation) {
        (Outcome::Ok, Some(_)) => EXIT_DONE,
        _ => EXIT_REFUSED,
    }
}

// ---------------------------------------------------------------------------
// Positions
// ---------------------------------------------------------------------------

pub fn position_quantities_json(position: &Position) -> Value {
    json!({
        "region": position.region,
        "sku": position.sku,
        "location": position.location,
        "on_hand": position.on_hand,
        "reserved": position.reserved,
        "committed": position.committed,
        "safety_stock": position.safety_stock,
        "held": position.held,
        "atp": position.atp,
        "short": position.short,
    })
}

fn position_quantity_pairs(position: &Position) -> Vec<(&'static str, String)> {
    vec![
        ("on_hand", position.on_hand.to_string()),
        ("reserved", position.reserved.to_string()),
        ("committed", position.committed.to_string()),
        ("safety_stock", position.safety_stock.to_string()),
        ("held", position.held.to_string()),
        ("atp", position.atp.to_string()),
        ("short", position.short.to_string()),
    ]
}

pub fn adjust_json(response: &AdjustResponse) -> Value {
    json!({
        "outcome": outcome_word(response.outcome()),
        "replay": response.replay,
        "applied_index": response.applied_index,
        "position": response.position.as_ref().map(position_quantities_json),
    })
}

pub fn adjust_human(event_id: &str, kind: AdjustmentKind, quantity: u64, response: &AdjustResponse) -> String {
    let outcome = response.outcome();
    let label = outcome_label(outcome, response.replay);
    let mut out = match outcome {
        Outcome::Ok => format!("{label}: event {event_id} applied ({} {quantity})\n", kind_word(kind)),
        other => format!("{label}: event {event_id} not applied: {}\n", explain_refusal(other)),
    };
    if let Some(position) = &response.position {
        let mut pairs = vec![("sku", position.sku.clone()), ("location", position.location.clone())];
        pairs.extend(position_quantity_pairs(position));
        pairs.push(("applied_index", response.applied_index.to_string()));
        out.push_str(&render_key_values(&pairs));
    }
    out
}

/// JSON of `stockctl get`, keys exactly: sku, location, group, on_hand,
/// reserved, committed, safety_stock, held, atp, short, applied_index,
/// staleness_ms, served_by, leader (null when unknown).
pub fn position_json(sku: &str, location: &str, response: &PositionResponse) -> Value {
    let position = response.position.clone().unwrap_or_default();
    json!({
        "sku": if position.sku.is_empty() { sku } else { position.sku.as_str() },
        "location": if position.location.is_empty() { location } else { position.location.as_str() },
        "group": response.group_id,
        "on_hand": position.on_hand,
        "reserved": position.reserved,
        "committed": position.committed,
        "safety_stock": position.safety_stock,
        "held": position.held,
        "atp": position.atp,
        "short": position.short,
        "applied_index": response.applied_index,
        "staleness_ms": response.staleness_ms,
        "served_by": response.served_by,
        "leader": if response.leader == 0 { Value::Null } else { json!(response.leader) },
    })
}

/// Human answer of `stockctl get`: the same keys as JSON, then the recent
/// changes when the server sent some.
pub fn position_human(sku: &str, location: &str, response: &PositionResponse) -> String {
    let position = response.position.clone().unwrap_or_default();
    let mut pairs = vec![
        ("sku", if position.sku.is_empty() { sku.to_owned() } else { position.sku.clone() }),
        ("location", if position.location.is_empty() { location.to_owned() } else { position.location.clone() }),
        ("group", response.group_id.to_string()),
    ];
    if !position.region.is_empty() {
        pairs.push(("region", position.region.clone()));
    }
    pairs.extend(position_quantity_pairs(&position));
    pairs.push(("applied_index", response.applied_index.to_string()));
    pairs.push(("staleness_ms", response.staleness_ms.to_string()));
    pairs.push(("served_by", response.served_by.to_string()));
    pairs.push(("leader", if response.leader == 0 { "unknown".to_owned() } else { response.leader.to_string() }));
    let mut out = render_key_values(&pairs);
    if response.unknown_position {
        out.push_str("(never written: all quantities are 0)\n");
    }
    if !position.recent_changes.is_empty() {
        out.push_str("recent changes:\n");
        out.push_str(&changes_table(&position.recent_changes));
    }
    out
}

pub fn changes_table(changes: &[Change]) -> String {
    let delta = |d: i64| if d == 0 { String::new() } else { format!("{d:+}") };
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                c.log_index.to_string(),
                format_ms_utc(c.at_ms),
                c.kind.clone(),
                c.reference.clone(),
                delta(c.on_hand_delta),
                delta(c.reserved_delta),
                delta(c.committed_delta),
                delta(c.held_delta),
                delta(c.safety_stock_delta),
                c.reason.clone(),
            ]
        })
        .collect();
    render_table(&["INDEX", "AT", "KIND", "REFERENCE", "ON_HAND", "RESERVED", "COMMITTED", "HELD", "SAFETY", "REASON"], &rows)
}

// ---------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------

pub fn status_response_json(status: &StatusResponse) -> Value {
    json!({
        "node_id": status.node_id,
        "region": status.region,
        "version": status.version,
        "nodes": status.nodes.iter().map(|n| json!({ "id": n.id, "addr": n.addr, "region": n.region, "state": n.state })).collect::<Vec<_>>(),
        "groups": status.groups.iter().map(group_status_json).collect::<Vec<_>>(),
        "model": status.model.as_ref().map(|m| json!({
            "serving": m.serving,
            "disabled": m.disabled,
            "requests": m.requests,
            "fallback_rate": m.fallback_rate,
            "unscored": m.unscored,
            "inference_p50_us": m.inference_p50_us,
            "inference_p99_us": m.inference_p99_us,
            "max_feature_psi": m.max_feature_psi,
            "score_psi": m.score_psi,
            "drift_alerts": m.drift_alerts,
        })),
    })
}

fn group_status_json(group: &GroupStatus) -> Value {
    json!({
        "group_id": group.group_id,
        "region": group.region,
        "start_sku": group.start_sku,
        "end_sku": group.end_sku,
        "replicas": group.replicas,
        "leader": group.leader,
        "term": group.term,
        "role": group.role,
        "last_log_index": group.last_log_index,
        "committed_index": group.committed_index,
        "applied_index": group.applied_index,
        "replication": group.replication.iter().map(|r| json!({
            "node_id": r.node_id,
            "matched_index": r.matched_index,
            "lag": r.lag,
        })).collect::<Vec<_>>(),
        "pending_reservations": group.pending_reservations,
        "positions": group.positions,
        "epoch": group.epoch,
        "load_cmds_per_s": group.load_cmds_per_s,
    })
}

/// `{"responses": [{"addr", "status": {...} | null, "error": "..." | null}]}`.
pub fn status_json(reports: &[NodeStatusReport]) -> Value {
    let responses: Vec<Value> = reports
        .iter()
        .map(|report| match &report.result {
            Ok(status) => json!({ "addr": report.addr, "status": status_response_json(status), "error": null }),
            Err(error) => json!({ "addr": report.addr, "status": null, "error": error.to_string() }),
        })
        .collect();
    json!({ "responses": responses })
}

/// `[start..end)` of a group, `..` sides empty when unbounded.
pub fn range_text(start_sku: &str, end_sku: &str) -> String {
    format!("{start_sku}..{end_sku}")
}

/// A nodes table (one row per address asked) then a groups table (one row
/// per group and answering node, as that node sees it).
pub fn status_human(reports: &[NodeStatusReport]) -> String {
    let node_rows: Vec<Vec<String>> = reports
        .iter()
        .map(|report| match &report.result {
            Ok(status) => {
                let leads = status.groups.iter().filter(|g| g.leader == status.node_id && g.leader != 0).count();
                vec![
                    strip_scheme(&report.addr).to_owned(),
                    status.node_id.to_string(),
                    dash_if_empty(&status.region),
                    dash_if_empty(&status.version),
                    status.groups.len().to_string(),
                    leads.to_string(),
                    "up".to_owned(),
                ]
            }
            Err(error) => vec![
                strip_scheme(&report.addr).to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                format!("down: {}", one_line(&error.to_string())),
            ],
        })
        .collect();
    let mut out = String::from("nodes:\n");
    out.push_str(&render_table(&["ADDR", "NODE", "REGION", "VERSION", "GROUPS", "LEADS", "STATE"], &node_rows));
    let model_rows: Vec<Vec<String>> = reports
        .iter()
        .filter_map(|report| report.result.as_ref().ok())
        .filter_map(|status| status.model.as_ref().map(|m| (status.node_id, m)))
        .map(|(node, m)| {
            vec![
                node.to_string(),
                if m.serving.is_empty() { "none (conservative rule)".to_owned() } else { m.serving.clone() },
                if m.disabled { "yes".to_owned() } else { "no".to_owned() },
                m.requests.to_string(),
                format!("{:.3}", m.fallback_rate),
                m.unscored.to_string(),
                format!("{}/{}", m.inference_p50_us, m.inference_p99_us),
                format!("{:.3}", m.max_feature_psi.max(m.score_psi)),
                drift_text(&m.drift_alerts),
            ]
        })
        .collect();
    if !model_rows.is_empty() {
        out.push_str("model:\n");
        out.push_str(&render_table(&["NODE", "SERVING", "DISABLED", "REQUESTS", "FALLBACK", "UNSCORED", "P50/P99 US", "MAX PSI", "DRIFT"], &model_rows));
    }

    let mut groups: Vec<(u64, &GroupStatus)> = reports
        .iter()
        .filter_map(|report| report.result.as_ref().ok())
        .flat_map(|status| status.groups.iter().map(move |group| (status.node_id, group)))
        .collect();
    groups.sort_by_key(|(node, group)| (group.group_id, *node));
    let group_rows: Vec<Vec<String>> = groups
        .iter()
        .map(|(node, group)| {
            let lag = if group.replication.is_empty() {
                "-".to_owned()
            } else {
                group.replication.iter().map(|r| format!("{}:{}", r.node_id, r.lag)).collect::<Vec<_>>().join(",")
            };
            let replicas = group.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            vec![
                group.group_id.to_string(),
                dash_if_empty(&group.region),
                range_text(&group.start_sku, &group.end_sku),
                dash_if_empty(&replicas),
                if group.leader == 0 { "-".to_owned() } else { group.leader.to_string() },
                group.term.to_string(),
                node.to_string(),
                dash_if_empty(&group.role),
                group.last_log_index.to_string(),
                group.committed_index.to_string(),
                group.applied_index.to_string(),
                lag,
                group.pending_reservations.to_string(),
                group.positions.to_string(),
            ]
        })
        .collect();
    out.push_str("\ngroups:\n");
    out.push_str(&render_table(
        &["GROUP", "REGION", "RANGE", "REPLICAS", "LEADER", "TERM", "NODE", "ROLE", "LAST_LOG", "COMMITTED", "APPLIED", "LAG", "PENDING", "POSITIONS"],
        &group_rows,
    ));
    out
}

/// One group of `stockctl shard list`, as the node that reported it sees it.
struct ShardRow<'a> {
    group: &'a GroupStatus,
    /// The node whose answer the row is: the group's leader if it answered,
    /// else the replica that applied most.
    seen_by: u64,
}

/// Every group once, from its leader's answer when there is one.
fn shard_rows(reports: &[NodeStatusReport]) -> Vec<ShardRow<'_>> {
    let mut rows: BTreeMap<u32, ShardRow<'_>> = BTreeMap::new();
    for status in reports.iter().filter_map(|report| report.result.as_ref().ok()) {
        for group in &status.groups {
            let leads = group.leader != 0 && group.leader == status.node_id;
            let better = match rows.get(&group.group_id) {
                None => true,
                Some(row) => {
                    let row_leads = row.group.leader == row.seen_by && row.group.leader != 0;
                    (leads && !row_leads) || (leads == row_leads && group.applied_index > row.group.applied_index)
                }
            };
            if better {
                rows.insert(group.group_id, ShardRow { group, seen_by: status.node_id });
            }
        }
    }
    rows.into_values().collect()
}

/// `{"shards": [...], "unanswered": [addr...]}`.
pub fn shard_list_json(reports: &[NodeStatusReport]) -> Value {
    let shards: Vec<Value> = shard_rows(reports)
        .iter()
        .map(|row| {
            let g = row.group;
            json!({
                "group_id": g.group_id,
                "region": g.region,
                "start_sku": g.start_sku,
                "end_sku": g.end_sku,
                "epoch": g.epoch,
                "replicas": g.replicas,
                "leader": g.leader,
                "positions": g.positions,
                "pending_reservations": g.pending_reservations,
                "load_cmds_per_s": g.load_cmds_per_s,
                "applied_index": g.applied_index,
                "seen_by": row.seen_by,
            })
        })
        .collect();
    json!({ "shards": shards, "unanswered": unanswered(reports) })
}

fn unanswered(reports: &[NodeStatusReport]) -> Vec<String> {
    reports.iter().filter(|report| report.result.is_err()).map(|report| strip_scheme(&report.addr).to_owned()).collect()
}

fn shard_range_json(r: &stockd_proto::v1::ShardRange) -> Value {
    json!({ "group_id": r.group_id, "region": r.region, "start_sku": r.start_sku, "end_sku": r.end_sku, "epoch": r.epoch, "replicas": r.replicas })
}

/// `{"parent": {...}, "child": {...}}` of `stockctl shard split`.
pub fn shard_split_json(split: &stockd_proto::v1::SplitShardResponse) -> Value {
    json!({ "parent": split.parent.as_ref().map(shard_range_json), "child": split.child.as_ref().map(shard_range_json) })
}

/// What `stockctl shard split` changed, one line per group.
pub fn shard_split_human(split: &stockd_proto::v1::SplitShardResponse) -> String {
    let line = |what: &str, r: &stockd_proto::v1::ShardRange| {
        let replicas = r.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        format!("{what} group {} {} epoch {} replicas {replicas}\n", r.group_id, range_text(&r.start_sku, &r.end_sku), r.epoch)
    };
    let mut out = String::new();
    if let Some(parent) = &split.parent {
        out.push_str(&line("kept ", parent));
    }
    if let Some(child) = &split.child {
        out.push_str(&line("new  ", child));
    }
    out
}

/// `{"range": {...}}` of `stockctl shard move`.
pub fn shard_move_json(moved: &stockd_proto::v1::MoveShardResponse) -> Value {
    json!({ "range": moved.range.as_ref().map(shard_range_json) })
}

/// What `stockctl shard move` changed.
pub fn shard_move_human(moved: &stockd_proto::v1::MoveShardResponse) -> String {
    moved.range.as_ref().map_or_else(String::new, |r| {
        let replicas = r.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        if r.group_id == storage::topology::METADATA_GROUP {
            return format!("moved   group 0 (the metadata group) replicas {replicas}\n");
        }
        format!("moved   group {} {} epoch {} replicas {replicas}\n", r.group_id, range_text(&r.start_sku, &r.end_sku), r.epoch)
    })
}

/// `{"merged": {...}, "retired_group_id": N}` of `stockctl shard merge`.
pub fn shard_merge_json(merge: &stockd_proto::v1::MergeShardResponse) -> Value {
    json!({ "merged": merge.merged.as_ref().map(shard_range_json), "retired_group_id": merge.retired_group_id })
}

/// What `stockctl shard merge` changed.
pub fn shard_merge_human(merge: &stockd_proto::v1::MergeShardResponse) -> String {
    let mut out = String::new();
    if let Some(r) = &merge.merged {
        let replicas = r.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        out.push_str(&format!(
            "merged  group {} {} epoch {} replicas {replicas}
",
            r.group_id,
            range_text(&r.start_sku, &r.end_sku),
            r.epoch
        ));
    }
    out.push_str(&format!(
        "retired group {}
",
        merge.retired_group_id
    ));
    out
}

/// The table of `stockctl shard list`, then the nodes that did not answer.
pub fn shard_list_human(reports: &[NodeStatusReport]) -> String {
    let rows: Vec<Vec<String>> = shard_rows(reports)
        .iter()
        .map(|row| {
            let g = row.group;
            vec![
                g.group_id.to_string(),
                dash_if_empty(&g.region),
                range_text(&g.start_sku, &g.end_sku),
                g.epoch.to_string(),
                dash_if_empty(&g.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(",")),
                if g.leader == 0 { "-".to_owned() } else { g.leader.to_string() },
                g.positions.to_string(),
                g.pending_reservations.to_string(),
                format!("{:.0}", g.load_cmds_per_s),
            ]
        })
        .collect();
    let mut out = render_table(&["GROUP", "REGION", "RANGE", "EPOCH", "REPLICAS", "LEADER", "POSITIONS", "PENDING", "LOAD/S"], &rows);
    for addr in unanswered(reports) {
        out.push_str(&format!("{addr}: no answer; its groups are shown as the other nodes see them\n"));
    }
    out
}

/// One node of `stockctl node list`.
struct NodeRow<'a> {
    node: &'a stockd_proto::v1::NodeStatus,
    replicas: usize,
    leaders: usize,
    /// Whether it holds a replica of the metadata group.
    metadata: bool,
    answered: Option<bool>,
}

/// The nodes of the newest topology any node answered with, with the
/// replicas and leaders `shard list` shows on each.
fn node_rows(reports: &[NodeStatusReport]) -> Vec<NodeRow<'_>> {
    let Some(newest) = reports.iter().filter_map(|r| r.result.as_ref().ok()).max_by_key(|s| s.topology_version) else { return Vec::new() };
    let shards = shard_rows(reports);
    newest
        .nodes
        .iter()
        .map(|node| NodeRow {
            node,
            replicas: shards.iter().filter(|row| row.group.replicas.contains(&node.id)).count(),
            leaders: shards.iter().filter(|row| row.group.leader == node.id).count(),
            metadata: newest.metadata_replicas.contains(&node.id),
            answered: reports.iter().find(|r| strip_scheme(&r.addr) == node.addr).map(|r| r.result.is_ok()),
        })
        .collect()
}

/// The groups node `id` holds replicas of, as the groups' leaders (or
/// their most advanced replicas) report them, and group 0 when the newest
/// topology names it a metadata replica; `None` when no node answered.
pub fn replicas_on(reports: &[NodeStatusReport], id: u64) -> Option<Vec<u32>> {
    let newest = reports.iter().filter_map(|r| r.result.as_ref().ok()).max_by_key(|s| s.topology_version)?;
    let metadata = newest.metadata_replicas.contains(&id).then_some(storage::topology::METADATA_GROUP);
    Some(metadata.into_iter().chain(shard_rows(reports).iter().filter(|row| row.group.replicas.contains(&id)).map(|row| row.group.group_id)).collect())
}

/// `{"nodes": [...], "unanswered": [addr...]}`; `answered` is null for a
/// node that was not asked (not in --addr).
pub fn node_list_json(reports: &[NodeStatusReport]) -> Value {
    let nodes: Vec<Value> = node_rows(reports)
        .iter()
        .map(|row| {
            json!({
                "id": row.node.id,
                "addr": row.node.addr,
                "region": row.node.region,
                "state": row.node.state,
                "replicas": row.replicas,
                "leaders": row.leaders,
                "metadata_replica": row.metadata,
                "answered": row.answered,
            })
        })
        .collect();
    json!({ "nodes": nodes, "unanswered": unanswered(reports) })
}

pub fn node_list_human(reports: &[NodeStatusReport]) -> String {
    let rows: Vec<Vec<String>> = node_rows(reports)
        .iter()
        .map(|row| {
            vec![
                row.node.id.to_string(),
                row.node.addr.clone(),
                dash_if_empty(&row.node.region),
                dash_if_empty(&row.node.state),
                row.replicas.to_string(),
                row.leaders.to_string(),
                if row.metadata { "yes" } else { "-" }.to_owned(),
                match row.answered {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "no".to_owned(),
                    None => "not asked".to_owned(),
                },
            ]
        })
        .collect();
    let mut out = render_table(&["NODE", "ADDR", "REGION", "STATE", "REPLICAS", "LEADERS", "METADATA", "ANSWERED"], &rows);
    if rows.is_empty() {
        out.push_str("no node answered\n");
    }
    out
}

/// `stockctl balance on|off`, as the topology recorded it.
pub fn balance_set_json(set: &stockd_proto::v1::SetBalanceResponse) -> Value {
    json!({ "enabled": set.enabled, "topology_version": set.topology_version })
}

pub fn balance_set_human(set: &stockd_proto::v1::SetBalanceResponse) -> String {
    if set.enabled {
        format!(
            "balancing is on (topology version {}): the metadata group's leader evens out replicas, then leaders, per node, one step every {} s\n",
            set.topology_version,
            crate::placement::PLACE_CHECK.as_secs()
        )
    } else {
        format!("balancing is off (topology version {}): replicas and leaders stay where they are; a drain still moves replicas\n", set.topology_version)
    }
}

/// The balancer's inputs as the newest answers show them, and its plan.
fn balance_plan(reports: &[NodeStatusReport]) -> Option<(&StatusResponse, Option<crate::placement::BalanceStep>)> {
    use crate::placement::GroupView;
    use crate::placement::NodeView;
    use storage::topology::NodeState;
    let newest = reports.iter().filter_map(|r| r.result.as_ref().ok()).max_by_key(|s| s.topology_version)?;
    let nodes: Vec<NodeView> = newest
        .nodes
        .iter()
        .map(|n| NodeView {
            id: n.id,
            region: n.region.clone(),
            state: match n.state.as_str() {
                "up" => NodeState::Up,
                "draining" => NodeState::Draining,
                _ => NodeState::Removed,
            },
        })
        .collect();
    let groups: Vec<GroupView> = shard_rows(reports)
        .iter()
        .map(|row| GroupView {
            group: row.group.group_id,
            region: row.group.region.clone(),
            replicas: row.group.replicas.clone(),
            leader: (row.group.leader != 0).then_some(row.group.leader),
        })
        .collect();
    Some((newest, crate::placement::plan_balance(&nodes, &groups)))
}

fn balance_step_json(step: &crate::placement::BalanceStep) -> Value {
    use crate::placement::BalanceStep;
    match *step {
        BalanceStep::Replica { group, from, to } => json!({ "kind": "replica", "group_id": group, "from": from, "to": to }),
        BalanceStep::Leader { group, from, to } => json!({ "kind": "leader", "group_id": group, "from": from, "to": to }),
    }
}

/// `{"enabled", "topology_version", "nodes": [...], "next_step", "unanswered"}`;
/// `enabled` is null when no node answered.
pub fn balance_status_json(reports: &[NodeStatusReport]) -> Value {
    let plan = balance_plan(reports);
    let mut out = node_list_json(reports);
    out["enabled"] = json!(plan.map(|(s, _)| s.balance_enabled));
    out["topology_version"] = json!(plan.map(|(s, _)| s.topology_version));
    out["next_step"] = plan.and_then(|(_, step)| step).map_or(Value::Null, |step| balance_step_json(&step));
    out
}

pub fn balance_status_human(reports: &[NodeStatusReport]) -> String {
    let Some((newest, step)) = balance_plan(reports) else { return "no node answered\n".to_owned() };
    let mut out = format!("balancing: {} (topology version {})\n", if newest.balance_enabled { "on" } else { "off" }, newest.topology_version);
    out.push_str(&node_list_human(reports));
    match step {
        Some(step) if newest.balance_enabled => out.push_str(&format!("next step: {step}\n")),
        Some(step) => out.push_str(&format!("unbalanced; with balancing on, the next step would be: {step}\n")),
        None => out.push_str("balanced: no up node holds two more replicas, or leads two more groups, than one that could take one\n"),
    }
    let missing = unanswered(reports);
    if !missing.is_empty() {
        out.push_str(&format!("not answered: {} (their groups' leaders may be unknown)\n", missing.join(", ")));
    }
    out
}

/// Exit code of `stockctl status`: done when at least one node answered.
pub fn status_exit_code(reports: &[NodeStatusReport]) -> u8 {
    if reports.iter().any(|report| report.result.is_ok()) {
        EXIT_DONE
    } else {
        EXIT_UNAVAILABLE
    }
}

fn strip_scheme(addr: &str) -> &str {
    addr.strip_prefix("http://").or_else(|| addr.strip_prefix("https://")).unwrap_or(addr)
}

fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

// ---------------------------------------------------------------------------
// Bench
// ---------------------------------------------------------------------------

/// One object with `ops_per_s`, `p50_us`, `p99_us`, `p999_us`, `conserved`,
/// `ok`, `refused`, `errors`, `clients`, `workload`, `duration_s` and details.
pub fn bench_json(report: &BenchReport) -> Value {
    json!({
        "workload": workload_word(report.workload),
        "clients": report.clients,
        "batch": report.batch,
        "skus": report.skus,
        "lines": report.lines,
        "duration_s": report.duration.as_secs_f64(),
        "ops_per_s": report.ops_per_s(),
        "calls_per_s": report.calls_per_s(),
        "p50_us": report.p50_us,
        "p99_us": report.p99_us,
        "p999_us": report.p999_us,
        "max_us": report.max_us,
        "ok": report.ok,
        "refused": report.refused,
        "errors": report.errors,
        "unknown": report.unknown,
        "conserved": report.conserved(),
        "unscored": report.unscored,
        "first_error": report.first_error,
        "violations": report.violations,
    })
}

pub fn bench_human(report: &BenchReport) -> String {
    let mut out = render_key_values(&[
        ("workload", workload_word(report.workload).to_owned()),
        ("clients", report.clients.to_string()),
        ("batch", report.batch.to_string()),
        ("skus", report.skus.to_string()),
        ("lines", report.lines.to_string()),
        ("duration_s", format!("{:.2}", report.duration.as_secs_f64())),
        ("ops_per_s", format!("{:.1}", report.ops_per_s())),
        ("calls_per_s", format!("{:.1}", report.calls_per_s())),
        ("latency_us", format!("p50 {}  p99 {}  p999 {}  max {}", report.p50_us, report.p99_us, report.p999_us, report.max_us)),
        ("ok", report.ok.to_string()),
        ("refused", report.refused.to_string()),
        ("errors", format!("{} ({} with unknown outcome)", report.errors, report.unknown)),
        ("conserved", report.conserved().to_string()),
    ]);
    if report.workload == Workload::Check {
        out.push_str(&format!("unscored: {} (answers without a model score)\n", report.unscored));
    }
    if let Some(error) = &report.first_error {
        out.push_str(&format!("first error: {}\n", one_line(error)));
    }
    for violation in &report.violations {
        out.push_str(&format!("violation: {violation}\n"));
    }
    out
}

pub fn workload_word(workload: Workload) -> &'static str {
    match workload {
        Workload::Hot => "hot",
        Workload::Uniform => "uniform",
        Workload::Cart => "cart",
        Workload::Check => "check",
    }
}

/// Exit code of a finished benchmark: done when conserved, else refused.
pub fn bench_exit_code(report: &BenchReport) -> u8 {
    if report.conserved() {
        EXIT_DONE
    } else {
        EXIT_REFUSED
    }
}

/// Exit code of a benchmark that could not finish.
pub fn bench_error_exit_code(error: &BenchError) -> u8 {
    match error {
        BenchError::Stock { source, .. } | BenchError::Check { source, .. } => exit_code_for_error(source),
        BenchError::InvalidArgument(_) => EXIT_USAGE,
        BenchError::StockRefused { .. } => EXIT_REFUSED,
        BenchError::Task(_) => EXIT_UNAVAILABLE,
    }
}

/// The one stderr line of a benchmark that could not finish.
pub fn bench_error_line(error: &BenchError) -> String {
    match error {
        BenchError::InvalidArgument(message) => format!("error: bench refused as invalid: {}", one_line(message)),
        other => format!("error: bench: {}", one_line(&other.to_string())),
    }
}

fn decision_text(decision: i32) -> &'static str {
    match Decision::try_from(decision) {
        Ok(Decision::Available) => "AVAILABLE",
        Ok(Decision::LowStock) => "LOW_STOCK",
        Ok(Decision::Unavailable) => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// JSON answer of `stockctl check`.
pub fn check_json(sku: &str, response: &CheckAvailabilityResponse) -> Value {
    json!({
        "sku": sku,
        "location": response.location,
        "decision": decision_text(response.decision),
        "p_sellable": if response.scored { json!(response.p_sellable) } else { Value::Null },
        "atp": response.atp,
        "staleness_ms": response.staleness_ms,
        "model_version": if response.model_version.is_empty() { Value::Null } else { json!(response.model_version) },
        "model_variant": if response.model_variant.is_empty() { Value::Null } else { json!(response.model_variant) },
        "threshold": response.threshold,
        "rules": response.rules,
        "degraded": response.degraded,
        "feed_lag_ms": response.feed_lag_ms,
        "seller_type": response.seller_type,
        "applied_index": response.applied_index,
    })
}

pub fn check_human(sku: &str, response: &CheckAvailabilityResponse) -> String {
    let none = || "-".to_owned();
    let list = |items: &[String]| if items.is_empty() { none() } else { items.join(", ") };
    render_key_values(&[
        ("decision", decision_text(response.decision).to_owned()),
        ("sku", sku.to_owned()),
        ("location", if response.location.is_empty() { none() } else { response.location.clone() }),
        ("p_sellable", if response.scored { format!("{:.4}", response.p_sellable) } else { "- (no model score)".to_owned() }),
        ("threshold", format!("{:.4}", response.threshold)),
        ("atp", response.atp.to_string()),
        ("staleness_ms", response.staleness_ms.to_string()),
        ("model_version", if response.model_version.is_empty() { none() } else { format!("{} ({})", response.model_version, response.model_variant) }),
        ("rules", list(&response.rules)),
        ("degraded", list(&response.degraded)),
        ("seller_type", response.seller_type.clone()),
        ("feed_lag_ms", response.feed_lag_ms.to_string()),
    ])
}

/// Several answers (`check` with more than one `--sku`): a JSON array of
/// [`check_json`] objects, in `--sku` order.
pub fn check_batch_json(skus: &[String], responses: &[CheckAvailabilityResponse]) -> Value {
    Value::Array(skus.iter().zip(responses).map(|(sku, response)| check_json(sku, response)).collect())
}

/// Several answers as [`check_human`] blocks, a blank line between them.
pub fn check_batch_human(skus: &[String], responses: &[CheckAvailabilityResponse]) -> String {
    skus.iter().zip(responses).map(|(sku, response)| check_human(sku, response)).collect::<Vec<_>>().join("\n")
}

pub fn rank_json(response: &RankFulfillmentResponse) -> Value {
    json!({
        "model_version": response.model_version,
        "degraded": response.degraded,
        "staleness_ms": response.staleness_ms,
        "candidates": response.candidates.iter().map(|c| json!({
            "location": c.location,
            "eligible": c.eligible,
            "p_sellable": if c.scored { json!(c.p_sellable) } else { Value::Null },
            "cost": c.cost,
            "score": c.score,
            "atp": c.atp,
            "seller_type": c.seller_type,
            "reasons": c.reasons,
        })).collect::<Vec<_>>(),
    })
}

pub fn rank_human(response: &RankFulfillmentResponse) -> String {
    if response.candidates.is_empty() {
        return "no location holds this SKU\n".to_owned();
    }
    let rows: Vec<Vec<String>> = response
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            vec![
                if c.eligible { (i + 1).to_string() } else { "-".to_owned() },
                c.location.clone(),
                if c.scored { format!("{:.4}", c.p_sellable) } else { "-".to_owned() },
                format!("{:.2}", c.cost),
                format!("{:.4}", c.score),
                c.atp.to_string(),
                c.reasons.join(","),
            ]
        })
        .collect();
    let mut out = render_table(&["RANK", "LOCATION", "P_SELLABLE", "COST", "SCORE", "ATP", "REASONS"], &rows);
    if !response.degraded.is_empty() {
        out.push_str(&format!("degraded: {}\n", response.degraded.join(", ")));
    }
    out
}

/// Per-node model answers: the status JSON of each node, or its error.
pub fn model_json(reports: &[(String, Result<ModelStatusResponse, ClientError>)]) -> Value {
    Value::Array(
        reports
            .iter()
            .map(|(addr, result)| match result {
                Ok(response) => json!({
                    "addr": addr,
                    "node": response.node_id,
                    "model": serde_json::from_str::<Value>(&response.status_json).unwrap_or(Value::Null),
                }),
                Err(error) => json!({ "addr": addr, "error": error.to_string() }),
            })
            .collect(),
    )
}

pub fn model_human(reports: &[(String, Result<ModelStatusResponse, ClientError>)]) -> String {
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|(addr, result)| match result {
            Ok(response) => {
                let model: Value = serde_json::from_str(&response.status_json).unwrap_or(Value::Null);
                let text = |key: &str| match &model[key] {
                    Value::Null => "-".to_owned(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let versions =
                    model["versions"].as_array().map(|v| v.iter().filter_map(|v| v["version"].as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default();
                let counters = &model["counters"];
                let latency = &model["inference"];
                vec![
                    format!("{} ({addr})", response.node_id),
                    text("serving"),
                    text("candidate"),
                    text("previous"),
                    versions,
                    text("disabled"),
                    counters["requests"].to_string(),
                    format!("{:.3}", model["fallback_rate"].as_f64().unwrap_or(0.0)),
                    format!("{}/{}", latency["p50_us"], latency["p99_us"]),
                ]
            }
            Err(error) => vec![addr.clone(), format!("error: {error}")],
        })
        .collect();
    render_table(&["NODE", "SERVING", "CANDIDATE", "PREVIOUS", "LOADED", "DISABLED", "REQUESTS", "FALLBACK", "P50/P99 US"], &rows)
}

/// 0 when every node answered, else the exit code of the first error: a
/// node that refused the operation (unknown version, nothing to roll back
/// to, a model that fails verification) is refused (1), not unavailable.
pub fn model_exit_code(reports: &[(String, Result<ModelStatusResponse, ClientError>)]) -> u8 {
    let code = |error: &ClientError| match error {
        ClientError::Rpc { code: tonic::Code::NotFound | tonic::Code::FailedPrecondition, .. } => EXIT_REFUSED,
        other => exit_code_for_error(other),
    };
    reports.iter().find_map(|(_, result)| result.as_ref().err().map(code)).unwrap_or(EXIT_DONE)
}

/// The drifting features of a status line: the first few, then a count.
fn drift_text(alerts: &[String]) -> String {
    const SHOWN: usize = 3;
    match alerts.len() {
        0 => "-".to_owned(),
        n if n <= SHOWN => alerts.join(","),
        n => format!("{} +{} more", alerts[..SHOWN].join(","), n - SHOWN),
    }
}
