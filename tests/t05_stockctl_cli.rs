//! `stockctl` without a server: argument parsing, exit codes, output formats,
//! and the binary's behaviour on bad input and on an unreachable cluster.

use std::process::Command as Process;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

use stockd::cli::{self, AdjustKindArg, Cli, Command, Transition};
use stockd::proto::v1::{
    AdjustResponse, AdjustmentKind, Consistency, GroupStatus, Line, LineRisk, NodeStatus, Outcome, Position, PositionResponse, Replication, Reservation,
    ReservationResponse, ReservationState, ReserveResponse, Shortfall, StatusResponse,
};
use stockd_client::{ClientError, NodeStatusReport};

fn line(sku: &str, location: &str, quantity: u64) -> Line {
    Line { sku: sku.to_owned(), location: location.to_owned(), quantity }
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("stockctl").chain(args.iter().copied()))
}

// ---------------------------------------------------------------------------
// Parsers
// ---------------------------------------------------------------------------

#[test]
fn lines_parse_as_sku_location_quantity() {
    assert_eq!(cli::parse_line("SKU-1:dc1:3"), Ok(line("SKU-1", "dc1", 3)));
    assert_eq!(cli::parse_line("a:b:0"), Ok(line("a", "b", 0)), "the range is the server's to check");
    for bad in ["a:b", "a:b:c:4", ":dc1:3", "sku::3", "sku:dc1:", "sku:dc1:x", "sku:dc1:-1", "sku:dc1:1.5", ""] {
        let error = cli::parse_line(bad).expect_err(bad);
        assert!(!error.is_empty(), "{bad:?} gives a message");
    }
    assert!(cli::parse_line("a:b").expect_err("2 parts").contains("SKU:LOC:QTY"));
    assert!(cli::parse_line("a:b:x").expect_err("not a number").contains("whole number"));
}

#[test]
fn durations_need_a_unit_except_zero() {
    assert_eq!(cli::parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(cli::parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(cli::parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(cli::parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(cli::parse_duration("0"), Ok(Duration::ZERO));
    assert_eq!(cli::parse_duration("0s"), Ok(Duration::ZERO));
    for bad in ["30", "", "s", "5x", "1.5s", "-1s", "5 s", "99999999999999999999s", "18446744073709551615h", "9000h"] {
        assert!(cli::parse_duration(bad).is_err(), "{bad:?} must be refused");
    }
    assert!(cli::parse_duration("30").expect_err("no unit").contains("unit"));
    assert!(cli::parse_timeout("0").is_err(), "a zero timeout is refused");
    assert!(cli::parse_bench_duration("500ms").is_err());
    assert_eq!(cli::parse_bench_duration("10s"), Ok(Duration::from_secs(10)));
}

#[test]
fn consistency_is_strong_bounded_or_any() {
    let strong = cli::parse_consistency("strong").expect("strong");
    assert_eq!((strong.consistency, strong.max_staleness_ms), (Consistency::Strong, 0));
    let any = cli::parse_consistency("any").expect("any");
    assert_eq!((any.consistency, any.max_staleness_ms), (Consistency::Any, 0));
    let bounded = cli::parse_consistency("bounded:500").expect("bounded ms");
    assert_eq!((bounded.consistency, bounded.max_staleness_ms), (Consistency::Bounded, 500));
    let bounded = cli::parse_consistency("bounded:2s").expect("bounded duration");
    assert_eq!(bounded.max_staleness_ms, 2000);
    for bad in ["bounded", "bounded:", "bounded:0", "bounded:x", "weak", "", "strong:5"] {
        assert!(cli::parse_consistency(bad).is_err(), "{bad:?} must be refused");
    }
}

#[test]
fn addresses_come_from_flag_then_env_then_default() {
    let flag = vec!["h1:1".to_owned(), "h2:2".to_owned()];
    assert_eq!(cli::resolve_addrs(&flag, Some("e:1")), Ok(flag.clone()));
    assert_eq!(cli::resolve_addrs(&[], Some("e1:1, e2:2")), Ok(vec!["e1:1".to_owned(), "e2:2".to_owned()]));
    let default = cli::resolve_addrs(&[], None).expect("default");
    assert_eq!(default, vec!["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]);
    assert_eq!(cli::resolve_addrs(&[], Some("  ")), Ok(default));
    assert!(cli::resolve_addrs(&[], Some("a:1,,b:2")).is_err());
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

#[test]
fn reserve_takes_repeated_lines_and_a_ttl() {
    let cli = parse(&["reserve", "--id", "r1", "--line", "a:dc1:2", "--line", "b:dc2:1", "--ttl", "30s"]).expect("valid");
    let Command::Reserve(args) = cli.command else { panic!("reserve expected") };
    assert_eq!(args.id, "r1");
    assert_eq!(args.lines, vec![line("a", "dc1", 2), line("b", "dc2", 1)]);
    assert_eq!(args.ttl, Duration::from_secs(30));
    let cli = parse(&["reserve", "--id", "r1", "--line", "a:dc1:2"]).expect("valid");
    let Command::Reserve(args) = cli.command else { panic!("reserve expected") };
    assert_eq!(args.ttl, Duration::ZERO, "0 = server default");
    assert!(!args.risk_gate, "ungated unless asked");
    let cli = parse(&["reserve", "--id", "r1", "--line", "a:dc1:2", "--risk-gate"]).expect("valid");
    let Command::Reserve(args) = cli.command else { panic!("reserve expected") };
    assert!(args.risk_gate);
}

#[test]
fn global_flags_have_defaults_and_go_anywhere() {
    let cli = parse(&["status"]).expect("valid");
    assert!(cli.addr.is_empty() && !cli.json);
    assert_eq!(cli.timeout, Duration::from_secs(5));
    let cli = parse(&["get", "--sku", "a", "--location", "b", "--json", "--addr", "h1:1,h2:2", "--timeout", "250ms"]).expect("valid");
    assert!(cli.json);
    assert_eq!(cli.addr, vec!["h1:1", "h2:2"]);
    assert_eq!(cli.timeout, Duration::from_millis(250));
    let Command::Get(args) = cli.command else { panic!("get expected") };
    assert_eq!(args.consistency.consistency, Consistency::Strong);
}

#[test]
fn adjust_kinds_map_to_the_proto() {
    let cli = parse(&["adjust", "--event-id", "e1", "--sku", "a", "--location", "b", "--kind", "safety-stock", "--qty", "4"]).expect("valid");
    let Command::Adjust(args) = cli.command else { panic!("adjust expected") };
    assert_eq!(args.kind, AdjustKindArg::SafetyStock);
    assert_eq!(args.source, "stockctl");
    assert_eq!(args.seq, None);
    assert_eq!(args.reason, "");
    let kinds = [
        ("receipt", AdjustmentKind::Receipt),
        ("return", AdjustmentKind::Return),
        ("damage", AdjustmentKind::Damage),
        ("shrink", AdjustmentKind::Shrink),
        ("count", AdjustmentKind::Count),
        ("hold", AdjustmentKind::Hold),
        ("unhold", AdjustmentKind::Unhold),
        ("safety-stock", AdjustmentKind::SafetyStock),
    ];
    for (word, kind) in kinds {
        let cli = parse(&["adjust", "--event-id", "e", "--sku", "a", "--location", "b", "--kind", word, "--qty", "1"]).expect(word);
        let Command::Adjust(args) = cli.command else { panic!("adjust expected") };
        assert_eq!(AdjustmentKind::from(args.kind), kind);
        assert_eq!(cli::kind_word(kind), word);
    }
}

#[test]
fn bench_has_documented_defaults() {
    let cli = parse(&["bench", "--workload", "hot"]).expect("valid");
    let Command::Bench(args) = cli.command else { panic!("bench expected") };
    assert_eq!(args.workload, stockd::bench::Workload::Hot);
    assert_eq!((args.skus, args.clients, args.batch), (1000, 64, 1));
    assert_eq!(args.duration, Duration::from_secs(10));
    assert_eq!(args.location, "bench");
    assert!(parse(&["bench", "--workload", "hot", "--clients", "0"]).is_err());
    assert!(parse(&["bench", "--workload", "warm"]).is_err());
}

#[test]
fn usage_errors_exit_2_and_name_the_flag() {
    let cases: [(&[&str], &str); 6] = [
        (&["reserve", "--id", "r", "--line", "a:b"], "--line"),
        (&["reserve", "--id", "r", "--line", "a:b:1", "--ttl", "30"], "--ttl"),
        (&["reserve", "--id", "r"], "--line"),
        (&["get", "--sku", "a", "--location", "b", "--consistency", "weak"], "--consistency"),
        (&["adjust", "--event-id", "e", "--sku", "a", "--location", "b", "--kind", "gift", "--qty", "1"], "--kind"),
        (&["status", "--timeout", "0"], "--timeout"),
    ];
    for (args, flag) in cases {
        let error = parse(args).expect_err(flag);
        assert_eq!(error.exit_code(), i32::from(cli::EXIT_USAGE), "{args:?}");
        assert!(error.to_string().contains(flag), "{args:?}: {error}");
    }
}

// ---------------------------------------------------------------------------
// Exit codes and error lines
// ---------------------------------------------------------------------------

#[test]
fn outcomes_and_errors_map_to_exit_codes() {
    assert_eq!(cli::exit_code_for_outcome(Outcome::Ok), 0);
    for refusal in [
        Outcome::InsufficientStock,
        Outcome::IdempotencyConflict,
        Outcome::NotFound,
        Outcome::InvalidState,
        Outcome::StaleEvent,
        Outcome::InsufficientQuantity,
        Outcome::Unspecified,
    ] {
        assert_eq!(cli::exit_code_for_outcome(refusal), 1, "{refusal:?}");
    }
    assert_eq!(cli::exit_code_for_error(&ClientError::InvalidArgument("invalid sku: empty".into())), 2);
    assert_eq!(cli::exit_code_for_error(&ClientError::InvalidAddress { addr: "x".into(), message: "bad".into() }), 2);
    assert_eq!(cli::exit_code_for_error(&ClientError::Unavailable { outcome_unknown: true, message: "m".into() }), 3);
    assert_eq!(cli::exit_code_for_error(&ClientError::Unavailable { outcome_unknown: false, message: "m".into() }), 3);
    assert_eq!(cli::exit_code_for_error(&ClientError::Rpc { code: tonic::Code::Internal, message: "m".into() }), 3);
    assert_eq!(cli::exit_code_for_error(&ClientError::PermissionDenied("role reader may not call x".into())), cli::EXIT_DENIED);
    assert_eq!(cli::exit_code_for_error(&ClientError::Unauthenticated("no certificate".into())), 4);
}

#[test]
fn error_lines_are_one_line_and_keep_the_server_message() {
    let error = ClientError::InvalidArgument("invalid lines[0].quantity: must be between 1 and 1000000".into());
    assert_eq!(cli::error_line(&error), "error: invalid lines[0].quantity: must be between 1 and 1000000");
    let error = ClientError::Unavailable { outcome_unknown: true, message: "node 1:\nconnection reset".into() };
    let text = cli::error_line(&error);
    assert!(!text.contains('\n'), "{text}");
    assert!(text.starts_with("error: outcome unknown"), "{text}");
    assert!(text.contains("same id"), "{text}");
    let error = ClientError::Unavailable { outcome_unknown: false, message: "down".into() };
    assert_eq!(cli::error_line(&error), "error: unavailable: down");
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

fn reservation(state: ReservationState) -> Reservation {
    Reservation {
        id: "r1".into(),
        state: state as i32,
        lines: vec![line("sku-long-name", "dc1", 2), line("b", "dc22", 10)],
        created_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_030_000,
        finished_at_ms: 0,
        ..Default::default()
    }
}

#[test]
fn words_are_lower_case_proto_names() {
    assert_eq!(cli::outcome_word(Outcome::InsufficientStock), "insufficient_stock");
    assert_eq!(cli::outcome_word(Outcome::IdempotencyConflict), "idempotency_conflict");
    assert_eq!(cli::outcome_word(Outcome::InsufficientQuantity), "insufficient_quantity");
    assert_eq!(cli::outcome_word(Outcome::StaleEvent), "stale_event");
    assert_eq!(cli::state_word(ReservationState::Pending), "pending");
    assert_eq!(cli::state_word(ReservationState::Cancelled), "cancelled");
    assert_eq!(cli::outcome_label(Outcome::Ok, true), "ok (replay)");
    assert_eq!(cli::outcome_label(Outcome::NotFound, false), "not_found");
    assert_eq!(Transition::Commit.past(), "committed");
    assert_eq!(Transition::Fulfill.verb(), "fulfill");
}

#[test]
fn reservation_json_has_the_documented_shape() {
    let value = cli::reservation_json(&reservation(ReservationState::Committed));
    let keys: Vec<&str> = value.as_object().expect("object").keys().map(String::as_str).collect();
    let mut expected = vec!["id", "state", "lines", "expires_at_ms", "created_at_ms", "finished_at_ms", "home_group", "parts"];
    expected.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, expected);
    assert_eq!(value["state"], "committed");
    assert_eq!(value["lines"][1], serde_json::json!({"sku": "b", "location": "dc22", "quantity": 10}));
    assert_eq!(value["expires_at_ms"], 1_700_000_030_000u64);
}

#[test]
fn reservation_human_is_aligned() {
    let text = cli::reservation_human(&reservation(ReservationState::Pending));
    assert!(text.contains("state           pending\n"), "{text}");
    assert!(text.contains("created_at_ms   1700000000000 (2023-11-14T22:13:20.000Z)"), "{text}");
    assert!(text.contains("finished_at_ms  -\n"), "{text}");
    let table: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("SKU")).collect();
    assert_eq!(table.len(), 3, "{text}");
    let column = table[0].find("LOCATION").expect("LOCATION header");
    assert_eq!(table[1].find("dc1"), Some(column), "{text}");
    assert_eq!(table[2].find("dc22"), Some(column), "{text}");
    assert!(text.lines().all(|l| l == l.trim_end()), "no trailing spaces: {text:?}");
}

#[test]
fn a_cart_shows_its_home_and_each_line_by_group_with_its_state() {
    let mut cart = reservation(ReservationState::Committed);
    cart.home_group = 3;
    cart.parts = vec![
        stockd::proto::v1::ReservationPart { group_id: 1, lines: vec![line("b", "dc22", 10)], state: ReservationState::Committed as i32 },
        stockd::proto::v1::ReservationPart { group_id: 7, lines: vec![line("sku-long-name", "dc1", 2)], state: ReservationState::Unspecified as i32 },
    ];
    let text = cli::reservation_human(&cart);
    assert!(text.contains("home_group      3\n"), "{text}");
    let table: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("GROUP")).collect();
    assert_eq!(table.len(), 3, "{text}");
    assert!(table[1].starts_with("1 ") && table[1].ends_with("committed"), "{text}");
    assert!(table[2].starts_with("7 ") && table[2].ends_with("following"), "a group that has not confirmed yet: {text}");
    let json = cli::reservation_json(&cart);
    assert_eq!(json["home_group"], 3);
    assert_eq!(json["parts"][1]["group_id"], 7);
    assert_eq!(json["parts"][1]["state"], "following");
    assert_eq!(json["parts"][0]["lines"][0]["sku"], "b");
}

#[test]
fn replays_are_flagged_in_both_formats() {
    let response = ReserveResponse {
        outcome: Outcome::Ok as i32,
        replay: true,
        reservation: Some(reservation(ReservationState::Pending)),
        shortfalls: vec![],
        applied_index: 12,
        risk: vec![],
    };
    assert!(cli::reserve_human("r1", &[], &response).starts_with("ok (replay): reserved r1\n"));
    let value = cli::reserve_json(&response);
    assert_eq!(value["outcome"], "ok");
    assert_eq!(value["replay"], true);
    assert_eq!(value["reservation"]["id"], "r1");
    assert_eq!(cli::exit_code_for_outcome(response.outcome()), 0, "a replayed success is a success");
}

#[test]
fn a_risk_refusal_prints_each_lines_verdict() {
    let pass = LineRisk { p_sellable: 0.9731, scored: true, threshold: 0.9, model_version: "v1".into(), refused_by: vec![], degraded: vec![] };
    let refused = LineRisk {
        p_sellable: 0.0,
        scored: false,
        threshold: 0.9,
        model_version: String::new(),
        refused_by: vec!["CONSERVATIVE_RULE".into()],
        degraded: vec!["MODEL_UNAVAILABLE".into()],
    };
    let response = ReserveResponse { outcome: Outcome::RiskRefused as i32, risk: vec![pass, refused], ..Default::default() };
    let lines = [Line { sku: "sku-a".into(), location: "dc1".into(), quantity: 1 }, Line { sku: "sku-b".into(), location: "3p-7".into(), quantity: 2 }];
    let text = cli::reserve_human("r5", &lines, &response);
    let mut out = text.lines();
    assert_eq!(out.next(), Some("risk_refused: reservation r5 not made: the checkout risk gate refused a line"));
    assert_eq!(out.next(), Some("SKU    LOCATION  P_SELLABLE  THRESHOLD  GATE                        DEGRADED"));
    assert_eq!(out.next(), Some("sku-a  dc1       0.973       0.900      pass                        -"));
    assert_eq!(out.next(), Some("sku-b  3p-7      -           0.900      refused: CONSERVATIVE_RULE  MODEL_UNAVAILABLE"));
    let value = cli::reserve_json(&response);
    assert_eq!(value["outcome"], "risk_refused");
    assert_eq!(value["risk"][0]["p_sellable"], 0.9731);
    assert_eq!(
        value["risk"][1],
        serde_json::json!({"p_sellable": null, "threshold": 0.9, "model_version": "", "refused_by": ["CONSERVATIVE_RULE"], "degraded": ["MODEL_UNAVAILABLE"]})
    );
    assert_eq!(cli::exit_code_for_outcome(response.outcome()), 1, "a refusal is a refusal");
}

#[test]
fn insufficient_stock_prints_the_shortfalls() {
    let response = ReserveResponse {
        outcome: Outcome::InsufficientStock as i32,
        replay: false,
        reservation: None,
        shortfalls: vec![Shortfall { sku: "sku-a".into(), location: "dc1".into(), requested: 5, atp: 3 }],
        applied_index: 7,
        risk: vec![],
    };
    let text = cli::reserve_human("r9", &[], &response);
    let mut lines = text.lines();
    assert!(lines.next().expect("first line").starts_with("insufficient_stock: reservation r9 not made"));
    assert_eq!(lines.next(), Some("SKU    LOCATION  REQUESTED  ATP"));
    assert_eq!(lines.next(), Some("sku-a  dc1       5          3"));
    let value = cli::reserve_json(&response);
    assert_eq!(value["outcome"], "insufficient_stock");
    assert_eq!(value["reservation"], Value::Null);
    assert_eq!(value["shortfalls"][0], serde_json::json!({"sku": "sku-a", "location": "dc1", "requested": 5, "atp": 3}));
}

#[test]
fn transitions_explain_refusals() {
    let response = ReservationResponse {
        outcome: Outcome::InvalidState as i32,
        replay: false,
        reservation: Some(reservation(ReservationState::Released)),
        applied_index: 3,
    };
    let text = cli::transition_human(Transition::Commit, "r1", &response);
    assert!(text.starts_with("invalid_state: cannot commit r1: it is released\n"), "{text}");
    let ok = ReservationResponse { outcome: Outcome::Ok as i32, replay: false, ..response.clone() };
    assert!(cli::transition_human(Transition::Cancel, "r1", &ok).starts_with("ok: cancelled r1\n"));
    let value = cli::reservation_response_json(&response);
    assert_eq!(value["outcome"], "invalid_state");
    assert_eq!(value["reservation"]["state"], "released");

    let missing = ReservationResponse { outcome: Outcome::NotFound as i32, replay: false, reservation: None, applied_index: 0 };
    assert_eq!(cli::get_reservation_exit_code(&missing), 1);
    assert_eq!(cli::get_reservation_json("zz", &missing), serde_json::json!({"outcome": "not_found", "id": "zz"}));
    assert_eq!(cli::get_reservation_exit_code(&response), 1);
    assert_eq!(cli::get_reservation_exit_code(&ok), 0);
    assert_eq!(cli::get_reservation_json("r1", &ok)["state"], "released");
}

fn position_response(leader: u64) -> PositionResponse {
    PositionResponse {
        position: Some(Position {
            region: "eu".into(),
            sku: "sku-a".into(),
            location: "dc1".into(),
            on_hand: 10,
            reserved: 3,
            committed: 2,
            safety_stock: 1,
            held: 1,
            atp: 3,
            short: false,
            recent_changes: vec![],
        }),
        applied_index: 42,
        staleness_ms: 120,
        served_by: 2,
        leader,
        group_id: 4,
        unknown_position: false,
    }
}

#[test]
fn get_json_has_exactly_the_documented_keys() {
    let value = cli::position_json("sku-a", "dc1", &position_response(1));
    let mut keys: Vec<&str> = value.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = vec![
        "on_hand",
        "reserved",
        "committed",
        "safety_stock",
        "held",
        "atp",
        "short",
        "applied_index",
        "staleness_ms",
        "served_by",
        "leader",
        "sku",
        "location",
        "group",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(value["on_hand"], 10);
    assert_eq!(value["atp"], 3);
    assert_eq!(value["short"], false);
    assert_eq!(value["group"], 4);
    assert_eq!(value["leader"], 1);
    assert_eq!(value["served_by"], 2);
    assert_eq!(cli::position_json("sku-a", "dc1", &position_response(0))["leader"], Value::Null);

    let empty = PositionResponse { position: None, ..position_response(0) };
    let value = cli::position_json("s", "l", &empty);
    assert_eq!((value["sku"].as_str(), value["on_hand"].as_u64()), (Some("s"), Some(0)));
}

#[test]
fn get_human_is_an_aligned_block() {
    let text = cli::position_human("sku-a", "dc1", &position_response(0));
    assert!(text.contains("\non_hand        10\n"), "{text}");
    assert!(text.contains("\nstaleness_ms   120\n"), "{text}");
    assert!(text.contains("\nleader         unknown\n"), "{text}");
    let value_columns: std::collections::HashSet<usize> =
        text.lines().map(|l| l.find("  ").map(|i| i + l[i..].len() - l[i..].trim_start().len()).unwrap_or(0)).collect();
    assert_eq!(value_columns.len(), 1, "values share one column: {text}");
}

#[test]
fn adjust_output_shows_the_position() {
    let response = AdjustResponse { outcome: Outcome::StaleEvent as i32, replay: false, position: position_response(1).position, applied_index: 9 };
    let text = cli::adjust_human("e7", AdjustmentKind::Receipt, 5, &response);
    assert!(text.starts_with("stale_event: event e7 not applied"), "{text}");
    assert!(text.contains("on_hand"), "{text}");
    let value = cli::adjust_json(&response);
    assert_eq!(value["outcome"], "stale_event");
    assert_eq!(value["position"]["atp"], 3);
}

fn status(node_id: u64, role: &str, leader: u64) -> StatusResponse {
    StatusResponse {
        node_id,
        region: "eu".into(),
        nodes: vec![NodeStatus { id: 1, addr: "127.0.0.1:7101".into(), region: "eu".into(), state: "up".into() }],
        groups: vec![GroupStatus {
            group_id: 1,
            region: "eu".into(),
            start_sku: "2".into(),
            end_sku: "4".into(),
            replicas: vec![1, 2, 3],
            leader,
            term: 3,
            role: role.into(),
            last_log_index: 100,
            committed_index: 99,
            applied_index: 98,
            replication: if role == "leader" {
                vec![Replication { node_id: 2, matched_index: 99, lag: 1 }, Replication { node_id: 3, matched_index: 90, lag: 10 }]
            } else {
                vec![]
            },
            pending_reservations: 5,
            positions: 7,
            epoch: 1,
            load_cmds_per_s: if role == "leader" { 412.4 } else { 0.0 },
        }],
        version: "0.1.0".into(),
        model: None,
        home_slots: vec![1],
        topology_version: 1,
        balance_enabled: true,
        metadata_replicas: vec![1],
    }
}

#[test]
fn status_tables_show_every_node_and_group() {
    let reports = vec![
        NodeStatusReport { addr: "http://127.0.0.1:7101".into(), result: Ok(status(1, "leader", 1)) },
        NodeStatusReport { addr: "http://127.0.0.1:7102".into(), result: Ok(status(2, "follower", 1)) },
        NodeStatusReport {
            addr: "http://127.0.0.1:7103".into(),
            result: Err(ClientError::Unavailable { outcome_unknown: false, message: "connection refused".into() }),
        },
    ];
    let text = cli::status_human(&reports);
    assert!(text.starts_with("nodes:\n"), "{text}");
    assert!(text.contains("\ngroups:\n"), "{text}");
    let node_lines: Vec<&str> = text.lines().skip(1).take(4).collect();
    let state_column = node_lines[0].find("STATE").expect("STATE header");
    assert_eq!(node_lines[1].find("up"), Some(state_column), "{text}");
    assert_eq!(node_lines[3].find("down"), Some(state_column), "{text}");
    assert!(node_lines[3].starts_with("127.0.0.1:7103"), "{text}");
    let group_lines: Vec<&str> = text.lines().skip_while(|l| *l != "groups:").skip(1).collect();
    assert_eq!(group_lines.len(), 3, "header + one row per (group, node): {text}");
    let lag_column = group_lines[0].find("LAG").expect("LAG header");
    assert_eq!(group_lines[1].find("2:1,3:10"), Some(lag_column), "{text}");
    assert!(group_lines[1].contains("2..4"), "{text}");
    assert!(group_lines[2].contains("follower"), "{text}");
    assert_eq!(cli::status_exit_code(&reports), 0);
    assert_eq!(cli::status_exit_code(&reports[2..]), 3, "no node answered");

    let value = cli::status_json(&reports);
    let responses = value["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), 3);
    assert_eq!(responses[0]["status"]["groups"][0]["replication"][1]["lag"], 10);
    assert_eq!(
        (responses[0]["status"]["groups"][0]["epoch"].as_u64(), responses[0]["status"]["groups"][0]["load_cmds_per_s"].as_f64()),
        (Some(1), Some(412.4))
    );
    assert_eq!(responses[1]["status"]["node_id"], 2);
    assert_eq!(responses[2]["status"], Value::Null);
    assert!(responses[2]["error"].as_str().expect("error text").contains("connection refused"));
}

#[test]
fn node_list_shows_the_newest_topology_with_replicas_and_leaders() {
    let mut newer = status(2, "follower", 1);
    newer.topology_version = 5;
    newer.metadata_replicas = vec![1, 3];
    newer.nodes = (1..=4).map(|id| NodeStatus { id, addr: format!("127.0.0.1:710{id}"), region: "eu".into(), state: "up".into() }).collect();
    newer.nodes[2].state = "draining".into();
    let reports = vec![
        NodeStatusReport { addr: "http://127.0.0.1:7101".into(), result: Ok(status(1, "leader", 1)) },
        NodeStatusReport { addr: "http://127.0.0.1:7102".into(), result: Ok(newer) },
        NodeStatusReport {
            addr: "http://127.0.0.1:7103".into(),
            result: Err(ClientError::Unavailable { outcome_unknown: false, message: "connection refused".into() }),
        },
    ];
    let text = cli::node_list_human(&reports);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NODE") && lines[0].contains("STATE") && lines[0].contains("LEADERS"), "{text}");
    assert_eq!(lines.len(), 5, "header and the four nodes of the newer topology: {text}");
    let cells = |line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(cells(lines[1]), ["1", "127.0.0.1:7101", "eu", "up", "1", "1", "yes", "yes"], "{text}");
    assert_eq!(cells(lines[3]), ["3", "127.0.0.1:7103", "eu", "draining", "1", "0", "yes", "no"], "{text}");
    assert_eq!(cells(lines[4])[..7], ["4", "127.0.0.1:7104", "eu", "up", "0", "0", "-"], "{text}");
    assert!(lines[4].ends_with("not asked"), "{text}");
    let value = cli::node_list_json(&reports);
    assert_eq!(value["nodes"].as_array().map(Vec::len), Some(4));
    assert_eq!((value["nodes"][0]["leaders"].as_u64(), value["nodes"][3]["answered"].is_null()), (Some(1), true));
    assert_eq!(value["unanswered"][0], "127.0.0.1:7103");
    // The newest topology says which nodes replicate the metadata group,
    // and a drain waits for that replica too.
    assert_eq!((value["nodes"][2]["metadata_replica"].as_bool(), value["nodes"][1]["metadata_replica"].as_bool()), (Some(true), Some(false)));
    assert_eq!(cli::replicas_on(&reports, 3), Some(vec![0, 1]));
    assert_eq!(cli::replicas_on(&reports, 2), Some(vec![1]));
    assert_eq!(cli::replicas_on(&reports, 4), Some(vec![]));
}

#[test]
fn balance_status_shows_the_switch_and_the_next_step() {
    // Node 1 leads groups 1-3, all on nodes 1-3: a leader should move.
    let mut one = status(1, "leader", 1);
    one.nodes = (1..=3).map(|id| NodeStatus { id, addr: format!("127.0.0.1:710{id}"), region: "eu".into(), state: "up".into() }).collect();
    one.groups = (1..=3).map(|g| GroupStatus { group_id: g, ..one.groups[0].clone() }).collect();
    let reports = vec![NodeStatusReport { addr: "http://127.0.0.1:7101".into(), result: Ok(one.clone()) }];
    let text = cli::balance_status_human(&reports);
    assert!(text.starts_with("balancing: on (topology version 1)"), "{text}");
    assert!(text.contains("next step: move group 1's leader from node 1 to node 2"), "{text}");
    let value = cli::balance_status_json(&reports);
    assert_eq!((value["enabled"].as_bool(), value["next_step"]["kind"].as_str(), value["next_step"]["to"].as_u64()), (Some(true), Some("leader"), Some(2)));
    assert_eq!(value["nodes"].as_array().map(Vec::len), Some(3));
    // Off: the same imbalance is shown as what balancing would do.
    one.balance_enabled = false;
    let reports = vec![NodeStatusReport { addr: "http://127.0.0.1:7101".into(), result: Ok(one.clone()) }];
    let text = cli::balance_status_human(&reports);
    assert!(text.starts_with("balancing: off") && text.contains("with balancing on, the next step would be: move group 1's leader"), "{text}");
    // One group led by each node: balanced.
    for (g, group) in one.groups.iter_mut().enumerate() {
        group.leader = g as u64 + 1;
    }
    let reports = vec![NodeStatusReport { addr: "http://127.0.0.1:7101".into(), result: Ok(one) }];
    assert!(cli::balance_status_human(&reports).contains("balanced: no up node"), "{}", cli::balance_status_human(&reports));
    assert!(cli::balance_status_json(&reports)["next_step"].is_null());
    let none = vec![NodeStatusReport {
        addr: "http://127.0.0.1:7101".into(),
        result: Err(ClientError::Unavailable { outcome_unknown: false, message: "refused".into() }),
    }];
    assert_eq!(cli::balance_status_human(&none), "no node answered\n");
    assert!(cli::balance_status_json(&none)["enabled"].is_null());
}

#[test]
fn shard_list_has_one_row_per_group_from_its_leader() {
    // The follower applied more but the leader's answer is the row.
    let mut follower = status(2, "follower", 1);
    follower.groups[0].applied_index = 99;
    follower.groups.push(GroupStatus { group_id: 2, start_sku: "4".into(), end_sku: String::new(), leader: 0, epoch: 3, ..follower.groups[0].clone() });
    let reports = vec![
        NodeStatusReport { addr: "http://127.0.0.1:7102".into(), result: Ok(follower) },
        NodeStatusReport { addr: "http://127.0.0.1:7101".into(), result: Ok(status(1, "leader", 1)) },
        NodeStatusReport {
            addr: "http://127.0.0.1:7103".into(),
            result: Err(ClientError::Unavailable { outcome_unknown: false, message: "connection refused".into() }),
        },
    ];
    let text = cli::shard_list_human(&reports);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("GROUP") && lines[0].contains("EPOCH") && lines[0].contains("LOAD/S"), "{text}");
    assert_eq!(lines.len(), 4, "header, two groups, the node that did not answer: {text}");
    let load = lines[0].find("LOAD/S").expect("LOAD/S");
    assert_eq!(lines[1].get(load..), Some("412"), "group 1 from its leader: {text}");
    assert!(lines[2].starts_with("2 ") && lines[2].contains("4..") && lines[2].contains(" 3 "), "group 2, unbounded, epoch 3, no leader: {text}");
    assert!(lines[3].starts_with("127.0.0.1:7103: no answer"), "{text}");

    let value = cli::shard_list_json(&reports);
    let shards = value["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    assert_eq!((shards[0]["group_id"].as_u64(), shards[0]["seen_by"].as_u64(), shards[0]["applied_index"].as_u64()), (Some(1), Some(1), Some(98)));
    assert_eq!((shards[1]["epoch"].as_u64(), shards[1]["leader"].as_u64(), shards[1]["seen_by"].as_u64()), (Some(3), Some(0), Some(2)));
    assert_eq!(value["unanswered"], serde_json::json!(["127.0.0.1:7103"]));
}

#[test]
fn tables_align_on_the_widest_cell() {
    let text = cli::render_table(&["A", "LONGER"], &[vec!["wide-cell".into(), "x".into()], vec!["y".into(), "".into()]]);
    assert_eq!(text, "A          LONGER\nwide-cell  x\ny\n");
    assert_eq!(cli::render_key_values(&[("a", "1".into()), ("long", "2".into())]), "a     1\nlong  2\n");
}

#[test]
fn times_render_in_utc() {
    assert_eq!(cli::format_ms_utc(0), "-");
    assert_eq!(cli::format_ms_utc(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    assert_eq!(cli::format_ms_utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
    assert_eq!(cli::format_ms_utc(1_000), "1970-01-01T00:00:01.000Z");
}

#[test]
fn bench_report_json_has_the_documented_keys() {
    let report = stockd::bench::BenchReport {
        workload: stockd::bench::Workload::Uniform,
        clients: 64,
        batch: 1,
        skus: 1000,
        lines: 1,
        duration: Duration::from_secs(2),
        calls: 1000,
        ok: 900,
        refused: 100,
        errors: 4,
        unknown: 1,
        p50_us: 800,
        p99_us: 4000,
        p999_us: 9000,
        max_us: 12000,
        unscored: 0,
        first_error: None,
        violations: vec![],
    };
    let value = cli::bench_json(&report);
    for key in ["ops_per_s", "p50_us", "p99_us", "p999_us", "conserved", "ok", "refused", "errors", "clients", "workload", "duration_s"] {
        assert!(value.get(key).is_some(), "missing {key}: {value}");
    }
    assert_eq!(value["ops_per_s"], 500.0);
    assert_eq!(value["workload"], "uniform");
    assert_eq!(value["conserved"], true);
    assert_eq!(cli::bench_exit_code(&report), 0);
    let broken = stockd::bench::BenchReport { violations: vec!["x: reserved 3 outside [4, 4]".into()], ..report };
    assert_eq!(cli::bench_json(&broken)["conserved"], false);
    assert_eq!(cli::bench_exit_code(&broken), 1);
    assert!(cli::bench_human(&broken).contains("violation: x: reserved 3 outside [4, 4]"));
}

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

/// stockctl against plaintext (`--insecure`) addresses: these tests judge
/// parsing, exit codes and output, not TLS (tests/t40_security.rs does).
fn stockctl(args: &[&str]) -> std::process::Output {
    Process::new(env!("CARGO_BIN_EXE_stockctl"))
        .arg("--insecure")
        .args(args)
        .env_remove("STOCKCTL_ADDR")
        .env_remove("STOCKCTL_CERTS")
        .env_remove("STOCKCTL_ROLE")
        .env_remove("RUST_LOG")
        .output()
        .expect("stockctl runs")
}

#[test]
fn binary_without_certificates_says_how_to_get_them() {
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let output = Process::new(env!("CARGO_BIN_EXE_stockctl"))
        .args(["--addr", &closed_addr(), "status"])
        .current_dir(elsewhere.path())
        .env_remove("STOCKCTL_CERTS")
        .env_remove("STOCKCTL_ROLE")
        .output()
        .expect("stockctl runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--certs") && stderr.contains("--insecure"), "{stderr}");
}

#[test]
fn credentials_come_from_flags_then_env_then_the_dev_directory() {
    use stockd::cli_access::{resolve_access, AccessArgs, Credentials};
    use stockd_proto::roles::Role;
    let none = std::path::Path::new("/nonexistent/dev/certs");
    let dev = tempfile::tempdir().expect("dev dir");
    let args = |f: fn(&mut AccessArgs)| {
        let mut a = AccessArgs::default();
        f(&mut a);
        a
    };
    assert!(resolve_access(&AccessArgs::default(), None, None, none).expect_err("nothing").contains("--insecure"));
    assert_eq!(resolve_access(&AccessArgs::default(), None, None, dev.path()), Ok(Credentials::Dir { dir: dev.path().to_path_buf(), role: None }));
    assert_eq!(
        resolve_access(&AccessArgs::default(), Some("/etc/c"), Some("feed"), dev.path()),
        Ok(Credentials::Dir { dir: "/etc/c".into(), role: Some(Role::Feed) }),
        "the environment before the dev directory"
    );
    let flagged = args(|a| {
        a.certs = Some("/f".into());
        a.role = Some(Role::Operator);
    });
    assert_eq!(resolve_access(&flagged, Some("/etc/c"), Some("feed"), dev.path()), Ok(Credentials::Dir { dir: "/f".into(), role: Some(Role::Operator) }));
    assert_eq!(resolve_access(&args(|a| a.insecure = true), Some("/etc/c"), None, dev.path()), Ok(Credentials::Insecure));
    assert!(
        resolve_access(
            &args(|a| {
                a.insecure = true;
                a.certs = Some("/f".into())
            }),
            None,
            None,
            none
        )
        .is_err(),
        "insecure takes no certificates"
    );
    assert!(resolve_access(&args(|a| a.cert = Some("/c".into())), None, None, none).expect_err("no --ca").contains("--ca"));
    assert!(resolve_access(
        &args(|a| {
            a.ca = Some("/ca".into());
            a.cert = Some("/c".into())
        }),
        None,
        None,
        none
    )
    .expect_err("no --key")
    .contains("--key"));
    assert_eq!(
        resolve_access(&args(|a| a.ca = Some("/ca".into())), None, None, none),
        Ok(Credentials::Files { ca: "/ca".into(), identity: None }),
        "anonymous"
    );
    assert!(resolve_access(&AccessArgs::default(), None, Some("admin"), dev.path()).expect_err("bad env role").contains("STOCKCTL_ROLE"));
    assert!(cli::parse_role("peer").is_err(), "a client is never a peer");
}

#[test]
fn each_command_calls_with_the_least_role_it_needs() {
    use stockd::cli_access::command_rpcs;
    use stockd_proto::roles::{least_client_role, Role};
    let role_of = |args: &[&str]| least_client_role(&command_rpcs(&parse(args).expect("valid").command));
    assert_eq!(role_of(&["status"]), Some(Role::Reader));
    assert_eq!(role_of(&["get", "--sku", "a", "--location", "b"]), Some(Role::Reader));
    assert_eq!(role_of(&["check", "--sku", "a", "--qty", "1", "--context", "checkout"]), Some(Role::Reader));
    assert_eq!(role_of(&["reserve", "--id", "r", "--line", "a:b:1"]), Some(Role::Checkout));
    assert_eq!(role_of(&["commit", "--id", "r"]), Some(Role::Checkout));
    assert_eq!(role_of(&["adjust", "--event-id", "e", "--sku", "a", "--location", "b", "--kind", "receipt", "--qty", "1"]), Some(Role::Feed));
    assert_eq!(role_of(&["model", "status"]), Some(Role::Reader));
    assert_eq!(role_of(&["model", "disable"]), Some(Role::Operator));
    assert_eq!(role_of(&["bench", "--workload", "hot"]), Some(Role::Checkout));
    assert_eq!(role_of(&["bench", "--workload", "check"]), Some(Role::Reader));
    assert_eq!(least_client_role(&stockd::cli_access::bench_stock_rpcs()), Some(Role::Feed));
}

/// An address where nothing listens: a port bound then released.
fn closed_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr.to_string()
}

#[test]
fn binary_exits_2_on_a_malformed_line() {
    let output = stockctl(&["--addr", &closed_addr(), "reserve", "--id", "r1", "--line", "sku-only"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--line"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn binary_exits_2_on_more_skus_than_one_check_batch_holds() {
    let addr = closed_addr();
    let skus: Vec<String> = (0..=stockd_proto::limits::BATCH_CHECKS_MAX).map(|i| format!("sku-{i}")).collect();
    let mut args = vec!["--addr", addr.as_str(), "check", "--qty", "1", "--context", "product-page"];
    for sku in &skus {
        args.extend(["--sku", sku.as_str()]);
    }
    let output = stockctl(&args);
    assert_eq!(output.status.code(), Some(2), "refused before any call (nothing listens, which would be exit 3)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end(), "error: --sku: at most 256 SKUs in one check");
    assert!(output.stdout.is_empty());
}

#[test]
fn binary_exits_3_when_no_node_answers() {
    let addr = closed_addr();
    let started = std::time::Instant::now();
    let output = stockctl(&["--addr", &addr, "--timeout", "200ms", "reserve", "--id", "r1", "--line", "a:b:1"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one error line: {stderr}");
    assert!(stderr.starts_with("error: unavailable:"), "a refused connection never sent the write: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by the deadline");

    let output = stockctl(&["--addr", &addr, "--timeout", "200ms", "--json", "status"]);
    assert_eq!(output.status.code(), Some(3));
    let value: Value = serde_json::from_slice(&output.stdout).expect("status JSON");
    assert_eq!(value["responses"][0]["status"], Value::Null);
    assert!(value["responses"][0]["error"].is_string());
}

// ---------------------------------------------------------------------------
// The probable path: check, rank, model
// ---------------------------------------------------------------------------

#[test]
fn check_needs_a_context_and_a_positive_quantity() {
    let cli = parse(&["check", "--sku", "a", "--qty", "2", "--context", "checkout"]).expect("parses");
    let Command::Check(args) = cli.command else { panic!("not check") };
    assert_eq!((args.qty, args.context, args.location), (2, cli::ContextArg::Checkout, None));
    assert_eq!(args.consistency.consistency, Consistency::Any, "availability reads the local replica by default");
    assert!(parse(&["check", "--sku", "a", "--qty", "2"]).is_err(), "context is required");
    assert!(parse(&["check", "--sku", "a", "--qty", "0", "--context", "product-page"]).is_err(), "qty 0 is refused");
    assert!(parse(&["check", "--sku", "a", "--qty", "1", "--context", "cart"]).is_err());
}

#[test]
fn model_subcommands_parse() {
    let cli = parse(&["model", "candidate", "v2", "--ab-percent", "10", "--shadow"]).expect("parses");
    let Command::Model(cli::ModelCommand::Candidate { version, ab_percent, shadow }) = cli.command else { panic!("not candidate") };
    assert_eq!((version.as_deref(), ab_percent, shadow), (Some("v2"), 10, true));
    assert!(parse(&["model", "candidate", "v2", "--ab-percent", "101"]).is_err());
    assert!(matches!(parse(&["model", "rollback"]).expect("parses").command, Command::Model(cli::ModelCommand::Rollback)));
    assert!(parse(&["model", "promote"]).is_err(), "promote names a version");
}

#[test]
fn check_json_has_the_documented_keys_and_null_without_a_score() {
    let scored = stockd::proto::v1::CheckAvailabilityResponse {
        decision: stockd::proto::v1::Decision::LowStock as i32,
        p_sellable: 0.75,
        scored: true,
        atp: 3,
        staleness_ms: 12,
        model_version: "v1".into(),
        model_variant: "primary".into(),
        rules: vec!["LOW_ATP".into()],
        location: "dc-1".into(),
        ..Default::default()
    };
    let value = cli::check_json("sku-a", &scored);
    for key in ["decision", "p_sellable", "atp", "staleness_ms", "model_version", "rules", "degraded"] {
        assert!(value.get(key).is_some(), "missing {key}: {value}");
    }
    assert_eq!(value["decision"], "LOW_STOCK");
    assert_eq!(value["p_sellable"], 0.75);
    assert_eq!(value["rules"], serde_json::json!(["LOW_ATP"]));
    let unscored =
        stockd::proto::v1::CheckAvailabilityResponse { scored: false, model_version: String::new(), degraded: vec!["MODEL_DISABLED".into()], ..scored.clone() };
    let value = cli::check_json("sku-a", &unscored);
    assert_eq!(value["p_sellable"], Value::Null, "no score is not a probability of 0");
    assert_eq!(value["model_version"], Value::Null);
    assert_eq!(value["degraded"], serde_json::json!(["MODEL_DISABLED"]));
    let human = cli::check_human("sku-a", &unscored);
    assert!(human.contains("no model score") && human.contains("MODEL_DISABLED"), "{human}");

    // Several SKUs: an array in --sku order, blocks apart in human form.
    let skus = vec!["sku-a".to_owned(), "sku-b".to_owned()];
    let value = cli::check_batch_json(&skus, &[scored.clone(), unscored.clone()]);
    assert_eq!((value[0]["sku"].as_str(), value[1]["sku"].as_str()), (Some("sku-a"), Some("sku-b")), "{value}");
    assert_eq!((value[0]["p_sellable"].clone(), value[1]["p_sellable"].clone()), (serde_json::json!(0.75), Value::Null));
    let human = cli::check_batch_human(&skus, &[scored, unscored]);
    assert!(human.contains("sku-a") && human.contains("sku-b") && human.contains("\n\n"), "{human}");
}

#[test]
fn check_takes_several_skus_up_to_a_batch() {
    let cli = parse(&["check", "--sku", "a", "--sku", "b", "--qty", "1", "--context", "product-page"]).expect("parses");
    let Command::Check(args) = cli.command else { panic!("not check") };
    assert_eq!(args.sku, vec!["a", "b"]);
    assert!(parse(&["check", "--qty", "1", "--context", "product-page"]).is_err(), "a SKU is required");
    let mut argv = vec!["check", "--addr", "127.0.0.1:1", "--qty", "1", "--context", "checkout"];
    for _ in 0..=stockd_proto::limits::BATCH_CHECKS_MAX {
        argv.extend(["--sku", "s"]);
    }
    let output = stockctl(&argv);
    assert_eq!(output.status.code(), Some(2), "more SKUs than a batch is a usage error: {output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--sku"), "{output:?}");
}

#[test]
fn model_operations_refused_by_a_node_exit_1_and_unreachable_nodes_exit_3() {
    let ok = || Ok(stockd::proto::v1::ModelStatusResponse { status_json: "{}".into(), node_id: 1 });
    let refused = ClientError::Rpc { code: tonic::Code::NotFound, message: "unknown model version v9".into() };
    let down = ClientError::Unavailable { outcome_unknown: false, message: "connection refused".into() };
    assert_eq!(cli::model_exit_code(&[("a".into(), ok()), ("b".into(), ok())]), cli::EXIT_DONE);
    assert_eq!(cli::model_exit_code(&[("a".into(), ok()), ("b".into(), Err(refused))]), cli::EXIT_REFUSED);
    assert_eq!(cli::model_exit_code(&[("a".into(), Err(down))]), cli::EXIT_UNAVAILABLE);
}
