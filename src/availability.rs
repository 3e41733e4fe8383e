//! The probable path: "can we promise this?" and "which location should ship
//! it?", answered from a replica read, the shared feature code, the risk model
//! and the policy rules.
//!
//! Invariant: nothing here writes. The exact path (Reserve) stays
//! authoritative; these answers can only be more conservative than exact ATP.
//! The checkout risk gate ([`Availability::gate`]) is the same answer turned
//! into a verdict that a gated Reserve carries into the log.

use std::sync::Arc;

use futures::future::join_all;
use models::features;
use models::features::RequestContext;
use models::features::SellerType;
use models::policy;
use models::policy::Context;
use models::policy::Decision;
use models::policy::DecisionInput;
use models::policy::DecisionOutcome;
use models::policy::DecisionThresholds;
use models::policy::Degraded;
use models::policy::PolicyConfig;
use models::policy::Rule;
use models::Score;
use models::ScoreError;
use models::Scorer;
use raft::group::wall_clock_ms;
use raft::GroupError;
use storage::model::GroupId;
use storage::model::Line;
use storage::model::LineRisk;
use storage::model::Position;
use storage::model::RiskGate;

use crate::node::Node;
use crate::read::Consistency;
use crate::read::ReadQuery;

/// Thresholds used when no model version is loaded. No score exists then, so
/// they only appear in answers, never decide.
const THRESHOLDS_WITHOUT_MODEL: DecisionThresholds = DecisionThresholds { checkout: 0.9, product_page: 0.5 };

pub struct Availability {
    node: Arc<Node>,
    scorer: Scorer,
    /// From the node's `[availability]` settings, which never change while it runs.
    policy: PolicyConfig,
}

/// What one request asks, shared by every location it looks at.
struct Ask<'a> {
    sku: &'a str,
    quantity: u64,
    context: Context,
    staleness_ms: u64,
    promo: bool,
    route_key: &'a str,
    now_ms: u64,
    thresholds: DecisionThresholds,
}

/// One availability question.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    pub sku: String,
    /// None: the best location holding the SKU.
    pub location: Option<String>,
    pub quantity: u64,
    pub context: Context,
    pub consistency: Consistency,
    pub promo: bool,
    pub route_key: String,
}

/// The answer for one location.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub location: String,
    pub outcome: DecisionOutcome,
    pub score: Option<Score>,
    pub atp: u64,
    pub feed_lag_ms: u64,
    pub seller_type: SellerType,
    pub threshold: f64,
    /// The model input, and the time it was computed for.
    pub features: [f32; features::FEATURE_COUNT],
    pub features_at_ms: u64,
}

impl Evaluation {
    /// Refused by a hard rule (not by the model or a degraded input).
    pub fn is_blocked(&self) -> bool {
        self.outcome.rules.iter().any(|rule| rule.is_hard())
    }
}

/// What a gated Reserve adds to its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRequest {
    /// Key of the A/B split.
    pub route_key: String,
    pub promo: bool,
}

/// Rules that make the gate refuse a line. The exact-ATP rules
/// (INSUFFICIENT_ATP, SHORT_POSITION, HOLD, SAFETY_STOCK) are left to the
/// exact check at apply, which sees the state of that moment and reports
/// shortfalls.
const GATE_RULES: [Rule; 4] = [Rule::Compliance, Rule::SellerLimit, Rule::ModelRisk, Rule::ConservativeRule];

/// The gate's verdict on one line from its checkout answer.
pub fn line_risk(evaluation: &Evaluation) -> LineRisk {
    let outcome = &evaluation.outcome;
    let refused_by = if outcome.decision == Decision::Unavailable {
        outcome.rules.iter().filter(|rule| GATE_RULES.contains(rule)).map(enum_name).collect()
    } else {
        Vec::new()
    };
    LineRisk {
        p_sellable_ppm: evaluation.score.as_ref().map(|s| ppm(s.p_sellable)),
        threshold_ppm: ppm(evaluation.threshold),
        model_version: evaluation.score.as_ref().map_or_else(String::new, |s| s.model_version.clone()),
        refused_by,
        degraded: outcome.degraded.iter().map(enum_name).collect(),
    }
}

fn ppm(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 1e6).round() as u32
}

#[derive(Debug, Clone)]
pub struct CheckAnswer {
    pub evaluation: Evaluation,
    pub staleness_ms: u64,
    pub applied_index: u64,
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub evaluation: Evaluation,
    pub eligible: bool,
    pub cost: f64,
    pub score: f64,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RankAnswer {
    pub candidates: Vec<Candidate>,
    pub model_version: String,
    pub degraded: Vec<Degraded>,
    pub staleness_ms: u64,
}

fn degraded_of(error: &ScoreError) -> Degraded {
    match error {
        ScoreError::Timeout { .. } => Degraded::ModelTimeout,
        ScoreError::Overloaded { .. } => Degraded::ModelOverloaded,
        ScoreError::Disabled => Degraded::ModelDisabled,
        ScoreError::Unavailable { .. } | ScoreError::Failed { .. } => Degraded::ModelUnavailable,
    }
}

impl Availability {
    pub fn new(node: Arc<Node>) -> Self {
        let scorer = Scorer::start(node.config.scoring.clone());
        let policy = node.config.availability.policy();
        Self { node, scorer, policy }
    }

    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    /// The serving version's thresholds, with the checkout one replaced by
    /// the configured cost ratio's when set.
    pub fn thresholds(&self) -> DecisionThresholds {
        let mut thresholds = match self.scorer.thresholds() {
            Some(t) => DecisionThresholds { checkout: t.checkout, product_page: t.product_page },
            None => THRESHOLDS_WITHOUT_MODEL,
        };
        if let Some(ratio) = self.node.config.availability.checkout_cost_ratio {
            thresholds.checkout = DecisionThresholds::checkout_from_cost_ratio(ratio);
        }
        thresholds.product_page = thresholds.product_page.min(thresholds.checkout);
        thresholds
    }

    /// Reads the positions a request is about: one location, or every
    /// location of the SKU (bounded by `locations-max`).
    async fn read(
        &self,
        group: GroupId,
        sku: &str,
        location: Option<&str>,
        consistency: Consistency,
    ) -> Result<(Vec<(String, Option<Position>)>, u64, u64), GroupError> {
        let query =
            ReadQuery::SkuPositions { sku: sku.to_owned(), location: location.map(str::to_owned), locations_max: self.node.config.availability.locations_max };
        let answer = self.node.read(group, query, consistency).await?;
        let positions = match location {
            Some(location) => vec![(location.to_owned(), answer.positions.into_iter().next().map(|(_, position)| position))],
            None => answer.positions.into_iter().map(|(location, position)| (location, Some(position))).collect(),
        };
        Ok((positions, answer.staleness_ms, answer.applied_index))
    }

    async fn evaluate(&self, ask: &Ask<'_>, location: &str, position: Option<&Position>) -> Evaluation {
        let seller_type = self.node.config.availability.seller_type(location);
        let request = RequestContext { quantity: ask.quantity, now_ms: ask.now_ms, replica_staleness_ms: ask.staleness_ms, seller_type, promo: ask.promo };
        let vector = features::compute(&features::input_from_position(position, &request));
        let scored = self.scorer.score(&vector, ask.route_key).await;
        let empty = Position::default();
        let position = position.unwrap_or(&empty);
        let (sku, context) = (ask.sku, ask.context);
        let input = DecisionInput {
            context,
            sku,
            quantity: ask.quantity,
            atp: position.atp(),
            held: position.held,
            safety_stock: position.safety_stock,
            short: position.is_short(),
            seller_type,
            staleness_ms: ask.staleness_ms,
            feed_lag_ms: position.signals.feed_lag_ms,
            score: scored.as_ref().map(|s| s.p_sellable).map_err(degraded_of),
            features_out_of_range: !vector.out_of_range.is_empty(),
        };
        let outcome = policy::decide(&input, &ask.thresholds, &self.policy);
        if let Err(error) = &scored {
            tracing::debug!(sku, location, %error, "scored without the model");
        }
        Evaluation {
            location: location.to_owned(),
            threshold: match context {
                Context::Checkout => ask.thresholds.checkout,
                Context::ProductPage => ask.thresholds.product_page,
            },
            outcome,
            score: scored.ok(),
            atp: position.atp(),
            feed_lag_ms: position.signals.feed_lag_ms,
            seller_type,
            features: vector.values,
            features_at_ms: ask.now_ms,
        }
    }

    pub async fn check(&self, group: GroupId, request: &CheckRequest) -> Result<CheckAnswer, GroupError> {
        let (positions, staleness_ms, applied_index) = self.read(group, &request.sku, request.location.as_deref(), request.consistency).await?;
        let ask = Ask {
            sku: &request.sku,
            quantity: request.quantity,
            context: request.context,
            staleness_ms,
            promo: request.promo,
            route_key: &request.route_key,
            now_ms: wall_clock_ms(),
            thresholds: self.thresholds(),
        };
        let evaluations = join_all(positions.iter().map(|(location, position)| self.evaluate(&ask, location, position.as_ref()))).await;
        // Best decision first, then the highest probability.
        let best = evaluations.into_iter().min_by(|a, b| {
            let pa = a.score.as_ref().map_or(0.0, |s| s.p_sellable);
            let pb = b.score.as_ref().map_or(0.0, |s| s.p_sellable);
            a.outcome.decision.cmp(&b.outcome.decision).then(pb.total_cmp(&pa)).then(b.atp.cmp(&a.atp))
        });
        let evaluation = match best {
            Some(evaluation) => evaluation,
            // No location holds the SKU: nothing to promise.
            None => self.evaluate(&ask, "", None).await,
        };
        Ok(CheckAnswer { evaluation, staleness_ms, applied_index })
    }

    /// The checkout risk gate: each line answered as `check` answers it in
    /// the checkout context (its SKU, location and quantity, from the local
    /// replica), turned into a verdict, in line order.
    pub async fn gate(&self, group: GroupId, lines: &[Line], request: &GateRequest) -> Result<RiskGate, GroupError> {
        let checks: Vec<CheckRequest> = lines
            .iter()
            .map(|line| CheckRequest {
                sku: line.sku.clone(),
                location: Some(line.location.clone()),
                quantity: line.quantity,
                context: Context::Checkout,
                consistency: Consistency::Any,
                promo: request.promo,
                route_key: request.route_key.clone(),
            })
            .collect();
        let answers = join_all(checks.iter().map(|check| self.check(group, check))).await;
        let lines = answers.into_iter().map(|answer| answer.map(|a| line_risk(&a.evaluation))).collect::<Result<_, _>>()?;
        Ok(RiskGate { lines })
    }

    pub async fn rank(&self, group: GroupId, sku: &str, quantity: u64, destination_region: &str, route_key: &str) -> Result<RankAnswer, GroupError> {
        let settings = &self.node.config.availability;
        let region = &self.node.config.region;
        let (positions, staleness_ms, _) = self.read(group, sku, None, Consistency::Any).await?;
        let ask =
            Ask { sku, quantity, context: Context::Checkout, staleness_ms, promo: false, route_key, now_ms: wall_clock_ms(), thresholds: self.thresholds() };
        let evaluations = join_all(positions.iter().map(|(location, position)| self.evaluate(&ask, location, position.as_ref()))).await;
        let cross_region = destination_region != region.as_str();
        let resident = |r: &String| r == destination_region || r == region;
        let residency_blocks = cross_region && settings.residency_regions.iter().any(resident);
        let mut degraded = Vec::new();
        let mut model_version = String::new();
        let mut candidates: Vec<Candidate> = evaluations
            .into_iter()
            .map(|evaluation| {
                let mut reasons: Vec<String> = evaluation.outcome.rules.iter().map(enum_name).collect();
                for d in &evaluation.outcome.degraded {
                    if !degraded.contains(d) {
                        degraded.push(*d);
                    }
                }
                if let Some(score) = &evaluation.score {
                    model_version.clone_from(&score.model_version);
                } else {
                    reasons.push("UNSCORED".to_owned());
                }
                let mut cost = 1.0;
                if evaluation.seller_type == SellerType::ThirdParty {
                    cost += settings.third_party_cost;
                    reasons.push("THIRD_PARTY_COST".to_owned());
                }
                if cross_region {
                    cost += settings.cross_region_cost;
                    reasons.push("CROSS_REGION_COST".to_owned());
                }
                let mut eligible = !evaluation.is_blocked();
                if residency_blocks {
                    eligible = false;
                    reasons.push("RESIDENCY".to_owned());
                }
                let p = evaluation.score.as_ref().map_or(0.0, |s| s.p_sellable);
                let score = p - settings.cost_weight * cost;
                Candidate { evaluation, eligible, cost, score, reasons }
            })
            .collect();
        candidates.sort_by(|a, b| {
            b.eligible
                .cmp(&a.eligible)
                .then(b.score.total_cmp(&a.score))
                .then(b.evaluation.atp.cmp(&a.evaluation.atp))
                .then(a.evaluation.location.cmp(&b.evaluation.location))
        });
        degraded.sort();
        Ok(RankAnswer { candidates, model_version, degraded, staleness_ms })
    }
}

/// `SCREAMING_SNAKE_CASE` name of a policy enum value, as serde writes it.
pub fn enum_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Proto name of a decision.
pub fn decision_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Available => "AVAILABLE",
        Decision::LowStock => "LOW_STOCK",
        Decision::Unavailable => "UNAVAILABLE",
    }
}
