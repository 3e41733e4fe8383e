//! The simulator: drives the real inventory state machine with the streams a
//! marketplace sees, beside a hidden true stock, and writes one labelled
//! training row per checkout request.
//!
//! What makes records lie here, each a parameter of [`SimParams`]:
//! - undetected shrinkage (theft, loss) removes physical units without a scan;
//! - scans arrive late (feed delay, with lag episodes past the SLA), twice
//!   (duplicates) or out of order (an older `source_seq` after a newer one is
//!   refused as stale, so its units never reach the record);
//! - third-party feeds drop events, with a long tail of poor sellers;
//! - cancellations after commit, returns (some unsellable), failed shipments;
//! - cycle counts reset the record to the physical count (observed earlier
//!   than applied, so sales in between are counted twice or not at all);
//! - third-party sellers also sell their stock off-platform: units leave
//!   without a scan until the seller's next stock-level sync (a count, every
//!   10 min to 2 h depending on the seller, delivered through its lagging
//!   feed);
//! - demand spikes of 5-20x during promotions;
//! - replica lag episodes: reads come from a copy of the position as it was
//!   when the episode began.
//!
//! A row is written where the availability question is asked (a product page
//! or the start of a checkout, from the replica's view); the buyer reaches
//! the reservation a think time later (seconds to minutes), when other buyers
//! may have taken the units, carts may have been abandoned, or stock arrived.
//! Label of a row: could the requested units really be fulfilled at that
//! commit, i.e. `true_stock >= reserved + committed + quantity` at the
//! reservation time, where the reserved and committed units are the leader's
//! (the promises already made).
//!
//! Deterministic: one seed, one output, byte for byte. The state machine is
//! driven through `Inventory::apply_batch`, exactly as the Raft groups do.

use std::collections::BTreeMap;
use std::collections::BinaryHeap;
use std::io::Write;

use serde::Serialize;
use storage::inventory::Inventory;
use storage::model::Adjustment;
use storage::model::AdjustmentKind;
use storage::model::Batch;
use storage::model::Command;
use storage::model::Limits;
use storage::model::Line;
use storage::model::Outcome;
use storage::model::Position;
use storage::model::PositionKey;

use crate::features;
use crate::features::RequestContext;
use crate::features::SellerType;
use crate::features::FEATURE_NAMES;

/// Bumped whenever the simulated world changes, so rows say what made them.
pub const SIMULATOR_VERSION: &str = "sim-2";

/// 2026-11-02T00:00:00Z, a Monday.
pub const EPOCH_MS: u64 = 1_793_577_600_000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimParams {
    pub seed: u64,
    pub skus: usize,
    pub locations: usize,
    /// Fraction of locations that are third-party sellers.
    pub third_party_fraction: f64,
    /// Simulated hours before rows are written, so the recorded weeks start
    /// from a settled world (records already drifted, counts on schedule).
    pub warmup_hours: u64,
    /// Simulated hours whose availability questions become rows.
    pub hours: u64,
    pub tick_ms: u64,
    /// Mean checkout requests per position per hour (log-normal across positions).
    pub orders_per_hour: f64,
    /// Undetected shrink: units lost per unit sold.
    pub shrink_per_sale: f64,
    /// Promotions: chance per SKU per hour of starting one, and its demand multiplier range.
    pub promo_start_per_hour: f64,
    pub promo_multiplier: (f64, f64),
    /// Scan delay of first-party feeds, ms (median), and of third-party ones.
    pub first_party_delay_ms: u64,
    pub third_party_delay_ms: u64,
    /// Chance per location per hour of a feed-lag episode, and its length range (minutes).
    pub lag_episode_per_hour: f64,
    pub lag_episode_minutes: (u64, u64),
    /// Chance that a scan is delivered twice.
    pub duplicate_rate: f64,
    /// Hours between cycle counts of first-party warehouses.
    pub count_every_hours: f64,
    /// Minutes between a third-party seller's stock-level syncs (range over sellers).
    pub seller_sync_minutes: (u64, u64),
    /// Off-platform sales of a third-party position, units per hour (range over sellers).
    pub off_platform_per_hour: (f64, f64),
    /// Chance an order is cancelled after commit (first-party; third-party more).
    pub cancel_rate: f64,
    /// Chance a shipped order comes back, and the sellable share of returns.
    pub return_rate: f64,
    pub return_sellable: f64,
    /// Mean time from the availability question to the reservation (ms).
    pub think_ms_mean: u64,
    /// Chance per hour of a replica lag episode (all positions) and its length range (s).
    pub replica_lag_per_hour: f64,
    pub replica_lag_seconds: (u64, u64),
}

impl SimParams {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            skus: 200,
            locations: 10,
            third_party_fraction: 0.4,
            warmup_hours: 48,
            hours: 336,
            tick_ms: 5_000,
            orders_per_hour: 2.0,
            shrink_per_sale: 0.015,
            promo_start_per_hour: 0.01,
            promo_multiplier: (5.0, 20.0),
            first_party_delay_ms: 2_000,
            third_party_delay_ms: 30_000,
            lag_episode_per_hour: 0.02,
            lag_episode_minutes: (2, 90),
            duplicate_rate: 0.02,
            count_every_hours: 24.0,
            seller_sync_minutes: (60, 720),
            off_platform_per_hour: (0.0, 1.5),
            cancel_rate: 0.03,
            return_rate: 0.08,
            return_sellable: 0.7,
            think_ms_mean: 45_000,
            replica_lag_per_hour: 0.5,
            replica_lag_seconds: (2, 120),
        }
    }
}

/// What one run produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimSummary {
    pub rows: u64,
    pub positives: u64,
    pub rule_promises: u64,
    pub reserves_ok: u64,
    pub shipments_failed: u64,
    pub stale_scans: u64,
    /// Share of positions whose recorded on_hand differed from the true stock
    /// at the end of the run.
    pub inaccurate_record_share: f64,
}

/// A small, fast, seeded generator (xorshift64*), so the output does not
/// depend on a library's algorithm choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // SplitMix64 step so that small seeds start far apart.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        debug_assert!(low <= high);
        low + self.next_u64() % (high - low + 1)
    }

    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn poisson(&mut self, mean: f64) -> u64 {
        // Knuth; means here are small (well under 30).
        let limit = (-mean).exp();
        let mut product = self.unit();
        let mut count = 0;
        while product > limit {
            count += 1;
            product *= self.unit();
        }
        count
    }
}

#[derive(Debug, Clone)]
struct Location {
    name: String,
    seller_type: SellerType,
    /// 1 = perfect; third-party sellers have a long tail towards 0.
    reliability: f64,
    source_seq: u64,
    lag_until_ms: u64,
    /// Third-party only: units sold elsewhere per hour, and the stock-level
    /// sync interval.
    off_platform_per_hour: f64,
    sync_every_ms: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    key: PositionKey,
    location: usize,
    true_stock: u64,
    demand_per_hour: f64,
    reorder_point: u64,
    reorder_quantity: u64,
    replenishing: bool,
    next_count_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A feed event reaches the cluster.
    Deliver(Adjustment),
    /// Ordered goods arrive at a location (physically; the scan follows).
    Replenish {
        slot: usize,
        quantity: u64,
    },
    Commit {
        reservation_id: String,
    },
    Release {
        reservation_id: String,
    },
    Ship {
        slot: usize,
        reservation_id: String,
        quantity: u64,
    },
    CustomerCancel {
        reservation_id: String,
    },
    ReturnArrives {
        slot: usize,
        quantity: u64,
    },
    /// The buyer who asked earlier reaches the reservation.
    Attempt {
        slot: usize,
        quantity: u64,
        asked_ms: u64,
        row: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Scheduled {
    at_ms: u64,
    sequence: u64,
    event: Event,
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: earliest first.
        (other.at_ms, other.sequence).cmp(&(self.at_ms, self.sequence))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

struct World<'a, W: Write> {
    params: &'a SimParams,
    rng: Rng,
    inventory: Inventory,
    log_index: u64,
    locations: Vec<Location>,
    slots: Vec<Slot>,
    promo_until_ms: Vec<u64>,
    promo_multiplier: Vec<f64>,
    queue: BinaryHeap<Scheduled>,
    sequence: u64,
    next_id: u64,
    /// Copies of positions taken when a replica lag episode began.
    replica: Option<(u64, BTreeMap<PositionKey, Position>)>,
    replica_lag_until_ms: u64,
    out: &'a mut W,
    /// The first failure to write a row (rows are written from events).
    write_error: Option<std::io::Error>,
    /// Questions asked before this log time (the warm-up) write no row.
    recording_from_ms: u64,
    summary: SimSummary,
}

/// Header of the rows file: metadata, the features in tensor order, then the
/// baseline's answer and the label.
pub fn header() -> String {
    let mut columns = vec!["t_ms", "sku", "location", "seller_type"];
    columns.extend(FEATURE_NAMES);
    columns.extend(["rule_promise", "label"]);
    columns.join(",")
}

/// Runs the simulation, writing the header and one row per checkout request.
pub fn run<W: Write>(params: &SimParams, out: &mut W) -> std::io::Result<SimSummary> {
    let mut rng = Rng::new(params.seed);
    let locations: Vec<Location> = (0..params.locations)
        .map(|i| {
            let third_party = (i as f64) >= (params.locations as f64) * (1.0 - params.third_party_fraction);
            let (prefix, seller_type, reliability) = if third_party {
                // Long tail: most sellers decent, a few poor.
                ("3p", SellerType::ThirdParty, 1.0 - 0.8 * rng.unit().powi(3))
            } else {
                ("dc", SellerType::FirstParty, 1.0 - 0.1 * rng.unit())
            };
            let (off_platform_per_hour, sync_every_ms) = if third_party {
                let (low, high) = params.off_platform_per_hour;
                let (sync_low, sync_high) = params.seller_sync_minutes;
                (rng.uniform(low, high), rng.range(sync_low, sync_high) * 60_000)
            } else {
                (0.0, 0)
            };
            Location { name: format!("{prefix}-{i:03}"), seller_type, reliability, source_seq: 0, lag_until_ms: 0, off_platform_per_hour, sync_every_ms }
        })
        .collect();
    let mut slots = Vec::new();
    for sku in 0..params.skus {
        // Each SKU is stocked at 2-4 locations.
        let stocked = rng.range(2, 4) as usize;
        let first = rng.range(0, params.locations as u64 - 1) as usize;
        for j in 0..stocked {
            let location = (first + j * 3) % params.locations;
            let demand_per_hour = params.orders_per_hour * (0.8 * rng.normal()).exp();
            let reorder_point = rng.range(1, 8);
            let reorder_quantity = rng.range(10, 60);
            slots.push(Slot {
                key: PositionKey::new(format!("sku-{sku:05}"), locations[location].name.clone()),
                location,
                true_stock: 0,
                demand_per_hour,
                reorder_point,
                reorder_quantity,
                replenishing: false,
                next_count_ms: 0,
            });
        }
    }
    slots.sort_by(|a, b| a.key.cmp(&b.key));
    slots.dedup_by(|a, b| a.key == b.key);
    let skus = params.skus;
    let mut world = World {
        params,
        rng,
        inventory: Inventory::new(Limits::default()),
        log_index: 0,
        locations,
        slots,
        promo_until_ms: vec![0; skus],
        promo_multiplier: vec![1.0; skus],
        queue: BinaryHeap::new(),
        sequence: 0,
        next_id: 0,
        replica: None,
        replica_lag_until_ms: 0,
        out,
        write_error: None,
        recording_from_ms: EPOCH_MS,
        summary: SimSummary::default(),
    };
    writeln!(world.out, "{}", header())?;
    world.stock_initially();
    world.recording_from_ms = EPOCH_MS + params.warmup_hours * 3_600_000;
    let end_ms = world.recording_from_ms + params.hours * 3_600_000;
    let mut now_ms = EPOCH_MS;
    while now_ms < end_ms {
        now_ms += params.tick_ms;
        world.deliver_due(now_ms);
        world.start_episodes(now_ms);
        world.tick(now_ms)?;
        if let Some(error) = world.write_error.take() {
            return Err(error);
        }
    }
    world.finish();
    Ok(world.summary)
}

impl<W: Write> World<'_, W> {
    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Scheduled { at_ms, sequence: self.sequence, event });
    }

    fn apply(&mut self, at_ms: u64, commands: Vec<Command>) -> Vec<storage::model::CommandResult> {
        self.log_index += 1;
        let results = self.inventory.apply_batch(self.log_index, &Batch::new(at_ms, storage::model::FIRST_EPOCH, commands));
        // Persistence is not simulated; keep the dirty sets from growing.
        self.inventory.take_dirty();
        results
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }

    /// Every position starts stocked, recorded exactly, with a count.
    fn stock_initially(&mut self) {
        for i in 0..self.slots.len() {
            let quantity = self.rng.range(0, 30);
            self.slots[i].true_stock = quantity;
            let adjustment = self.scan(i, AdjustmentKind::Count, quantity, EPOCH_MS);
            self.apply(EPOCH_MS, vec![Command::Adjust(adjustment)]);
            let first_count = EPOCH_MS + self.count_interval_ms(i);
            self.slots[i].next_count_ms = first_count;
        }
    }

    fn count_interval_ms(&mut self, slot: usize) -> u64 {
        let location = &self.locations[self.slots[slot].location];
        let mean_ms = match location.seller_type {
            SellerType::FirstParty => self.params.count_every_hours * 3_600_000.0,
            SellerType::ThirdParty => location.sync_every_ms as f64,
        };
        (self.rng.uniform(0.5, 1.5) * mean_ms) as u64
    }

    /// A feed event observed now at a slot's location.
    fn scan(&mut self, slot: usize, kind: AdjustmentKind, quantity: u64, observed_at_ms: u64) -> Adjustment {
        let location = &mut self.locations[self.slots[slot].location];
        location.source_seq += 1;
        let source_seq = location.source_seq;
        let source = format!("feed-{}", location.name);
        let key = self.slots[slot].key.clone();
        Adjustment {
            event_id: self.id("scan"),
            sku: key.sku,
            location: key.location,
            kind,
            quantity,
            reason: format!("simulated {}", kind.as_str()),
            source,
            source_seq,
            observed_at_ms: Some(observed_at_ms),
        }
    }

    /// Sends a scan down the feed: maybe lost, maybe late, maybe twice.
    fn send(&mut self, slot: usize, kind: AdjustmentKind, quantity: u64, now_ms: u64) {
        let adjustment = self.scan(slot, kind, quantity, now_ms);
        let location = &self.locations[self.slots[slot].location];
        let reliability = location.reliability;
        let (median_ms, lagging) = match location.seller_type {
            SellerType::FirstParty => (self.params.first_party_delay_ms, location.lag_until_ms > now_ms),
            SellerType::ThirdParty => (self.params.third_party_delay_ms, location.lag_until_ms > now_ms),
        };
        // Unreliable third-party feeds lose events outright.
        if self.rng.chance((1.0 - reliability) * 0.3) {
            return;
        }
        let mut delay_ms = self.rng.exponential(median_ms as f64 / std::f64::consts::LN_2 / (0.5 + reliability)) as u64;
        if lagging {
            delay_ms += (location.lag_until_ms - now_ms) + self.rng.range(0, 30_000);
        }
        if self.rng.chance(self.params.duplicate_rate) {
            let again_ms = delay_ms + self.rng.range(1_000, 120_000);
            self.schedule(now_ms + again_ms, Event::Deliver(adjustment.clone()));
        }
        self.schedule(now_ms + delay_ms.max(1), Event::Deliver(adjustment));
    }

    fn deliver_due(&mut self, now_ms: u64) {
        while self.queue.peek().is_some_and(|next| next.at_ms <= now_ms) {
            let Some(Scheduled { at_ms, event, .. }) = self.queue.pop() else { break };
            self.handle(at_ms, event);
        }
    }

    fn handle(&mut self, at_ms: u64, event: Event) {
        match event {
            Event::Deliver(adjustment) => {
                let results = self.apply(at_ms, vec![Command::Adjust(adjustment)]);
                if results.first().is_some_and(|r| r.outcome == Outcome::StaleEvent) {
                    self.summary.stale_scans += 1;
                }
            }
            Event::Replenish { slot, quantity } => {
                self.slots[slot].true_stock += quantity;
                self.slots[slot].replenishing = false;
                self.send(slot, AdjustmentKind::Receipt, quantity, at_ms);
            }
            Event::Commit { reservation_id } => {
                self.apply(at_ms, vec![Command::Commit { reservation_id }]);
            }
            Event::Release { reservation_id } => {
                self.apply(at_ms, vec![Command::Release { reservation_id }]);
            }
            Event::CustomerCancel { reservation_id } => {
                self.apply(at_ms, vec![Command::Cancel { reservation_id }]);
            }
            Event::Ship { slot, reservation_id, quantity } => {
                let committed = self.inventory.reservation(&reservation_id).is_some_and(|r| r.state == storage::model::ReservationState::Committed);
                if !committed {
                    return;
                }
                if self.slots[slot].true_stock >= quantity {
                    self.slots[slot].true_stock -= quantity;
                    self.apply(at_ms, vec![Command::Fulfill { reservation_id }]);
                    // Undetected shrink, in proportion to sales and worse at unreliable locations.
                    let reliability = self.locations[self.slots[slot].location].reliability;
                    let shrink_chance = self.params.shrink_per_sale * quantity as f64 * (2.0 - reliability) * 2.0;
                    if self.rng.chance(shrink_chance.min(1.0)) && self.slots[slot].true_stock > 0 {
                        self.slots[slot].true_stock -= 1;
                    }
                    if self.rng.chance(self.params.return_rate) {
                        let back_ms = at_ms + self.rng.range(3_600_000, 48 * 3_600_000);
                        self.schedule(back_ms, Event::ReturnArrives { slot, quantity });
                    }
                } else {
                    // An oversell: the units are not there. The order is
                    // cancelled and the picker's count goes down the feed.
                    self.summary.shipments_failed += 1;
                    self.apply(at_ms, vec![Command::Cancel { reservation_id }]);
                    let counted = self.slots[slot].true_stock;
                    self.send(slot, AdjustmentKind::Count, counted, at_ms);
                }
            }
            Event::Attempt { slot, quantity, asked_ms, row } => {
                let recorded = asked_ms >= self.recording_from_ms;
                if let Err(error) = self.attempt(slot, quantity, at_ms, recorded.then_some(row.as_str())) {
                    self.write_error.get_or_insert(error);
                }
            }
            Event::ReturnArrives { slot, quantity } => {
                if self.rng.chance(self.params.return_sellable) {
                    self.slots[slot].true_stock += quantity;
                    self.send(slot, AdjustmentKind::Return, quantity, at_ms);
                }
            }
        }
    }

    fn start_episodes(&mut self, now_ms: u64) {
        let tick_hours = self.params.tick_ms as f64 / 3_600_000.0;
        for i in 0..self.locations.len() {
            if self.locations[i].lag_until_ms <= now_ms && self.rng.chance(self.params.lag_episode_per_hour * tick_hours) {
                let (low, high) = self.params.lag_episode_minutes;
                self.locations[i].lag_until_ms = now_ms + self.rng.range(low, high) * 60_000;
            }
        }
        for sku in 0..self.params.skus {
            if self.promo_until_ms[sku] <= now_ms {
                self.promo_multiplier[sku] = 1.0;
                if self.rng.chance(self.params.promo_start_per_hour * tick_hours) {
                    let (low, high) = self.params.promo_multiplier;
                    self.promo_multiplier[sku] = self.rng.uniform(low, high);
                    self.promo_until_ms[sku] = now_ms + self.rng.range(30, 180) * 60_000;
                }
            }
        }
        if self.replica_lag_until_ms <= now_ms {
            self.replica = None;
            if self.rng.chance(self.params.replica_lag_per_hour * tick_hours) {
                let (low, high) = self.params.replica_lag_seconds;
                self.replica_lag_until_ms = now_ms + self.rng.range(low, high) * 1_000;
                let copies = self.inventory.positions().map(|(key, position)| (key.clone(), position.clone())).collect();
                self.replica = Some((now_ms, copies));
            }
        }
    }

    fn tick(&mut self, now_ms: u64) -> std::io::Result<()> {
        let tick_hours = self.params.tick_ms as f64 / 3_600_000.0;
        let hour = (now_ms / 3_600_000) % 24;
        // Fewer orders at night (UTC), most in the evening.
        let diurnal = 0.4 + 0.6 * ((hour as f64 - 6.0) / 24.0 * std::f64::consts::TAU).sin().max(0.0) * 1.6;
        for i in 0..self.slots.len() {
            let sku = sku_index(&self.slots[i].key.sku);
            let promo = self.promo_until_ms[sku] > now_ms;
            let mean = self.slots[i].demand_per_hour * diurnal * self.promo_multiplier[sku] * tick_hours;
            for _ in 0..self.rng.poisson(mean) {
                self.order(i, now_ms, promo)?;
            }
            // Off-platform sales: physical units leave, no scan says so.
            let off_platform = self.locations[self.slots[i].location].off_platform_per_hour * diurnal * tick_hours;
            if off_platform > 0.0 {
                let sold = self.rng.poisson(off_platform).min(self.slots[i].true_stock);
                self.slots[i].true_stock -= sold;
            }
            if self.slots[i].next_count_ms <= now_ms {
                let counted = self.slots[i].true_stock;
                self.send(i, AdjustmentKind::Count, counted, now_ms);
                let interval = self.count_interval_ms(i);
                self.slots[i].next_count_ms = now_ms + interval;
            }
            // Replenish from the recorded ATP, as a planner would.
            let recorded_atp = self.inventory.position(&self.slots[i].key).map_or(0, Position::atp);
            if !self.slots[i].replenishing && recorded_atp <= self.slots[i].reorder_point {
                self.slots[i].replenishing = true;
                let lead_ms = self.rng.range(1, 12) * 3_600_000;
                let quantity = self.slots[i].reorder_quantity;
                self.schedule(now_ms + lead_ms, Event::Replenish { slot: i, quantity });
            }
        }
        Ok(())
    }

    /// One availability question, from the replica's view; the buyer's
    /// reservation follows after a think time.
    fn order(&mut self, slot: usize, now_ms: u64, promo: bool) -> std::io::Result<()> {
        let quantity = if self.rng.chance(0.8) { 1 } else { self.rng.range(2, 4) };
        let key = self.slots[slot].key.clone();
        let location = &self.locations[self.slots[slot].location];
        let seller_type = location.seller_type;
        let (position, staleness_ms) = match &self.replica {
            Some((since_ms, copies)) => (copies.get(&key).cloned(), now_ms - since_ms + 20),
            None => (self.inventory.position(&key).cloned(), self.rng.range(0, 50)),
        };
        let request = RequestContext { quantity, now_ms, replica_staleness_ms: staleness_ms, seller_type, promo };
        let vector = features::compute(&features::input_from_position(position.as_ref(), &request));
        let rule_promise = position.as_ref().map_or(0, Position::atp) >= quantity;
        let mut row = format!("{now_ms},{},{},{}", key.sku, key.location, seller_type.as_str());
        for value in vector.values {
            row.push(',');
            row.push_str(&value.to_string());
        }
        row.push_str(if rule_promise { ",1" } else { ",0" });
        let think_ms = (self.rng.exponential(self.params.think_ms_mean as f64) as u64).clamp(1_000, 10 * self.params.think_ms_mean);
        self.schedule(now_ms + think_ms, Event::Attempt { slot, quantity, asked_ms: now_ms, row });
        Ok(())
    }

    /// The buyer reaches the reservation: the row gets its label, and the
    /// exact path decides on the leader's state.
    fn attempt(&mut self, slot: usize, quantity: u64, now_ms: u64, row: Option<&str>) -> std::io::Result<()> {
        let key = self.slots[slot].key.clone();
        let location = &self.locations[self.slots[slot].location];
        let seller_type = location.seller_type;
        let reliability = location.reliability;
        let leader = self.inventory.position(&key).cloned().unwrap_or_default();
        let promised = leader.reserved + leader.committed;
        let label = self.slots[slot].true_stock >= promised + quantity;
        if let Some(row) = row {
            writeln!(self.out, "{row},{}", u8::from(label))?;
            self.summary.rows += 1;
            self.summary.positives += u64::from(label);
            self.summary.rule_promises += u64::from(row.ends_with(",1"));
        }

        let reservation_id = self.id("order");
        let lines = vec![Line { sku: key.sku.clone(), location: key.location.clone(), quantity }];
        let results = self.apply(now_ms, vec![Command::Reserve { reservation_id: reservation_id.clone(), lines, ttl_ms: 15 * 60_000 }]);
        if results.first().is_none_or(|r| r.outcome != Outcome::Ok) {
            return Ok(());
        }
        self.summary.reserves_ok += 1;
        let checkout_ms = now_ms + self.rng.range(5_000, 300_000);
        if self.rng.chance(0.1) {
            self.schedule(checkout_ms, Event::Release { reservation_id });
            return Ok(());
        }
        self.schedule(checkout_ms, Event::Commit { reservation_id: reservation_id.clone() });
        let cancel_rate = self.params.cancel_rate * (2.0 - reliability) * if seller_type == SellerType::ThirdParty { 2.0 } else { 1.0 };
        if self.rng.chance(cancel_rate) {
            let cancel_ms = checkout_ms + self.rng.range(60_000, 3_600_000);
            self.schedule(cancel_ms, Event::CustomerCancel { reservation_id });
        } else {
            let ship_ms = checkout_ms + self.rng.range(3_600_000, 12 * 3_600_000);
            self.schedule(ship_ms, Event::Ship { slot, reservation_id, quantity });
        }
        Ok(())
    }

    fn finish(&mut self) {
        let inaccurate = self.slots.iter().filter(|slot| self.inventory.position(&slot.key).map_or(0, |p| p.on_hand) != slot.true_stock).count();
        self.summary.inaccurate_record_share = inaccurate as f64 / self.slots.len().max(1) as f64;
    }
}

fn sku_index(sku: &str) -> usize {
    sku.trim_start_matches("sku-").parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SimParams {
        let mut params = SimParams::new(seed);
        params.skus = 12;
        params.locations = 5;
        params.warmup_hours = 6;
        params.hours = 12;
        params
    }

    fn rows(params: &SimParams) -> (Vec<u8>, SimSummary) {
        let mut out = Vec::new();
        let summary = run(params, &mut out).expect("writing to memory succeeds");
        (out, summary)
    }

    #[test]
    fn same_seed_gives_identical_rows_and_another_seed_does_not() {
        let (first, summary) = rows(&small(7));
        let (second, _) = rows(&small(7));
        let (other, _) = rows(&small(8));
        assert!(summary.rows > 100, "{summary:?}");
        assert_eq!(first, second);
        assert_ne!(first, other);
    }

    #[test]
    fn rows_have_the_header_columns_and_both_labels() {
        let (out, summary) = rows(&small(3));
        let text = String::from_utf8(out).expect("rows are UTF-8");
        let mut lines = text.lines();
        let header = lines.next().expect("a header");
        let columns = header.split(',').count();
        assert_eq!(columns, 4 + FEATURE_NAMES.len() + 2);
        assert!(lines.all(|line| line.split(',').count() == columns));
        assert!(summary.positives > 0 && summary.positives < summary.rows, "{summary:?}");
        assert!(summary.rule_promises > 0 && summary.rule_promises < summary.rows, "{summary:?}");
    }

    #[test]
    fn records_drift_from_the_truth() {
        let mut params = small(5);
        params.hours = 72;
        let (_, summary) = rows(&params);
        assert!(summary.inaccurate_record_share > 0.2, "{summary:?}");
        assert!(summary.shipments_failed > 0, "some promises could not be shipped: {summary:?}");
    }

    #[test]
    fn rng_is_uniform_enough_and_poisson_has_its_mean() {
        let mut rng = Rng::new(1);
        let mean = (0..20_000).map(|_| rng.unit()).sum::<f64>() / 20_000.0;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let poisson = (0..20_000).map(|_| rng.poisson(3.0) as f64).sum::<f64>() / 20_000.0;
        assert!((poisson - 3.0).abs() < 0.05, "{poisson}");
    }
}
