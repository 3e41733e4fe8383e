//! The client side: concurrent Jepsen processes calling the public gRPC API
//! through the stockd client library, each operation recorded as an
//! invocation and a completion.
//!
//! Classification (the client library already retries one call on other
//! nodes with the very same message, so the same idempotency key):
//! - a response is `ok`, whatever its business outcome (insufficient stock
//!   is an ok result the model explains);
//! - no answer with the outcome known not applied (never sent, "not
//!   leader" hops exhausted, overloaded, invalid input) is `fail`;
//! - no answer with the outcome unknown is `info`: the process retires and
//!   a fresh process (a new number) takes its slot. A later process of the
//!   slot may retry the same reservation with the same id and payload.
//!
//! Reads that get no answer are `fail` (they changed nothing).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use serde_json::Value;
use stockd_client::Client;
use stockd_client::ClientConfig;
use stockd_client::ClientError;
use stockd_proto::v1 as pb;
use tokio::time::Instant;

use crate::history::Kind;
use crate::history::Process;
use crate::history::Recorder;
use crate::rng::Rng;

pub const LOCATION: &str = "wh1";
/// The default reservation TTL (`--ttl-ms`), longer than any test: nothing
/// expires unless log time jumps by an hour.
pub const TTL_MS: u64 = 3_600_000;
/// Units received for each SKU before the clients start.
pub const INITIAL_STOCK: u64 = 30;

/// Which SKUs the clients hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Every client on one SKU; the hot SKU changes every `HOT_KEY_SECS`
    /// so each SKU's history stays small enough to check exactly.
    HotSku,
    /// Eight SKUs, one per shard group.
    MultiSku,
    /// Carts of 1-6 lines over the eight SKUs of `multi-sku` (so over
    /// several shard groups), committed, released or left to expire, and
    /// retried under the same id when their outcome is unknown; receipts
    /// restock.
    Cart,
}

/// Most lines of one cart of the cart workload.
pub const CART_LINES_MAX: u64 = 6;

pub const HOT_KEY_SECS: u64 = 10;

impl Workload {
    pub fn parse(name: &str) -> Option<Workload> {
        match name {
            "hot-sku" => Some(Workload::HotSku),
            "multi-sku" => Some(Workload::MultiSku),
            "cart" => Some(Workload::Cart),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::HotSku => "hot-sku",
            Workload::MultiSku => "multi-sku",
            Workload::Cart => "cart",
        }
    }

    /// Every SKU a run of `time_limit` seconds uses.
    pub fn skus(self, time_limit: u64) -> Vec<String> {
        match self {
            Workload::HotSku => (0..=time_limit / HOT_KEY_SECS).map(|k| format!("hot-{k}")).collect(),
            Workload::MultiSku | Workload::Cart => "02468ace".chars().map(|c| format!("{c}-sku")).collect(),
        }
    }

    /// The SKU for the next operation at `elapsed` into the run.
    pub fn sku_at(self, skus: &[String], elapsed: Duration, rng: &mut Rng) -> String {
        match self {
            Workload::HotSku => skus[((elapsed.as_secs() / HOT_KEY_SECS) as usize).min(skus.len() - 1)].clone(),
            Workload::MultiSku | Workload::Cart => rng.pick(skus).clone(),
        }
    }
}

/// The recorder and process numbering shared by every process.
#[derive(Debug)]
pub struct Shared {
    pub recorder: Mutex<Recorder>,
    next_process: AtomicU64,
    pub started: Instant,
}

impl Shared {
    pub fn new(started: std::time::Instant) -> Arc<Shared> {
        Arc::new(Shared { recorder: Mutex::new(Recorder::new(started)), next_process: AtomicU64::new(0), started: Instant::from_std(started) })
    }

    pub fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    pub fn record(&self, kind: Kind, f: &str, value: Value, process: Process) -> u64 {
        self.recorder.lock().unwrap_or_else(|p| p.into_inner()).record(kind, f, value, process)
    }
}

/// The connections of one process, through mTLS: receipts go as a feed,
/// everything else (reservations, reads, lookups) as a checkout.
#[derive(Clone)]
pub struct Clients {
    checkout: Client,
    feed: Client,
}

/// Where a process connects, and with which certificates.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub addrs: Vec<String>,
    /// The cluster's `stockd certs` directory.
    pub certs: PathBuf,
}

impl Clients {
    pub fn connect(endpoints: &Endpoints) -> anyhow::Result<Clients> {
        let client = |role| crate::cluster::client_for(&endpoints.addrs, &endpoints.certs, role, client_config());
        Ok(Clients { checkout: client("checkout")?, feed: client("feed")? })
    }

    fn for_op(&self, op: &Op) -> &Client {
        match op {
            Op::Receipt { .. } => &self.feed,
            _ => &self.checkout,
        }
    }
}

/// Client limits of one process: short enough that a partition turns into
/// `info` / `fail` within seconds.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1500),
        total_deadline: Duration::from_secs(3),
        attempts_max: 8,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..ClientConfig::default()
    }
}

/// One operation to perform.
#[derive(Debug, Clone)]
pub enum Op {
    Reserve {
        sku: String,
        id: String,
        qty: u64,
        ttl_ms: u64,
    },
    Commit {
        sku: String,
        id: String,
    },
    Release {
        sku: String,
        id: String,
    },
    Receipt {
        sku: String,
        event: String,
        qty: u64,
    },
    Read {
        sku: String,
    },
    Lookup {
        sku: String,
        id: String,
    },
    /// One reservation of several lines, (sku, quantity) each.
    Cart {
        id: String,
        lines: Vec<(String, u64)>,
        ttl_ms: u64,
    },
    CartCommit {
        id: String,
    },
    CartRelease {
        id: String,
    },
    CartLookup {
        id: String,
    },
}

impl Op {
    pub fn f(&self) -> &'static str {
        match self {
            Op::Reserve { .. } => "reserve",
            Op::Commit { .. } => "commit",
            Op::Release { .. } => "release",
            Op::Receipt { .. } => "receipt",
            Op::Read { .. } => "read",
            Op::Lookup { .. } => "lookup",
            Op::Cart { .. } => "cart",
            Op::CartCommit { .. } => "cart-commit",
            Op::CartRelease { .. } => "cart-release",
            Op::CartLookup { .. } => "cart-lookup",
        }
    }

    fn is_write(&self) -> bool {
        !matches!(self, Op::Read { .. } | Op::Lookup { .. } | Op::CartLookup { .. })
    }

    fn value(&self, is_final: bool) -> Value {
        let mut v = match self {
            Op::Reserve { sku, id, qty, ttl_ms } => json!({"sku": sku, "id": id, "qty": qty, "ttl_ms": ttl_ms}),
            Op::Commit { sku, id } | Op::Release { sku, id } | Op::Lookup { sku, id } => json!({"sku": sku, "id": id}),
            Op::Receipt { sku, event, qty } => json!({"sku": sku, "event": event, "qty": qty}),
            Op::Read { sku } => json!({"sku": sku}),
            Op::Cart { id, lines, ttl_ms } => json!({"id": id, "lines": lines, "ttl_ms": ttl_ms}),
            Op::CartCommit { id } | Op::CartRelease { id } | Op::CartLookup { id } => json!({"id": id}),
        };
        if is_final {
            v["final"] = json!(true);
        }
        v
    }
}

fn outcome_name(outcome: i32) -> String {
    pb::Outcome::try_from(outcome).map_or_else(|_| format!("outcome_{outcome}"), |o| o.as_str_name().to_ascii_lowercase())
}

fn state_name(state: i32) -> String {
    pb::ReservationState::try_from(state).map_or_else(|_| format!("state_{state}"), |s| s.as_str_name().to_ascii_lowercase())
}

/// Performs `op` once: the completion kind and value.
pub async fn perform(clients: &Clients, op: &Op) -> (Kind, Value) {
    let client = clients.for_op(op);
    let result: Result<Value, ClientError> = match op {
        Op::Reserve { sku, id, qty, ttl_ms } => client
            .reserve(pb::ReserveRequest {
                reservation_id: id.clone(),
                lines: vec![pb::Line { sku: sku.clone(), location: LOCATION.into(), quantity: *qty }],
                ttl_ms: *ttl_ms,
                risk_gate: None,
            })
            .await
            .map(|r| json!({"outcome": outcome_name(r.outcome), "replay": r.replay, "applied_index": r.applied_index})),
        Op::Cart { id, lines, ttl_ms } => client
            .reserve(pb::ReserveRequest {
                reservation_id: id.clone(),
                lines: lines.iter().map(|(sku, quantity)| pb::Line { sku: sku.clone(), location: LOCATION.into(), quantity: *quantity }).collect(),
                ttl_ms: *ttl_ms,
                risk_gate: None,
            })
            .await
            .map(|r| json!({"outcome": outcome_name(r.outcome), "replay": r.replay, "applied_index": r.applied_index})),
        Op::Commit { id, .. } | Op::CartCommit { id } => client.commit(id).await.map(|r| reservation_value(&r)),
        Op::Release { id, .. } | Op::CartRelease { id } => client.release(id).await.map(|r| reservation_value(&r)),
        Op::Lookup { id, .. } | Op::CartLookup { id } => client.get_reservation(id).await.map(|r| reservation_value(&r)),
        Op::Receipt { sku, event, qty } => client
            .adjust(pb::AdjustRequest {
                event_id: event.clone(),
                sku: sku.clone(),
                location: LOCATION.into(),
                kind: pb::AdjustmentKind::Receipt as i32,
                quantity: *qty,
                reason: "jepsen".into(),
                // One source per event: ordering per source never refuses it.
                source: format!("jepsen-{event}"),
                source_seq: 1,
                observed_at_ms: 0,
            })
            .await
            .map(|r| json!({"outcome": outcome_name(r.outcome), "replay": r.replay, "applied_index": r.applied_index})),
        Op::Read { sku } => client
            .get_position(pb::GetPositionRequest { sku: sku.clone(), location: LOCATION.into(), consistency: pb::Consistency::Strong as i32, max_staleness_ms: 0 })
            .await
            .map(|r| {
                let p = r.position.unwrap_or_default();
                json!({"on_hand": p.on_hand, "reserved": p.reserved, "committed": p.committed, "atp": p.atp, "applied_index": r.applied_index, "served_by": r.served_by})
            }),
    };
    match result {
        Ok(value) => (Kind::Ok, value),
        Err(e) => {
            let unknown = op.is_write()
                && match &e {
                    ClientError::Unavailable { outcome_unknown, .. } => *outcome_unknown,
                    // A status the library does not classify: not known to be unapplied.
                    ClientError::Rpc { .. } => true,
                    _ => false,
                };
            (if unknown { Kind::Info } else { Kind::Fail }, json!({"error": e.to_string()}))
        }
    }
}

fn reservation_value(r: &pb::ReservationResponse) -> Value {
    json!({
        "outcome": outcome_name(r.outcome),
        "replay": r.replay,
        "state": r.reservation.as_ref().map(|x| state_name(x.state)),
        "applied_index": r.applied_index,
    })
}

/// Invokes, performs and completes `op` as `process`.
pub async fn run_op(shared: &Shared, clients: &Clients, process: u64, op: &Op, is_final: bool) -> (Kind, Value) {
    shared.record(Kind::Invoke, op.f(), op.value(is_final), Process::Client(process));
    let (kind, mut value) = perform(clients, op).await;
    if is_final {
        value["final"] = json!(true);
    }
    shared.record(kind, op.f(), value.clone(), Process::Client(process));
    (kind, value)
}

/// What one slot (a logical client thread) remembers across its processes.
#[derive(Debug, Default)]
struct Slot {
    /// Acknowledged reservations not committed or released: (sku, id).
    pending: Vec<(String, String)>,
    /// Reservations whose reserve outcome is unknown: retried later with the same id and payload.
    uncertain: Vec<(String, String, u64)>,
    /// Every id this slot used, for lookups.
    known: Vec<(String, String)>,
    counter: u64,
    /// The cart workload's acknowledged carts not committed or released.
    carts_pending: Vec<String>,
    /// Carts whose outcome is unknown: retried with the same id and lines.
    carts_uncertain: Vec<(String, Vec<(String, u64)>)>,
    /// Every cart id this slot used.
    carts_known: Vec<String>,
}

/// Runs one slot until `deadline`: processes that retire on `info` are
/// replaced by fresh ones.
pub async fn run_slot(
    shared: Arc<Shared>,
    endpoints: Endpoints,
    workload: Workload,
    skus: Arc<Vec<String>>,
    mut rng: Rng,
    deadline: Instant,
    ttl_ms: u64,
) -> anyhow::Result<()> {
    let mut slot = Slot::default();
    while Instant::now() < deadline {
        let process = shared.new_process();
        let client = Clients::connect(&endpoints)?;
        while Instant::now() < deadline {
            let op = if workload == Workload::Cart {
                next_cart_op(&mut slot, &mut rng, process, &skus, ttl_ms)
            } else {
                let sku = workload.sku_at(&skus, shared.started.elapsed(), &mut rng);
                next_op(&mut slot, &mut rng, process, sku, ttl_ms)
            };
            let (kind, value) = run_op(&shared, &client, process, &op, false).await;
            match (&op, kind) {
                (Op::Cart { id, lines, .. }, Kind::Info) if !slot.carts_uncertain.iter().any(|(u, _)| u == id) => {
                    slot.carts_uncertain.push((id.clone(), lines.clone()));
                }
                (Op::Cart { id, .. }, Kind::Ok) => {
                    slot.carts_uncertain.retain(|(u, _)| u != id);
                    if value["outcome"] == "ok" && !slot.carts_pending.contains(id) {
                        slot.carts_pending.push(id.clone());
                    }
                }
                (Op::Reserve { sku, id, qty, .. }, Kind::Info) if !slot.uncertain.iter().any(|(_, u, _)| u == id) => {
                    slot.uncertain.push((sku.clone(), id.clone(), *qty));
                }
                (Op::Reserve { sku, id, .. }, Kind::Ok) => {
                    slot.uncertain.retain(|(_, u, _)| u != id);
                    if value["outcome"] == "ok" && !slot.pending.iter().any(|(_, p)| p == id) {
                        slot.pending.push((sku.clone(), id.clone()));
                    }
                }
                _ => {}
            }
            if kind == Kind::Info {
                break; // the process retires; a fresh one takes the slot
            }
            let pause = Duration::from_millis(rng.range(5, 40));
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }
    Ok(())
}

fn next_op(slot: &mut Slot, rng: &mut Rng, process: u64, sku: String, ttl_ms: u64) -> Op {
    slot.counter += 1;
    let roll = rng.below(100);
    let mine: Vec<usize> = (0..slot.pending.len()).filter(|i| slot.pending[*i].0 == sku).collect();
    if (40..62).contains(&roll) && !mine.is_empty() {
        let (sku, id) = slot.pending.remove(mine[rng.below(mine.len() as u64) as usize]);
        return if roll < 52 { Op::Commit { sku, id } } else { Op::Release { sku, id } };
    }
    if (62..67).contains(&roll) {
        return Op::Receipt { sku, event: format!("e{process}-{}", slot.counter), qty: rng.range(5, 10) };
    }
    if (67..85).contains(&roll) {
        return Op::Read { sku };
    }
    if (85..93).contains(&roll) && !slot.known.is_empty() {
        let (sku, id) = rng.pick(&slot.known).clone();
        return Op::Lookup { sku, id };
    }
    if roll >= 93 && !slot.uncertain.is_empty() {
        let (sku, id, qty) = rng.pick(&slot.uncertain).clone();
        return Op::Reserve { sku, id, qty, ttl_ms };
    }
    let id = format!("r{process}-{}", slot.counter);
    slot.known.push((sku.clone(), id.clone()));
    Op::Reserve { sku, id, qty: rng.range(1, 3), ttl_ms }
}

/// The cart workload's next operation: a new cart of 1 to
/// [`CART_LINES_MAX`] distinct SKUs, a commit or release of an acknowledged
/// one, a lookup, or a retry of one whose outcome is unknown.
fn next_cart_op(slot: &mut Slot, rng: &mut Rng, process: u64, skus: &[String], ttl_ms: u64) -> Op {
    slot.counter += 1;
    let roll = rng.below(100);
    if (40..65).contains(&roll) && !slot.carts_pending.is_empty() {
        let id = slot.carts_pending.remove(rng.below(slot.carts_pending.len() as u64) as usize);
        return if roll < 55 { Op::CartCommit { id } } else { Op::CartRelease { id } };
    }
    if (65..80).contains(&roll) && !slot.carts_known.is_empty() {
        return Op::CartLookup { id: rng.pick(&slot.carts_known).clone() };
    }
    if (80..88).contains(&roll) {
        return Op::Read { sku: rng.pick(skus).clone() };
    }
    if (88..94).contains(&roll) {
        return Op::Receipt { sku: rng.pick(skus).clone(), event: format!("e{process}-{}", slot.counter), qty: rng.range(2, 6) };
    }
    if roll >= 94 && !slot.carts_uncertain.is_empty() {
        let (id, lines) = rng.pick(&slot.carts_uncertain).clone();
        return Op::Cart { id, lines, ttl_ms };
    }
    let wanted = rng.range(1, CART_LINES_MAX.min(skus.len() as u64)) as usize;
    let mut lines: Vec<(String, u64)> = Vec::with_capacity(wanted);
    while lines.len() < wanted {
        let sku = rng.pick(skus).clone();
        if !lines.iter().any(|(s, _)| *s == sku) {
            lines.push((sku, rng.range(1, 2)));
        }
    }
    let id = format!("c{process}-{}", slot.counter);
    slot.carts_known.push(id.clone());
    Op::Cart { id, lines, ttl_ms }
}
