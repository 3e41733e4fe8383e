//! Hard business rules on top of the risk score: the decision a product page
//! or a checkout gets.
//!
//! Invariant: the model can only make an answer more conservative. Whatever
//! the score, a request whose exact ATP does not cover it, or that a rule
//! blocks, is `Unavailable`; a missing, slow or disabled model, a stale
//! replica or a lagging feed make the answer stricter and say why.

use serde::Deserialize;
use serde::Serialize;

use crate::features::SellerType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Context {
    ProductPage,
    Checkout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    Available,
    LowStock,
    Unavailable,
}

/// A rule that shaped the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Rule {
    /// The SKU is blocked in this region (compliance).
    Compliance,
    /// A third-party seller does not take orders this large.
    SellerLimit,
    /// A count found fewer units than are promised.
    ShortPosition,
    /// Units on hold are not promised.
    Hold,
    /// The safety stock buffer is not promised.
    SafetyStock,
    /// Exact ATP does not cover the quantity.
    InsufficientAtp,
    /// Few units left after this request.
    LowAtp,
    /// The model's probability is under the context's threshold.
    ModelRisk,
    /// The model's probability is in the low-stock band.
    ModelCaution,
    /// No usable score: the conservative rule (ATP with a margin) decided.
    ConservativeRule,
}

impl Rule {
    /// A hard rule: it refuses whatever the model says.
    pub fn is_hard(self) -> bool {
        matches!(self, Self::Compliance | Self::SellerLimit | Self::ShortPosition | Self::InsufficientAtp)
    }
}

/// Why the answer is less informed than usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Degraded {
    ModelUnavailable,
    ModelTimeout,
    ModelDisabled,
    ModelOverloaded,
    StaleReplica,
    FeedLag,
    FeatureOutOfRange,
}

impl Degraded {
    /// No score came back for this reason.
    pub fn is_model_failure(self) -> bool {
        matches!(self, Self::ModelUnavailable | Self::ModelTimeout | Self::ModelDisabled | Self::ModelOverloaded)
    }
}

/// Thresholds on the calibrated probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecisionThresholds {
    /// Checkout promises only at or above this.
    pub checkout: f64,
    /// A product page shows available at or above `checkout`, low stock
    /// between this and `checkout`, unavailable below.
    pub product_page: f64,
}

impl DecisionThresholds {
    /// The checkout threshold that minimises expected cost for a calibrated
    /// probability when an oversell costs `cost_ratio` times a lost sale:
    /// promise iff `p * 1 > (1 - p) * cost_ratio`.
    pub fn checkout_from_cost_ratio(cost_ratio: f64) -> f64 {
        cost_ratio / (1.0 + cost_ratio)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// SKU prefixes that may not be sold in this region.
    pub blocked_sku_prefixes: Vec<String>,
    /// Largest order a third-party seller location takes.
    pub third_party_order_units_max: u64,
    /// Units that must remain beyond the quantity when the conservative rule
    /// answers (no model) or the read is stale / the feed lags.
    pub conservative_margin_units: u64,
    /// At or below this many units left after the request, a product page
    /// shows low stock.
    pub low_stock_units: u64,
    /// Staleness above which a read is too old for the context.
    pub checkout_staleness_ms_max: u64,
    pub product_page_staleness_ms_max: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            blocked_sku_prefixes: Vec::new(),
            third_party_order_units_max: 20,
            conservative_margin_units: 2,
            low_stock_units: 3,
            checkout_staleness_ms_max: 1_000,
            product_page_staleness_ms_max: 10_000,
        }
    }
}

/// The facts a decision is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionInput<'a> {
    pub context: Context,
    pub sku: &'a str,
    pub quantity: u64,
    pub atp: u64,
    pub held: u64,
    pub safety_stock: u64,
    pub short: bool,
    pub seller_type: SellerType,
    pub staleness_ms: u64,
    pub feed_lag_ms: u64,
    /// Calibrated probability, or why there is none.
    pub score: Result<f64, Degraded>,
    pub features_out_of_range: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionOutcome {
    pub decision: Decision,
    pub rules: Vec<Rule>,
    pub degraded: Vec<Degraded>,
}

pub fn decide(input: &DecisionInput<'_>, thresholds: &DecisionThresholds, config: &PolicyConfig) -> DecisionOutcome {
    let mut rules = Vec::new();
    let mut degraded = Vec::new();
    if config.blocked_sku_prefixes.iter().any(|prefix| input.sku.starts_with(prefix.as_str())) {
        rules.push(Rule::Compliance);
    }
    if input.seller_type == SellerType::ThirdParty && input.quantity > config.third_party_order_units_max {
        rules.push(Rule::SellerLimit);
    }
    if input.short {
        rules.push(Rule::ShortPosition);
    }
    let covered = input.atp >= input.quantity;
    if !covered {
        // Say which buffer stood in the way, if one did.
        let without_holds = input.atp.saturating_add(input.held);
        if input.held > 0 && without_holds >= input.quantity {
            rules.push(Rule::Hold);
        }
        if input.safety_stock > 0 && without_holds.saturating_add(input.safety_stock) >= input.quantity {
            rules.push(Rule::SafetyStock);
        }
        rules.push(Rule::InsufficientAtp);
    }
    let staleness_max = match input.context {
        Context::Checkout => config.checkout_staleness_ms_max,
        Context::ProductPage => config.product_page_staleness_ms_max,
    };
    if input.staleness_ms > staleness_max {
        degraded.push(Degraded::StaleReplica);
    }
    if input.feed_lag_ms > input.seller_type.freshness_sla_ms() {
        degraded.push(Degraded::FeedLag);
    }
    if input.features_out_of_range {
        degraded.push(Degraded::FeatureOutOfRange);
    }
    if let Err(reason) = input.score {
        degraded.push(reason);
    }
    let blocked = rules.iter().any(|rule| rule.is_hard());
    if blocked {
        return DecisionOutcome { decision: Decision::Unavailable, rules, degraded };
    }
    let left = input.atp - input.quantity;
    // A stale read or a lagging feed may overstate ATP: keep a margin.
    let cautious = degraded.iter().any(|d| matches!(d, Degraded::StaleReplica | Degraded::FeedLag));
    let margin_ok = left >= config.conservative_margin_units;
    let decision = match input.score {
        Err(_) => {
            rules.push(Rule::ConservativeRule);
            match (input.context, margin_ok) {
                (_, false) if input.context == Context::Checkout => Decision::Unavailable,
                (Context::ProductPage, false) => Decision::LowStock,
                _ => Decision::Available,
            }
        }
        Ok(p) => {
            let by_model = if p >= thresholds.checkout {
                Decision::Available
            } else if input.context == Context::ProductPage && p >= thresholds.product_page {
                rules.push(Rule::ModelCaution);
                Decision::LowStock
            } else {
                rules.push(Rule::ModelRisk);
                Decision::Unavailable
            };
            if cautious && !margin_ok && by_model != Decision::Unavailable {
                rules.push(Rule::ConservativeRule);
                match input.context {
                    Context::Checkout => Decision::Unavailable,
                    Context::ProductPage => Decision::LowStock,
                }
            } else {
                by_model
            }
        }
    };
    let decision = if decision == Decision::Available && input.context == Context::ProductPage && left <= config.low_stock_units {
        rules.push(Rule::LowAtp);
        Decision::LowStock
    } else {
        decision
    };
    DecisionOutcome { decision, rules, degraded }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THRESHOLDS: DecisionThresholds = DecisionThresholds { checkout: 0.9, product_page: 0.5 };

    fn input(context: Context) -> DecisionInput<'static> {
        DecisionInput {
            context,
            sku: "sku-1",
            quantity: 1,
            atp: 20,
            held: 0,
            safety_stock: 0,
            short: false,
            seller_type: SellerType::FirstParty,
            staleness_ms: 10,
            feed_lag_ms: 100,
            score: Ok(0.99),
            features_out_of_range: false,
        }
    }

    fn config() -> PolicyConfig {
        PolicyConfig { blocked_sku_prefixes: vec!["rx-".to_owned()], ..PolicyConfig::default() }
    }

    use Context::*;
    use Decision::*;

    /// Every rule and every degraded reason, with the decision it leads to in
    /// each context.
    #[test]
    fn decision_table() {
        type Case = (&'static str, fn(&mut DecisionInput<'static>), [Decision; 2], &'static [Rule], &'static [Degraded]);
        let cases: Vec<Case> = vec![
            ("plain available", |_| {}, [Available, Available], &[], &[]),
            ("compliance", |i| i.sku = "rx-42", [Unavailable, Unavailable], &[Rule::Compliance], &[]),
            (
                "seller limit",
                |i| {
                    i.seller_type = SellerType::ThirdParty;
                    i.quantity = 15;
                    i.feed_lag_ms = 0;
                },
                [Available, Available],
                &[],
                &[],
            ),
            (
                "seller limit exceeded",
                |i| {
                    i.seller_type = SellerType::ThirdParty;
                    i.quantity = 21;
                    i.atp = 100;
                },
                [Unavailable, Unavailable],
                &[Rule::SellerLimit],
                &[],
            ),
            ("short position", |i| i.short = true, [Unavailable, Unavailable], &[Rule::ShortPosition], &[]),
            (
                "hold binds",
                |i| {
                    i.atp = 0;
                    i.held = 5;
                },
                [Unavailable, Unavailable],
                &[Rule::Hold, Rule::InsufficientAtp],
                &[],
            ),
            (
                "safety stock binds",
                |i| {
                    i.atp = 0;
                    i.safety_stock = 5;
                },
                [Unavailable, Unavailable],
                &[Rule::SafetyStock, Rule::InsufficientAtp],
                &[],
            ),
            ("no atp", |i| i.atp = 0, [Unavailable, Unavailable], &[Rule::InsufficientAtp], &[]),
            ("few left", |i| i.atp = 3, [LowStock, Available], &[Rule::LowAtp], &[]),
            ("model caution", |i| i.score = Ok(0.7), [LowStock, Unavailable], &[Rule::ModelCaution], &[]),
            ("model risk", |i| i.score = Ok(0.2), [Unavailable, Unavailable], &[Rule::ModelRisk], &[]),
            (
                "model unavailable, margin",
                |i| i.score = Err(Degraded::ModelUnavailable),
                [Available, Available],
                &[Rule::ConservativeRule],
                &[Degraded::ModelUnavailable],
            ),
            (
                "model timeout, no margin",
                |i| {
                    i.score = Err(Degraded::ModelTimeout);
                    i.atp = 2;
                },
                [LowStock, Unavailable],
                &[Rule::ConservativeRule],
                &[Degraded::ModelTimeout],
            ),
            (
                "model disabled, no margin",
                |i| {
                    i.score = Err(Degraded::ModelDisabled);
                    i.atp = 1;
                },
                [LowStock, Unavailable],
                &[Rule::ConservativeRule],
                &[Degraded::ModelDisabled],
            ),
            ("model overloaded", |i| i.score = Err(Degraded::ModelOverloaded), [Available, Available], &[Rule::ConservativeRule], &[Degraded::ModelOverloaded]),
            ("stale replica with margin", |i| i.staleness_ms = 20_000, [Available, Available], &[], &[Degraded::StaleReplica]),
            (
                "stale replica without margin",
                |i| {
                    i.staleness_ms = 60_000;
                    i.atp = 2;
                },
                [LowStock, Unavailable],
                &[Rule::ConservativeRule],
                &[Degraded::StaleReplica],
            ),
            (
                "feed lag without margin",
                |i| {
                    i.feed_lag_ms = 6_000;
                    i.atp = 1;
                },
                [LowStock, Unavailable],
                &[Rule::ConservativeRule],
                &[Degraded::FeedLag],
            ),
            (
                "third-party lag within its own sla",
                |i| {
                    i.seller_type = SellerType::ThirdParty;
                    i.feed_lag_ms = 30_000;
                },
                [Available, Available],
                &[],
                &[],
            ),
            ("out of range input", |i| i.features_out_of_range = true, [Available, Available], &[], &[Degraded::FeatureOutOfRange]),
        ];
        for (name, change, expected, rules, degraded) in cases {
            for (context, expected) in [ProductPage, Checkout].into_iter().zip(expected) {
                let mut case = input(context);
                change(&mut case);
                let outcome = decide(&case, &THRESHOLDS, &config());
                assert_eq!(outcome.decision, expected, "{name} ({context:?}): {outcome:?}");
                for rule in rules {
                    // The low-stock band is a product-page answer only.
                    if matches!(rule, Rule::LowAtp | Rule::ModelCaution) && context == Checkout {
                        continue;
                    }
                    assert!(outcome.rules.contains(rule), "{name} ({context:?}) should fire {rule:?}: {outcome:?}");
                }
                assert_eq!(outcome.degraded, degraded, "{name} ({context:?})");
            }
        }
    }

    #[test]
    fn the_score_never_permits_what_the_rules_refuse() {
        for atp in 0..4 {
            for quantity in 1..4 {
                for score in [Ok(1.0), Ok(0.0), Err(Degraded::ModelUnavailable)] {
                    for context in [ProductPage, Checkout] {
                        let mut case = input(context);
                        case.atp = atp;
                        case.quantity = quantity;
                        case.score = score;
                        let outcome = decide(&case, &THRESHOLDS, &config());
                        if atp < quantity {
                            assert_eq!(outcome.decision, Unavailable, "{case:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn cost_ratio_sets_the_checkout_threshold() {
        assert_eq!(DecisionThresholds::checkout_from_cost_ratio(1.0), 0.5);
        assert!((DecisionThresholds::checkout_from_cost_ratio(9.0) - 0.9).abs() < 1e-12);
    }
}
