//! The node's two planes. The client plane (`listen`) serves the public
//! services (`Inventory`, `Admin`), gRPC health, and reflection (v1 and
//! v1alpha) of those public services only; the peer plane (`peer-listen`)
//! serves `RaftPeer` alone. Both sit behind the security layer (mTLS and the
//! role table), or serve plaintext on an `--insecure` node.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use storage::model as m;
use storage::validate::check_token;
use storage::validate::validate_command;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use models::policy::Context;
use models::policy::Decision;

use crate::availability::enum_name;
use crate::availability::Availability;
use crate::availability::CheckRequest;
use crate::availability::Evaluation;
use crate::availability::GateRequest;
use crate::cart::Plan;
use crate::convert;
use crate::node::Node;
use crate::peer_service::PeerService;
use crate::proto::peer::raft_peer_server::RaftPeerServer;
use crate::proto::v1 as pb;
use crate::proto::v1::admin_server::Admin;
use crate::proto::v1::admin_server::AdminServer;
use crate::proto::v1::inventory_server::Inventory;
use crate::proto::v1::inventory_server::InventoryServer;
use crate::read::Consistency;
use crate::read::ReadQuery;
use crate::security;
use crate::security::AuthorizeLayer;
use crate::status;
use crate::tls;
use crate::tls::Plane;
use stockd_proto::limits::BATCH_CHECKS_MAX;
use stockd_proto::limits::BATCH_RESERVATIONS_MAX;
use stockd_proto::limits::ROUTE_KEY_BYTES_MAX;

#[derive(Clone)]
pub struct InventoryService {
    node: Arc<Node>,
    availability: Arc<Availability>,
}

impl InventoryService {
    pub fn new(node: Arc<Node>, availability: Arc<Availability>) -> Self {
        Self { node, availability }
    }

    fn check_quantity(&self, quantity: u64) -> Result<(), Status> {
        let max = self.node.config.input_limits.line_quantity_max;
        if quantity == 0 || quantity > max {
            return Err(status::invalid_field("quantity", format!("must be between 1 and {max}")));
        }
        Ok(())
    }

    /// Validates one availability question.
    fn check_request(&self, r: pb::CheckAvailabilityRequest) -> Result<(m::GroupId, CheckRequest, bool), Status> {
        let limits = &self.node.config.input_limits;
        check_text("sku", &r.sku, limits.sku_bytes_max)?;
        if !r.location.is_empty() {
            check_text("location", &r.location, limits.location_bytes_max)?;
        }
        self.check_quantity(r.quantity)?;
        let context = match pb::RequestContext::try_from(r.context) {
            Ok(pb::RequestContext::ProductPage) => Context::ProductPage,
            Ok(pb::RequestContext::Checkout) => Context::Checkout,
            _ => return Err(status::invalid_field("context", "must be PRODUCT_PAGE or CHECKOUT")),
        };
        let consistency = consistency_or(r.consistency, r.max_staleness_ms, Consistency::Any)?;
        let group = self.group_of(&r.sku, "sku")?;
        let route_key = Self::route_key(&r.sku, r.route_key)?;
        let location = (!r.location.is_empty()).then_some(r.location);
        Ok((group, CheckRequest { sku: r.sku, location, quantity: r.quantity, context, consistency, promo: r.promo, route_key }, r.explain))
    }

    /// Answers one validated availability question.
    async fn answer_check(&self, group: m::GroupId, check: CheckRequest, explain: bool) -> Result<pb::CheckAvailabilityResponse, Status> {
        let answer = self.availability.check(group, &check).await.map_err(status::group_error)?;
        let e = &answer.evaluation;
        let (p_sellable, scored, model_version, model_variant, rules, degraded) = evaluation_fields(e);
        Ok(pb::CheckAvailabilityResponse {
            decision: decision_to_pb(e.outcome.decision) as i32,
            p_sellable,
            scored,
            atp: e.atp,
            staleness_ms: answer.staleness_ms,
            model_version,
            model_variant,
            rules,
            degraded,
            location: e.location.clone(),
            applied_index: answer.applied_index,
            threshold: e.threshold,
            feed_lag_ms: e.feed_lag_ms,
            seller_type: e.seller_type.as_str().to_owned(),
            features: if explain { e.features.to_vec() } else { Vec::new() },
            features_at_ms: if explain { e.features_at_ms } else { 0 },
        })
    }

    fn route_key(sku: &str, route_key: String) -> Result<String, Status> {
        if route_key.len() > ROUTE_KEY_BYTES_MAX {
            return Err(status::invalid_field("route_key", format!("longer than {ROUTE_KEY_BYTES_MAX} bytes")));
        }
        Ok(if route_key.is_empty() { sku.to_owned() } else { route_key })
    }

    /// Validates a reserve request (inside a batch, the caller names the
    /// fields as `reservations[3].` with [`status::prefixed`]) and plans
    /// where its lines and its record go.
    fn reserve_command(&self, r: &pb::ReserveRequest) -> Result<(Plan, m::Command, Option<GateRequest>), Status> {
        let limits = &self.node.config.input_limits;
        let ttl_ms = if r.ttl_ms == 0 { limits.ttl_ms_default } else { r.ttl_ms };
        let command = m::Command::Reserve { reservation_id: r.reservation_id.clone(), lines: r.lines.iter().map(convert::line_from_pb).collect(), ttl_ms };
        validate_command(&command, limits).map_err(status::invalid)?;
        let region = &self.node.config.region;
        let home =
            self.node.home_of(&r.reservation_id).ok_or_else(|| status::invalid_field("reservation_id", format!("region {region} has no shard group")))?;
        let mut parts: BTreeMap<m::GroupId, Vec<m::Line>> = BTreeMap::new();
        for (i, line) in r.lines.iter().enumerate() {
            let g = self.group_of(&line.sku, &format!("lines[{i}].sku"))?;
            parts.entry(g).or_default().push(convert::line_from_pb(line));
        }
        let gate = match &r.risk_gate {
            None => None,
            Some(gate) => {
                let route_key = Self::route_key(&r.reservation_id, gate.route_key.clone()).map_err(|e| status::prefixed("risk_gate.", e))?;
                Some(GateRequest { route_key, promo: gate.promo })
            }
        };
        Ok((Plan { home, parts }, command, gate))
    }

    fn group_of(&self, sku: &str, field: &str) -> Result<m::GroupId, Status> {
        let region = &self.node.config.region;
        self.node
            .topology()
            .group_for(region, sku)
            .map(|r| r.group)
            .ok_or_else(|| status::invalid_field(field, format!("no shard of region {region} holds this sku")))
    }

    /// Proposes a validated reserve: in one command when every line is in
    /// one group, else as a cart across groups (`crate::cart`).
    /// Behind the risk gate, the lines are scored first; a plain reserve's
    /// verdicts go into the log with the command.
    async fn reserve_one(&self, plan: Plan, command: m::Command, gate: Option<GateRequest>) -> Result<pb::ReserveResponse, Status> {
        let m::Command::Reserve { reservation_id, lines, ttl_ms } = command else { unreachable!("reserve_command builds a Reserve") };
        let (in_order, gates) = match &gate {
            Some(request) => self.gate_lines(&plan, &lines, request).await?,
            None => (Vec::new(), BTreeMap::new()),
        };
        let verdicts: Vec<pb::LineRisk> = in_order.iter().map(convert::line_risk_to_pb).collect();
        let refused = in_order.iter().any(m::LineRisk::refuses);
        // An id whose record a local replica holds in another group (a
        // one-group reservation, or a cart homed elsewhere) is a reused id,
        // if that group's leader still holds it: a replica that has not yet
        // applied a split or merge may show the record where it was.
        let record_at = plan.single_group().unwrap_or(plan.home);
        if let Some(other) = self.node.locate_locally(&reservation_id, Some(record_at)).filter(|g| *g != record_at) {
            let held = self.node.read(other, ReadQuery::Reservation(reservation_id.clone()), Consistency::Strong).await.map_err(status::group_error)?;
            let record = convert::record_to_pb(held.cart.as_ref(), held.reservation.as_ref(), other);
            if record.is_some() {
                return Ok(pb::ReserveResponse { outcome: pb::Outcome::IdempotencyConflict as i32, reservation: record, risk: verdicts, ..Default::default() });
            }
        }
        let (index, mut result) = if let Some(group) = plan.single_group() {
            let command = match gates.into_values().next() {
                Some(gate) => m::Command::ReserveGated { reservation_id: reservation_id.clone(), lines, ttl_ms, gate },
                None => m::Command::Reserve { reservation_id: reservation_id.clone(), lines, ttl_ms },
            };
            self.node.propose(group, command).await.map_err(status::group_error)?
        } else if refused {
            self.refused_cart(&plan, &reservation_id, &lines, ttl_ms).await?
        } else {
            self.node.reserve_cart(&reservation_id, &lines, ttl_ms, &plan, &gates).await.map_err(status::group_error)?
        };
        // A conflict with a one-group reservation elsewhere shows that one.
        let record_at = match result.located.filter(|g| result.outcome == m::Outcome::IdempotencyConflict && *g != record_at) {
            Some(other) => {
                let answer = self.node.read(other, ReadQuery::Reservation(reservation_id.clone()), Consistency::Strong).await.ok();
                result.reservation = answer.and_then(|a| a.reservation);
                other
            }
            None => record_at,
        };
        Ok(pb::ReserveResponse { risk: verdicts, ..convert::reserve_response(index, &result, record_at) })
    }

    /// The risk gate's verdicts, each line scored by its own group: in line
    /// order (for the answer) and per group in part order (for the log).
    async fn gate_lines(&self, plan: &Plan, lines: &[m::Line], request: &GateRequest) -> Result<GateVerdicts, Status> {
        let mut in_order: Vec<Option<m::LineRisk>> = vec![None; lines.len()];
        let mut gates = BTreeMap::new();
        for (group, part) in &plan.parts {
            let gate = self.availability.gate(*group, part, request).await.map_err(status::group_error)?;
            let mut scored = gate.lines.iter().cloned();
            for (slot, line) in in_order.iter_mut().zip(lines) {
                if slot.is_none() && self.group_of(&line.sku, "lines").ok() == Some(*group) {
                    *slot = scored.next();
                }
            }
            gates.insert(*group, gate);
        }
        Ok((in_order.into_iter().flatten().collect(), gates))
    }

    /// A cart the risk gate refuses: nothing is written, unless the id's
    /// record already holds this cart, which is then replayed.
    async fn refused_cart(&self, plan: &Plan, id: &str, lines: &[m::Line], ttl_ms: u64) -> Result<(u64, m::CommandResult), Status> {
        let answer = self.node.read(plan.home, ReadQuery::Reservation(id.to_owned()), Consistency::Strong).await.map_err(status::group_error)?;
        let result = match answer.cart {
            Some(cart) => cart.replay(cart.lines == lines && cart.ttl_ms == ttl_ms),
            None => m::CommandResult::bare(m::Outcome::RiskRefused),
        };
        Ok((answer.applied_index, result))
    }

    /// Commit, release, fulfill, cancel: proposed in the group that holds
    /// the reservation's record (a cart's home); a cart's line groups follow.
    async fn transition(&self, r: pb::ReservationRef, make: fn(String) -> m::Command) -> Result<Response<pb::ReservationResponse>, Status> {
        let command = make(r.reservation_id.clone());
        validate_command(&command, &self.node.config.input_limits).map_err(status::invalid)?;
        let Some(group) = self.node.locate_reservation(&r.reservation_id).await.map_err(status::group_error)? else {
            return Ok(Response::new(pb::ReservationResponse { outcome: pb::Outcome::NotFound as i32, ..Default::default() }));
        };
        let (mut index, mut result) = self.node.transition_at_home(group, command.clone()).await.map_err(status::group_error)?;
        let mut group = group;
        if result.outcome == m::Outcome::NotFound {
            // The lookup's shortcut may name a group the reservation left
            // (split off with its position): ask every other group.
            let home = self.node.home_of(&r.reservation_id);
            if let Some(found) = self.node.locate_everywhere(&r.reservation_id, home, Some(group)).await.map_err(status::group_error)? {
                (index, result) = self.node.transition_at_home(found, command).await.map_err(status::group_error)?;
                group = found;
            }
        }
        Ok(Response::new(convert::reservation_response(index, &result, group)))
    }
}

/// The gate's verdicts in line order, and per group.
type GateVerdicts = (Vec<m::LineRisk>, BTreeMap<m::GroupId, m::RiskGate>);

fn consistency_from_pb(r: &pb::GetPositionRequest) -> Result<Consistency, Status> {
    consistency_or(r.consistency, r.max_staleness_ms, Consistency::Strong)
}

/// The requested consistency; `unspecified` when the request left it unset.
fn consistency_or(consistency: i32, max_staleness_ms: u64, unspecified: Consistency) -> Result<Consistency, Status> {
    Ok(match pb::Consistency::try_from(consistency).map_err(|_| status::invalid_field("consistency", "unknown value"))? {
        pb::Consistency::Unspecified => unspecified,
        pb::Consistency::Strong => Consistency::Strong,
        pb::Consistency::Bounded => {
            if max_staleness_ms == 0 {
                return Err(status::invalid_field("max_staleness_ms", "must be > 0 with BOUNDED"));
            }
            Consistency::Bounded { max_staleness_ms }
        }
        pb::Consistency::Any => Consistency::Any,
    })
}

fn evaluation_fields(e: &Evaluation) -> (f64, bool, String, String, Vec<String>, Vec<String>) {
    let (p, scored, version, variant) = match &e.score {
        Some(s) => (s.p_sellable, true, s.model_version.clone(), enum_name(&s.variant).to_ascii_lowercase()),
        None => (0.0, false, String::new(), String::new()),
    };
    let rules = e.outcome.rules.iter().map(enum_name).collect();
    let degraded = e.outcome.degraded.iter().map(enum_name).collect();
    (p, scored, version, variant, rules, degraded)
}

fn model_summary(status: &models::ModelStatus) -> pb::ModelSummary {
    let drift = status.drift.last_window.as_ref().or(status.drift.current_window.as_ref());
    let c = &status.counters;
    pb::ModelSummary {
        serving: status.serving.clone().unwrap_or_default(),
        disabled: status.disabled,
        requests: c.requests,
        fallback_rate: status.fallback_rate,
        unscored: c.timeouts + c.overloaded + c.disabled + c.unavailable + c.errors,
        inference_p50_us: status.inference.p50_us,
        inference_p99_us: status.inference.p99_us,
        max_feature_psi: drift.map_or(0.0, |d| d.max_feature_psi),
        score_psi: drift.map_or(0.0, |d| d.score_psi),
        drift_alerts: drift.map(|d| d.alerts.iter().map(|a| (*a).to_owned()).collect()).unwrap_or_default(),
    }
}

fn decision_to_pb(decision: Decision) -> pb::Decision {
    match decision {
        Decision::Available => pb::Decision::Available,
        Decision::LowStock => pb::Decision::LowStock,
        Decision::Unavailable => pb::Decision::Unavailable,
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.is_empty() {
        return Err(status::invalid_field(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(status::invalid_field(field, format!("longer than {max} bytes")));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(status::invalid_field(field, "must not contain whitespace or control characters"));
    }
    Ok(())
}

#[tonic::async_trait]
impl Inventory for InventoryService {
    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id(), id = %request.get_ref().reservation_id))]
    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::ReserveResponse>, Status> {
        let (group, command, gate) = self.reserve_command(request.get_ref())?;
        if self.node.failpoint(crate::failpoint::LOST_ACK) {
            return Ok(Response::new(pb::ReserveResponse { outcome: pb::Outcome::Ok as i32, ..Default::default() }));
        }
        Ok(Response::new(self.reserve_one(group, command, gate).await?))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id(), count = request.get_ref().reservations.len()))]
    async fn batch_reserve(&self, request: Request<pb::BatchReserveRequest>) -> Result<Response<pb::BatchReserveResponse>, Status> {
        let batch = request.into_inner().reservations;
        if batch.is_empty() || batch.len() > BATCH_RESERVATIONS_MAX {
            return Err(status::invalid_field("reservations", format!("must hold 1 to {BATCH_RESERVATIONS_MAX} reservations")));
        }
        // Validate everything first: an invalid batch applies nothing.
        let mut commands = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            commands.push(self.reserve_command(r).map_err(|e| status::prefixed(&format!("reservations[{i}]."), e))?);
        }
        let results = futures::future::join_all(commands.into_iter().map(|(g, c, gate)| self.reserve_one(g, c, gate))).await;
        let results = results.into_iter().collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(pb::BatchReserveResponse { results }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id(), id = %request.get_ref().reservation_id))]
    async fn commit(&self, request: Request<pb::ReservationRef>) -> Result<Response<pb::ReservationResponse>, Status> {
        self.transition(request.into_inner(), |reservation_id| m::Command::Commit { reservation_id }).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id(), id = %request.get_ref().reservation_id))]
    async fn release(&self, request: Request<pb::ReservationRef>) -> Result<Response<pb::ReservationResponse>, Status> {
        self.transition(request.into_inner(), |reservation_id| m::Command::Release { reservation_id }).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id(), id = %request.get_ref().reservation_id))]
    async fn fulfill(&self, request: Request<pb::ReservationRef>) -> Result<Response<pb::ReservationResponse>, Status> {
        self.transition(request.into_inner(), |reservation_id| m::Command::Fulfill { reservation_id }).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id(), id = %request.get_ref().reservation_id))]
    async fn cancel(&self, request: Request<pb::ReservationRef>) -> Result<Response<pb::ReservationResponse>, Status> {
        self.transition(request.into_inner(), |reservation_id| m::Command::Cancel { reservation_id }).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id(), id = %request.get_ref().reservation_id))]
    async fn get_reservation(&self, request: Request<pb::ReservationRef>) -> Result<Response<pb::ReservationResponse>, Status> {
        let id = request.into_inner().reservation_id;
        check_text("reservation_id", &id, self.node.config.input_limits.id_bytes_max)?;
        let Some(home) = self.node.locate_reservation(&id).await.map_err(status::group_error)? else {
            return Ok(Response::new(pb::ReservationResponse { outcome: pb::Outcome::NotFound as i32, ..Default::default() }));
        };
        let mut answer = self.node.read(home, ReadQuery::Reservation(id.clone()), Consistency::Strong).await.map_err(status::group_error)?;
        let mut home = home;
        if answer.cart.is_none() && answer.reservation.is_none() {
            // As for a transition: the shortcut may name a group it left.
            let id_home = self.node.home_of(&id);
            if let Some(found) = self.node.locate_everywhere(&id, id_home, Some(home)).await.map_err(status::group_error)? {
                answer = self.node.read(found, ReadQuery::Reservation(id.clone()), Consistency::Strong).await.map_err(status::group_error)?;
                home = found;
            }
        }
        if let Some(cart) = answer.cart.as_ref().filter(|c| c.state == m::CartState::Preparing) {
            // Undecided: held or not is not known until every line group
            // answered, so decide it (as the resolver would) before saying.
            self.node.recover_cart(cart).await.map_err(status::group_error)?;
            answer = self.node.read(home, ReadQuery::Reservation(id), Consistency::Strong).await.map_err(status::group_error)?;
        }
        // An aborted cart is not found, as a refused reserve.
        let reservation = match &answer.cart {
            Some(cart) if cart.state == m::CartState::Aborted => None,
            cart => convert::record_to_pb(cart.as_ref(), answer.reservation.as_ref(), home),
        };
        let outcome = if reservation.is_some() { pb::Outcome::Ok } else { pb::Outcome::NotFound };
        Ok(Response::new(pb::ReservationResponse { outcome: outcome as i32, replay: false, reservation, applied_index: answer.applied_index }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id(), event = %request.get_ref().event_id))]
    async fn adjust(&self, request: Request<pb::AdjustRequest>) -> Result<Response<pb::AdjustResponse>, Status> {
        let r = request.into_inner();
        let kind = convert::kind_from_pb(r.kind).map_err(status::invalid)?;
        let adjustment = m::Adjustment {
            event_id: r.event_id,
            sku: r.sku,
            location: r.location,
            kind,
            quantity: r.quantity,
            reason: r.reason,
            source: r.source,
            source_seq: r.source_seq,
            observed_at_ms: (r.observed_at_ms > 0).then_some(r.observed_at_ms),
        };
        let key = m::PositionKey::new(adjustment.sku.clone(), adjustment.location.clone());
        let command = m::Command::Adjust(adjustment);
        validate_command(&command, &self.node.config.input_limits).map_err(status::invalid)?;
        let group = self.group_of(&key.sku, "sku")?;
        let (index, result) = self.node.propose(group, command).await.map_err(status::group_error)?;
        Ok(Response::new(pb::AdjustResponse {
            outcome: convert::outcome_to_pb(result.outcome) as i32,
            replay: result.replay,
            position: result.position.as_ref().map(|p| convert::position_to_pb(&self.node.config.region, &key, p)),
            applied_index: index,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id(), sku = %request.get_ref().sku))]
    async fn get_position(&self, request: Request<pb::GetPositionRequest>) -> Result<Response<pb::PositionResponse>, Status> {
        let r = request.into_inner();
        let limits = &self.node.config.input_limits;
        check_text("sku", &r.sku, limits.sku_bytes_max)?;
        check_text("location", &r.location, limits.location_bytes_max)?;
        let consistency = consistency_from_pb(&r)?;
        let group = self.group_of(&r.sku, "sku")?;
        let key = m::PositionKey::new(r.sku, r.location);
        let answer = self.node.read(group, ReadQuery::Position(key.clone()), consistency).await.map_err(status::group_error)?;
        let unknown_position = answer.position.is_none();
        let position = answer.position.unwrap_or_default();
        Ok(Response::new(pb::PositionResponse {
            position: Some(convert::position_to_pb(&self.node.config.region, &key, &position)),
            applied_index: answer.applied_index,
            staleness_ms: answer.staleness_ms,
            served_by: answer.served_by,
            leader: answer.leader.unwrap_or(0),
            group_id: group,
            unknown_position,
        }))
    }

    async fn check_availability(&self, request: Request<pb::CheckAvailabilityRequest>) -> Result<Response<pb::CheckAvailabilityResponse>, Status> {
        let (group, check, explain) = self.check_request(request.into_inner())?;
        Ok(Response::new(self.answer_check(group, check, explain).await?))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id(), count = request.get_ref().checks.len()))]
    async fn check_availability_batch(
        &self,
        request: Request<pb::CheckAvailabilityBatchRequest>,
    ) -> Result<Response<pb::CheckAvailabilityBatchResponse>, Status> {
        let batch = request.into_inner().checks;
        if batch.is_empty() || batch.len() > BATCH_CHECKS_MAX {
            return Err(status::invalid_field("checks", format!("must hold 1 to {BATCH_CHECKS_MAX} checks")));
        }
        // Validate everything first: an invalid batch answers nothing.
        let mut checks = Vec::with_capacity(batch.len());
        for (i, r) in batch.into_iter().enumerate() {
            checks.push(self.check_request(r).map_err(|e| status::prefixed(&format!("checks[{i}]."), e))?);
        }
        let answers = futures::future::join_all(checks.into_iter().map(|(group, check, explain)| self.answer_check(group, check, explain))).await;
        Ok(Response::new(pb::CheckAvailabilityBatchResponse { answers: answers.into_iter().collect::<Result<Vec<_>, Status>>()? }))
    }

    async fn rank_fulfillment(&self, request: Request<pb::RankFulfillmentRequest>) -> Result<Response<pb::RankFulfillmentResponse>, Status> {
        let r = request.into_inner();
        let limits = &self.node.config.input_limits;
        check_text("sku", &r.sku, limits.sku_bytes_max)?;
        self.check_quantity(r.quantity)?;
        check_text("destination_region", &r.destination_region, limits.location_bytes_max)?;
        let group = self.group_of(&r.sku, "sku")?;
        let route_key = Self::route_key(&r.sku, r.route_key)?;
        let answer = self.availability.rank(group, &r.sku, r.quantity, &r.destination_region, &route_key).await.map_err(status::group_error)?;
        let candidates = answer
            .candidates
            .iter()
            .map(|c| {
                let (p_sellable, scored, ..) = evaluation_fields(&c.evaluation);
                pb::FulfillmentCandidate {
                    location: c.evaluation.location.clone(),
                    eligible: c.eligible,
                    p_sellable,
                    scored,
                    cost: c.cost,
                    score: c.score,
                    atp: c.evaluation.atp,
                    seller_type: c.evaluation.seller_type.as_str().to_owned(),
                    reasons: c.reasons.clone(),
                }
            })
            .collect();
        Ok(Response::new(pb::RankFulfillmentResponse {
            candidates,
            model_version: answer.model_version,
            degraded: answer.degraded.iter().map(enum_name).collect(),
            staleness_ms: answer.staleness_ms,
        }))
    }
}

pub struct AdminService {
    node: Arc<Node>,
    availability: Arc<Availability>,
}

impl AdminService {
    fn model_status(&self) -> Result<Response<pb::ModelStatusResponse>, Status> {
        let status_json = serde_json::to_string(&self.availability.scorer().status()).map_err(|e| Status::internal(format!("encode the model status: {e}")))?;
        Ok(Response::new(pb::ModelStatusResponse { status_json, node_id: self.node.id() }))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let node = &self.node;
        let topology = node.topology();
        // Every node of the topology (joined ones too), as this node's copy has them.
        let nodes = topology.nodes().map(node_status).collect();
        let mut groups = Vec::new();
        // A replica the topology moved or merged away is being retired
        // (`Node::retire_replicas`): not listed.
        for g in node.groups().filter(|g| !node.is_retiring(g.id)) {
            let range = g.range();
            let region = topology.range(g.id).map_or_else(|| node.config.region.clone(), |r| r.region.clone());
            let p = g.progress();
            let (pending, positions) = {
                let inv = g.state().read();
                (inv.pending_count() as u64, inv.position_count() as u64)
            };
            groups.push(pb::GroupStatus {
                group_id: g.id,
                region,
                start_sku: range.start_sku.clone(),
                end_sku: range.end_sku.clone().unwrap_or_default(),
                replicas: if p.voters.is_empty() { topology.range(g.id).map(|r| r.replicas.clone()).unwrap_or_default() } else { p.voters.clone() },
                leader: p.leader.unwrap_or(0),
                term: p.term,
                role: p.role.to_string(),
                last_log_index: p.last_log_index,
                committed_index: p.committed_index,
                applied_index: p.applied_index,
                replication: p
                    .replication
                    .iter()
                    .map(|(id, matched)| pb::Replication { node_id: *id, matched_index: *matched, lag: p.last_log_index.saturating_sub(*matched) })
                    .collect(),
                pending_reservations: pending,
                positions,
                epoch: range.epoch,
                load_cmds_per_s: g.load_per_second(),
            });
        }
        Ok(Response::new(pb::StatusResponse {
            node_id: node.id(),
            region: node.config.region.clone(),
            nodes,
            groups,
            version: env!("CARGO_PKG_VERSION").to_string(),
            model: Some(model_summary(&self.availability.scorer().status())),
            home_slots: topology.home_slots(&node.config.region),
            topology_version: topology.version,
            balance_enabled: topology.balance_enabled(),
            metadata_replicas: topology.metadata_replicas().to_vec(),
        }))
    }

    async fn model_status(&self, _request: Request<pb::ModelStatusRequest>) -> Result<Response<pb::ModelStatusResponse>, Status> {
        self.model_status()
    }

    async fn load_model(&self, request: Request<pb::LoadModelRequest>) -> Result<Response<pb::ModelStatusResponse>, Status> {
        let caller = security::caller(&request);
        let r = request.into_inner();
        let detail = format!("dir={}", r.dir);
        let loaded = self.load_model_dir(&r.dir).await;
        security::audit(&caller, "LoadModel", &detail, &loaded.as_ref().map(|_| ()).map_err(|e| e.message().to_owned()));
        loaded?;
        self.model_status()
    }

    async fn promote_model(&self, request: Request<pb::PromoteModelRequest>) -> Result<Response<pb::ModelStatusResponse>, Status> {
        let caller = security::caller(&request);
        let r = request.into_inner();
        let promoted = self.availability.scorer().promote(&r.version).map_err(status::model_error);
        security::audit(&caller, "PromoteModel", &format!("version={}", r.version), &outcome(&promoted));
        promoted?;
        self.model_status()
    }

    async fn rollback_model(&self, request: Request<pb::ModelStatusRequest>) -> Result<Response<pb::ModelStatusResponse>, Status> {
        let caller = security::caller(&request);
        let rolled = self.availability.scorer().rollback().map_err(status::model_error);
        let detail = rolled.as_ref().map_or_else(|_| String::new(), |version| format!("now serving {version}"));
        security::audit(&caller, "RollbackModel", &detail, &outcome(&rolled));
        rolled?;
        self.model_status()
    }

    async fn set_model_candidate(&self, request: Request<pb::SetModelCandidateRequest>) -> Result<Response<pb::ModelStatusResponse>, Status> {
        let caller = security::caller(&request);
        let r = request.into_inner();
        let detail = format!("candidate={} ab_percent={} shadow={}", r.version, r.ab_percent, r.shadow);
        let set =
            u8::try_from(r.ab_percent).ok().filter(|p| *p <= 100).ok_or_else(|| status::invalid_field("ab_percent", "must be between 0 and 100")).and_then(
                |ab_percent| {
                    let version = (!r.version.is_empty()).then_some(r.version.as_str());
                    self.availability.scorer().set_candidate(version, ab_percent, r.shadow).map_err(status::model_error)
                },
            );
        security::audit(&caller, "SetModelCandidate", &detail, &outcome(&set));
        set?;
        self.model_status()
    }

    async fn split_shard(&self, request: Request<pb::SplitShardRequest>) -> Result<Response<pb::SplitShardResponse>, Status> {
        let caller = security::caller(&request);
        let r = request.into_inner();
        let at = (!r.at_sku.is_empty()).then_some(r.at_sku);
        if let Some(at) = &at {
            check_token("at_sku", at, self.node.config.input_limits.sku_bytes_max).map_err(status::invalid)?;
        }
        let detail = format!("group={} at={}", r.group_id, at.as_deref().unwrap_or("(middle)"));
        let done = self.node.split_group(r.group_id, at).await.map_err(status::group_error);
        security::audit(&caller, "SplitShard", &detail, &outcome(&done));
        let done = done?;
        Ok(Response::new(pb::SplitShardResponse { parent: Some(shard_range(&done.parent)), child: Some(shard_range(&done.child)) }))
    }

    async fn move_shard(&self, request: Request<pb::MoveShardRequest>) -> Result<Response<pb::MoveShardResponse>, Status> {
        let caller = security::caller(&request);
        let r = request.into_inner();
        let detail = format!("group={} from={} to={}", r.group_id, r.from_node, r.to_node);
        let done = self.node.move_replica(r.group_id, r.from_node, r.to_node).await.map_err(status::group_error);
        security::audit(&caller, "MoveShard", &detail, &outcome(&done));
        Ok(Response::new(pb::MoveShardResponse { range: Some(shard_range(&done?.range)) }))
    }

    async fn drain_node(&self, request: Request<pb::NodeRequest>) -> Result<Response<pb::NodeResponse>, Status> {
        let caller = security::caller(&request);
        let id = request.into_inner().node_id;
        let done = self.node.drain_node(id).await.map_err(status::group_error);
        security::audit(&caller, "DrainNode", &format!("node={id}"), &outcome(&done));
        Ok(Response::new(pb::NodeResponse { node: Some(node_status(&done?)) }))
    }

    async fn remove_node(&self, request: Request<pb::NodeRequest>) -> Result<Response<pb::NodeResponse>, Status> {
        let caller = security::caller(&request);
        let id = request.into_inner().node_id;
        let done = self.node.remove_node(id).await.map_err(status::group_error);
        security::audit(&caller, "RemoveNode", &format!("node={id}"), &outcome(&done));
        Ok(Response::new(pb::NodeResponse { node: Some(node_status(&done?)) }))
    }

    async fn set_balance(&self, request: Request<pb::SetBalanceRequest>) -> Result<Response<pb::SetBalanceResponse>, Status> {
        let caller = security::caller(&request);
        let enabled = request.into_inner().enabled;
        let done = self.node.set_balance(enabled).await.map_err(status::group_error);
        security::audit(&caller, "SetBalance", &format!("enabled={enabled}"), &outcome(&done));
        let topology = done?;
        Ok(Response::new(pb::SetBalanceResponse { enabled: topology.balance_enabled(), topology_version: topology.version }))
    }

    async fn cluster_settings(&self, _request: Request<pb::ClusterSettingsRequest>) -> Result<Response<pb::ClusterSettingsResponse>, Status> {
        let topology = self.node.topology();
        let nodes = topology
            .nodes()
            .map(|n| pb::ClusterNode {
                id: n.id,
                addr: n.addr.clone(),
                peer_addr: n.peer_addr.clone().unwrap_or_default(),
                region: n.region.clone(),
                state: n.state.as_str().to_owned(),
            })
            .collect();
        let config = &self.node.config;
        Ok(Response::new(pb::ClusterSettingsResponse {
            settings_json: config.cluster_settings.clone(),
            fingerprint: config.cluster_fingerprint.clone(),
            nodes,
        }))
    }

    async fn merge_shard(&self, request: Request<pb::MergeShardRequest>) -> Result<Response<pb::MergeShardResponse>, Status> {
        let caller = security::caller(&request);
        let r = request.into_inner();
        let detail = format!("group={}", r.group_id);
        let done = self.node.merge_group(r.group_id).await.map_err(status::group_error);
        security::audit(&caller, "MergeShard", &detail, &outcome(&done));
        let done = done?;
        Ok(Response::new(pb::MergeShardResponse { merged: Some(shard_range(&done.merged)), retired_group_id: done.retired }))
    }

    async fn set_model_disabled(&self, request: Request<pb::SetModelDisabledRequest>) -> Result<Response<pb::ModelStatusResponse>, Status> {
        let caller = security::caller(&request);
        let disabled = request.into_inner().disabled;
        self.availability.scorer().set_disabled(disabled);
        security::audit(&caller, "SetModelDisabled", &format!("kill switch {}", if disabled { "on" } else { "off" }), &Ok(()));
        self.model_status()
    }
}

fn node_status(n: &storage::topology::NodeInfo) -> pb::NodeStatus {
    pb::NodeStatus { id: n.id, addr: n.addr.clone(), region: n.region.clone(), state: n.state.as_str().to_owned() }
}

/// An Admin result as the audit line reports it.
fn outcome<T>(result: &Result<T, Status>) -> Result<(), String> {
    result.as_ref().map(|_| ()).map_err(|e| e.message().to_owned())
}

impl AdminService {
    /// Loads a version from a directory under the node's model root (a
    /// relative `dir` is taken from the root); anything outside it, `..` and
    /// symbolic links included, is refused.
    async fn load_model_dir(&self, dir: &str) -> Result<String, Status> {
        if dir.is_empty() {
            return Err(status::invalid_field("dir", "must not be empty"));
        }
        let dir = model_dir_under_root(&self.node.config.scoring.model_dir, dir)?;
        // Loading verifies checksums and golden vectors: blocking work.
        let scorer = self.availability.scorer().clone();
        let loaded = tokio::task::spawn_blocking(move || scorer.load(&dir)).await.map_err(|e| Status::internal(format!("load task failed: {e}")))?;
        loaded.map_err(status::model_error)
    }
}

/// `dir` resolved (symbolic links and `..` followed) and checked to lie
/// strictly inside `root`.
pub fn model_dir_under_root(root: &std::path::Path, dir: &str) -> Result<std::path::PathBuf, Status> {
    let root = std::fs::canonicalize(root).map_err(|e| Status::failed_precondition(format!("the model root {} cannot be read: {e}", root.display())))?;
    let requested = std::path::Path::new(dir);
    let joined = if requested.is_absolute() { requested.to_path_buf() } else { root.join(requested) };
    let resolved = std::fs::canonicalize(&joined).map_err(|e| status::invalid_field("dir", format!("{}: {e}", joined.display())))?;
    if resolved == root || !resolved.starts_with(&root) {
        return Err(status::invalid_field("dir", format!("{} is not a directory under the node's model root {}", resolved.display(), root.display())));
    }
    if !resolved.is_dir() {
        return Err(status::invalid_field("dir", format!("{} is not a directory", resolved.display())));
    }
    Ok(resolved)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to listen on {addr} (the {plane} plane): {source}")]
    Bind { addr: std::net::SocketAddr, plane: &'static str, source: std::io::Error },
    #[error("failed to serve: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Reflection of the public services (and health) only, in both protocol
/// versions: grpcurl and Postman speak v1, Python's grpcio-reflection and
/// older tools v1alpha.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(stockd_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

async fn bind(addr: std::net::SocketAddr, plane: &'static str) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, plane, source })
}

/// Serves both planes until `shutdown` resolves.
pub async fn serve(node: Arc<Node>, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<InventoryServer<InventoryService>>().await;
    health_reporter.set_serving::<AdminServer<AdminService>>().await;
    let v1 = reflection_builder().build_v1().expect("the embedded descriptor sets are valid");
    let v1alpha = reflection_builder().build_v1alpha().expect("the embedded descriptor sets are valid");
    let availability = Arc::new(Availability::new(node.clone()));
    node.add_task(crate::cart::spawn_resolver(node.clone()));
    let insecure = node.tls().is_none();
    let client_plane = tonic::transport::Server::builder()
        .layer(AuthorizeLayer::new(insecure))
        .add_service(health_service)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(InventoryServer::new(InventoryService::new(node.clone(), availability.clone())))
        .add_service(AdminServer::new(AdminService { node: node.clone(), availability: availability.clone() }));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let peer_plane = tonic::transport::Server::builder().layer(AuthorizeLayer::new(insecure)).add_service(
        RaftPeerServer::new(PeerService { node: node.clone(), stopped: stopped.clone() })
            .max_decoding_message_size(raft::wire::RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(raft::wire::RAFT_MESSAGE_BYTES_MAX),
    );
    let (listen, peer_listen) = (node.config.listen, node.config.peer_listen);
    let client_listener = bind(listen, "client").await?;
    let peer_listener = bind(peer_listen, "peer").await?;
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let signal = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let health_watch = tokio::spawn(watch_groups(node.clone(), health_reporter));
    tracing::info!(node = node.id(), %listen, %peer_listen, tls = !insecure, groups = node.groups().count(), model = ?availability.scorer().status().serving, "serving");
    let served = match node.tls().cloned() {
        Some(tls) => {
            futures::future::try_join(
                client_plane.serve_with_incoming_shutdown(tls::incoming(client_listener, tls.clone(), Plane::Client), signal(stopped.clone())),
                peer_plane.serve_with_incoming_shutdown(tls::incoming(peer_listener, tls, Plane::Peer), signal(stopped)),
            )
            .await
        }
        None => {
            let plain = |listener| tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            futures::future::try_join(
                client_plane.serve_with_incoming_shutdown(plain(client_listener), signal(stopped.clone())),
                peer_plane.serve_with_incoming_shutdown(plain(peer_listener), signal(stopped)),
            )
            .await
        }
    };
    health_watch.abort();
    served.map(|_| ()).map_err(ServeError::Serve)
}

/// How often the health of the node's groups is looked at.
const HEALTH_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the gRPC health of the Inventory service in step with the node's
/// groups: NOT_SERVING while any group has stopped (a fatal storage error
/// stops a group's replica for good; the process stays up for Admin/Status
/// and the other groups), with one error line when it happens, so that load
/// balancers and operators see what only the logs said before.
async fn watch_groups(node: Arc<Node>, reporter: tonic_health::server::HealthReporter) {
    let mut reported: Vec<(m::GroupId, String)> = Vec::new();
    let mut ticks = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    loop {
        ticks.tick().await;
        let stopped: Vec<(m::GroupId, String)> = node.all_groups().into_iter().filter_map(|g| g.stopped().map(|reason| (g.id, reason))).collect();
        if stopped == reported {
            continue;
        }
        if stopped.is_empty() {
            reporter.set_serving::<InventoryServer<InventoryService>>().await;
        } else {
            reporter.set_not_serving::<InventoryServer<InventoryService>>().await;
            let groups: Vec<m::GroupId> = stopped.iter().map(|(g, _)| *g).collect();
            let (first, reason) = &stopped[0];
            tracing::error!(
                node = node.id(),
                ?groups,
                "groups stopped on this node (group {first}: {reason}): Inventory health is NOT_SERVING; restart the node to recover them"
            );
        }
        reported = stopped;
    }
}

/// A range of the topology as the admin API shows it (replicas sorted).
fn shard_range(r: &storage::topology::RangeInfo) -> pb::ShardRange {
    let mut replicas = r.replicas.clone();
    replicas.sort_unstable();
    pb::ShardRange {
        group_id: r.group,
        region: r.region.clone(),
        start_sku: r.start_sku.clone(),
        end_sku: r.end_sku.clone().unwrap_or_default(),
        epoch: r.epoch,
        replicas,
    }
}
