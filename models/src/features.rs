//! The feature contract of the availability risk model.
//!
//! One implementation, two callers: the simulator writes training rows with
//! [`compute`], and the server scores requests with [`compute`]. The order of
//! [`FEATURE_NAMES`] is the column order of the model's input tensor and of the
//! training CSV; a model whose manifest lists other names is refused.
//!
//! Every feature has a documented range ([`FEATURE_RANGES`]). An input outside
//! its range is clamped into it and named in [`FeatureVector::out_of_range`],
//! which the decision reports as a degraded reason: bad input never crashes
//! scoring and never reaches the model unclamped.

use serde::Deserialize;
use serde::Serialize;
use storage::model::Position;
use storage::model::RELIABILITY_HALF_LIFE_MS;
use storage::model::VELOCITY_HALF_LIVES_MS;

/// Number of model inputs.
pub const FEATURE_COUNT: usize = 20;

/// Column names, in tensor order.
pub const FEATURE_NAMES: [&str; FEATURE_COUNT] = [
    "quantity",
    "atp",
    "qty_atp_ratio",
    "velocity_1m",
    "velocity_15m",
    "velocity_1h",
    "demand_spike",
    "velocity_to_atp",
    "scan_age_s",
    "count_age_s",
    "feed_lag_ratio",
    "replica_staleness_s",
    "cancel_rate",
    "return_rate",
    "count_correction_rate",
    "third_party",
    "hour_of_day",
    "day_of_week",
    "promo",
    "short",
];

/// Age reported when a position has never seen the event (30 days, seconds).
pub const AGE_NEVER_S: f32 = 30.0 * 24.0 * 3600.0;

/// Inclusive `[min, max]` of each feature, in tensor order.
pub const FEATURE_RANGES: [(f32, f32); FEATURE_COUNT] = [
    (1.0, 1.0e4),       // quantity: units requested
    (0.0, 1.0e7),       // atp: units available to promise
    (0.0, 1.0e3),       // qty_atp_ratio: quantity / max(atp, 1)
    (0.0, 1.0e7),       // velocity_1m: reserved units, decayed with a 1 min half-life
    (0.0, 1.0e7),       // velocity_15m: same, 15 min half-life
    (0.0, 1.0e7),       // velocity_1h: same, 1 h half-life
    (0.0, 1.0e3),       // demand_spike: velocity_1m * 60 / max(velocity_1h, 1); about 1 at a steady rate
    (0.0, 1.0e3),       // velocity_to_atp: velocity_15m / max(atp, 1)
    (0.0, AGE_NEVER_S), // scan_age_s: seconds since the last feed event
    (0.0, AGE_NEVER_S), // count_age_s: seconds since the last full (cycle) count
    (0.0, 1.0e3),       // feed_lag_ratio: feed lag / the location's freshness SLA
    (0.0, 3.6e3),       // replica_staleness_s: staleness bound of the read, seconds
    (0.0, 1.0),         // cancel_rate: smoothed cancelled / committed units
    (0.0, 1.0),         // return_rate: smoothed returned / committed units
    (0.0, 1.0),         // count_correction_rate: smoothed |count correction| / counted units
    (0.0, 1.0),         // third_party: 1 for a third-party seller location
    (0.0, 23.0),        // hour_of_day: UTC hour of the request
    (0.0, 6.0),         // day_of_week: 0 = Monday, UTC
    (0.0, 1.0),         // promo: 1 while the SKU is on promotion
    (0.0, 1.0),         // short: 1 when on_hand < reserved + committed
];

/// Freshness SLA of a first-party warehouse feed.
pub const FIRST_PARTY_SLA_MS: u64 = 5_000;
/// Freshness SLA of a third-party seller feed.
pub const THIRD_PARTY_SLA_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SellerType {
    FirstParty,
    ThirdParty,
}

impl SellerType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstParty => "first-party",
            Self::ThirdParty => "third-party",
        }
    }

    pub fn freshness_sla_ms(self) -> u64 {
        match self {
            Self::FirstParty => FIRST_PARTY_SLA_MS,
            Self::ThirdParty => THIRD_PARTY_SLA_MS,
        }
    }
}

/// Everything the features are made of, as plain values. The server fills it
/// from a replica read; the simulator from its own read of the same state
/// machine.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureInput {
    pub quantity: u64,
    pub atp: u64,
    pub short: bool,
    /// Decayed reserved units at request time: half-lives 1 min, 15 min, 1 h.
    pub velocity: [f64; 3],
    pub scan_age_ms: Option<u64>,
    pub count_age_ms: Option<u64>,
    pub feed_lag_ms: u64,
    pub replica_staleness_ms: u64,
    pub cancel_rate: f64,
    pub return_rate: f64,
    pub count_correction_rate: f64,
    pub seller_type: SellerType,
    /// Request time (Unix ms, UTC), for hour and day.
    pub now_ms: u64,
    pub promo: bool,
}

/// The model input for one request, and which inputs had to be clamped.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureVector {
    pub values: [f32; FEATURE_COUNT],
    pub out_of_range: Vec<&'static str>,
}

/// Smoothing of the reliability rates: a position with little history reads
/// as the prior, one with much history as its own record.
pub const RELIABILITY_PRIOR_UNITS: f64 = 20.0;
/// Prior cancellation, return and count-correction rates.
pub const CANCEL_RATE_PRIOR: f64 = 0.05;
pub const RETURN_RATE_PRIOR: f64 = 0.03;
pub const CORRECTION_RATE_PRIOR: f64 = 0.02;

/// What a request adds to a position read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestContext {
    pub quantity: u64,
    /// Request time (Unix ms); counters are decayed to it.
    pub now_ms: u64,
    /// Upper bound on the staleness of the replica read the position came from.
    pub replica_staleness_ms: u64,
    pub seller_type: SellerType,
    pub promo: bool,
}

/// The feature input of a request for `position` (absent: never seen, all
/// zero). Both the simulator's export and the server go through here.
pub fn input_from_position(position: Option<&Position>, request: &RequestContext) -> FeatureInput {
    let empty = Position::default();
    let position = position.unwrap_or(&empty);
    let signals = &position.signals;
    let now_ms = request.now_ms;
    let velocity = [0, 1, 2].map(|i| signals.velocity[i].units_at(now_ms, VELOCITY_HALF_LIVES_MS[i]));
    let units = |counter: &storage::model::Decayed| counter.units_at(now_ms, RELIABILITY_HALF_LIFE_MS);
    let smoothed = |events: f64, base: f64, prior: f64| (events + prior * RELIABILITY_PRIOR_UNITS) / (base + RELIABILITY_PRIOR_UNITS);
    let committed = units(&signals.committed);
    FeatureInput {
        quantity: request.quantity,
        atp: position.atp(),
        short: position.is_short(),
        velocity,
        scan_age_ms: signals.last_feed_ms.map(|at| now_ms.saturating_sub(at)),
        count_age_ms: signals.last_count_ms.map(|at| now_ms.saturating_sub(at)),
        feed_lag_ms: signals.feed_lag_ms,
        replica_staleness_ms: request.replica_staleness_ms,
        cancel_rate: smoothed(units(&signals.cancelled), committed, CANCEL_RATE_PRIOR),
        return_rate: smoothed(units(&signals.returned), committed, RETURN_RATE_PRIOR),
        count_correction_rate: smoothed(units(&signals.corrected), units(&signals.counted), CORRECTION_RATE_PRIOR),
        seller_type: request.seller_type,
        now_ms,
        promo: request.promo,
    }
}

/// Computes the model input. Pure: same input, same output, on every caller.
pub fn compute(input: &FeatureInput) -> FeatureVector {
    let atp = input.atp as f64;
    let quantity = input.quantity as f64;
    let [v1m, v15m, v1h] = input.velocity;
    let sla_ms = input.seller_type.freshness_sla_ms() as f64;
    let days = input.now_ms / 86_400_000;
    // 1970-01-01 was a Thursday: day 0 is weekday 3 (Monday = 0).
    let day_of_week = (days + 3) % 7;
    let hour_of_day = (input.now_ms / 3_600_000) % 24;
    let raw: [f64; FEATURE_COUNT] = [
        quantity,
        atp,
        quantity / atp.max(1.0),
        v1m,
        v15m,
        v1h,
        v1m * 60.0 / v1h.max(1.0),
        v15m / atp.max(1.0),
        age_s(input.scan_age_ms),
        age_s(input.count_age_ms),
        input.feed_lag_ms as f64 / sla_ms,
        input.replica_staleness_ms as f64 / 1000.0,
        input.cancel_rate,
        input.return_rate,
        input.count_correction_rate,
        flag(input.seller_type == SellerType::ThirdParty),
        hour_of_day as f64,
        day_of_week as f64,
        flag(input.promo),
        flag(input.short),
    ];
    let mut values = [0.0f32; FEATURE_COUNT];
    let mut out_of_range = Vec::new();
    for (i, value) in raw.into_iter().enumerate() {
        let (min, max) = FEATURE_RANGES[i];
        let clamped = if value.is_nan() { f64::from(max) } else { value.clamp(f64::from(min), f64::from(max)) };
        if clamped != value {
            out_of_range.push(FEATURE_NAMES[i]);
        }
        values[i] = clamped as f32;
    }
    FeatureVector { values, out_of_range }
}

fn age_s(age_ms: Option<u64>) -> f64 {
    match age_ms {
        Some(ms) => ms as f64 / 1000.0,
        None => f64::from(AGE_NEVER_S),
    }
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> FeatureInput {
        FeatureInput {
            quantity: 2,
            atp: 10,
            short: false,
            velocity: [1.0, 4.0, 30.0],
            scan_age_ms: Some(12_000),
            count_age_ms: None,
            feed_lag_ms: 2_500,
            replica_staleness_ms: 40,
            cancel_rate: 0.1,
            return_rate: 0.05,
            count_correction_rate: 0.2,
            seller_type: SellerType::FirstParty,
            // 2026-11-23 13:30 UTC, a Monday.
            now_ms: 1_795_440_600_000,
            promo: true,
        }
    }

    fn value(vector: &FeatureVector, name: &str) -> f32 {
        let i = FEATURE_NAMES.iter().position(|n| *n == name).expect("feature exists");
        vector.values[i]
    }

    #[test]
    fn names_and_ranges_line_up() {
        let mut names = FEATURE_NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FEATURE_COUNT, "feature names are unique");
        for (min, max) in FEATURE_RANGES {
            assert!(min < max);
        }
    }

    #[test]
    fn computes_each_feature_from_its_input() {
        let vector = compute(&input());
        assert!(vector.out_of_range.is_empty(), "{:?}", vector.out_of_range);
        assert_eq!(value(&vector, "quantity"), 2.0);
        assert_eq!(value(&vector, "qty_atp_ratio"), 0.2);
        assert_eq!(value(&vector, "demand_spike"), 2.0);
        assert_eq!(value(&vector, "velocity_to_atp"), 0.4);
        assert_eq!(value(&vector, "scan_age_s"), 12.0);
        assert_eq!(value(&vector, "count_age_s"), AGE_NEVER_S);
        assert_eq!(value(&vector, "feed_lag_ratio"), 0.5);
        assert_eq!(value(&vector, "replica_staleness_s"), 0.04);
        assert_eq!(value(&vector, "third_party"), 0.0);
        assert_eq!(value(&vector, "hour_of_day"), 13.0);
        assert_eq!(value(&vector, "day_of_week"), 0.0);
        assert_eq!(value(&vector, "promo"), 1.0);
        assert_eq!(value(&vector, "short"), 0.0);
    }

    #[test]
    fn third_party_lag_is_measured_against_its_own_sla() {
        let mut third = input();
        third.seller_type = SellerType::ThirdParty;
        third.feed_lag_ms = 30_000;
        let vector = compute(&third);
        assert_eq!(value(&vector, "feed_lag_ratio"), 0.5);
        assert_eq!(value(&vector, "third_party"), 1.0);
    }

    #[test]
    fn out_of_range_input_is_clamped_and_named() {
        let mut bad = input();
        bad.quantity = 0;
        bad.cancel_rate = f64::NAN;
        bad.return_rate = -0.5;
        bad.replica_staleness_ms = u64::MAX;
        let vector = compute(&bad);
        assert_eq!(vector.out_of_range, vec!["quantity", "replica_staleness_s", "cancel_rate", "return_rate"]);
        assert_eq!(value(&vector, "quantity"), 1.0);
        assert_eq!(value(&vector, "cancel_rate"), 1.0, "an unknown rate counts as the worst");
        assert_eq!(value(&vector, "return_rate"), 0.0);
        assert_eq!(value(&vector, "replica_staleness_s"), 3600.0);
        assert!(vector.values.iter().all(|v| v.is_finite()));
    }
}
