//! `stockctl`: the operator CLI of stockd. Parsing, exit codes and output
//! formats live in `stockd::cli`; this file wires them to the client.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use raft::group::wall_clock_ms;
use serde_json::Value;

use stockd::bench::{self, BenchClients, BenchConfig};
use stockd::cli::{self, Cli, Command, Transition};
use stockd::cli_access::{self, Credentials};
use stockd_client::{Client, ClientConfig, ClientError, ModelOp};
use stockd_proto::limits::BATCH_CHECKS_MAX;
use stockd_proto::v1::{
    AdjustRequest, AdjustmentKind, CheckAvailabilityBatchRequest, CheckAvailabilityRequest, GetPositionRequest, RankFulfillmentRequest, RequestContext,
    ReserveRequest,
};

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit 2 (clap's default); --help and --version exit 0.
    let cli = Cli::parse();
    init_tracing();
    ExitCode::from(run(cli).await)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn run(cli: Cli) -> u8 {
    if matches!(cli.command, Command::Roles) {
        if cli.json {
            emit_json(&cli_access::roles_json());
        } else {
            emit(&cli_access::roles_human());
        }
        return cli::EXIT_DONE;
    }
    let env_addr = std::env::var(cli::ADDR_ENV).ok();
    let addrs = match cli::resolve_addrs(&cli.addr, env_addr.as_deref()) {
        Ok(addrs) => addrs,
        Err(message) => return fail_usage(&message),
    };
    let env_certs = std::env::var(cli_access::CERTS_ENV).ok();
    let env_role = std::env::var(cli_access::ROLE_ENV).ok();
    let credentials =
        match cli_access::resolve_access(&cli_access::AccessArgs::of(&cli), env_certs.as_deref(), env_role.as_deref(), Path::new(cli_access::DEV_CERTS_DIR)) {
            Ok(credentials) => credentials,
            Err(message) => return fail_usage(&message),
        };
    let config = ClientConfig {
        connect_timeout: cli.timeout.min(Duration::from_secs(1)),
        request_timeout: cli.timeout,
        total_deadline: cli.timeout.saturating_mul(2),
        // A one-shot command would spend a Status call learning leaders it
        // uses once; only the bench's many calls gain from leader routing.
        routes_max_age: if matches!(cli.command, Command::Bench(_)) { ClientConfig::default().routes_max_age } else { None },
        ..ClientConfig::default()
    };
    let client = match client_for(&addrs, &config, &credentials, &cli_access::command_rpcs(&cli.command)) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let json = cli.json;
    match cli.command {
        Command::Shard(cli::ShardCommand::List) => {
            let reports = client.status_all().await;
            if json {
                emit_json(&cli::shard_list_json(&reports));
            } else {
                emit(&cli::shard_list_human(&reports));
            }
            cli::status_exit_code(&reports)
        }
        Command::Node(cli::NodeCommand::List) => {
            let reports = client.status_all().await;
            if json {
                emit_json(&cli::node_list_json(&reports));
            } else {
                emit(&cli::node_list_human(&reports));
            }
            cli::status_exit_code(&reports)
        }
        Command::Balance(cli::BalanceCommand::Status) => {
            let reports = client.status_all().await;
            if json {
                emit_json(&cli::balance_status_json(&reports));
            } else {
                emit(&cli::balance_status_human(&reports));
            }
            cli::status_exit_code(&reports)
        }
        Command::Balance(on_off @ (cli::BalanceCommand::On | cli::BalanceCommand::Off)) => {
            match client.set_balance(matches!(on_off, cli::BalanceCommand::On)).await {
                Ok(set) => {
                    if json {
                        emit_json(&cli::balance_set_json(&set));
                    } else {
                        emit(&cli::balance_set_human(&set));
                    }
                    cli::EXIT_DONE
                }
                Err(error) => fail(&error),
            }
        }
        Command::Node(cli::NodeCommand::Drain(args)) => match client.drain_node(args.node).await {
            Ok(_) => drain_wait(&client, args.node, args.wait, json).await,
            Err(error) => fail(&error),
        },
        Command::Node(cli::NodeCommand::Remove(args)) => match client.remove_node(args.node).await {
            Ok(removed) => {
                let node = removed.node.unwrap_or_default();
                if json {
                    emit_json(&serde_json::json!({ "node": { "id": node.id, "addr": node.addr, "region": node.region, "state": node.state } }));
                } else {
                    emit(&format!("node {} ({}, region {}) is {}: its id is never given to another node\n", node.id, node.addr, node.region, node.state));
                }
                cli::EXIT_DONE
            }
            Err(error) => fail(&error),
        },
        Command::Shard(cli::ShardCommand::Split(args)) => match client.split_shard(args.group, args.at.as_deref().unwrap_or_default()).await {
            Ok(split) => {
                if json {
                    emit_json(&cli::shard_split_json(&split));
                } else {
                    emit(&cli::shard_split_human(&split));
                }
                cli::EXIT_DONE
            }
            Err(error) => fail(&error),
        },
        Command::Shard(cli::ShardCommand::Move(args)) => match client.move_shard(args.group, args.from, args.to).await {
            Ok(moved) => {
                if json {
                    emit_json(&cli::shard_move_json(&moved));
                } else {
                    emit(&cli::shard_move_human(&moved));
                }
                cli::EXIT_DONE
            }
            Err(error) => fail(&error),
        },
        Command::Shard(cli::ShardCommand::Merge(args)) => match client.merge_shard(args.group).await {
            Ok(merge) => {
                if json {
                    emit_json(&cli::shard_merge_json(&merge));
                } else {
                    emit(&cli::shard_merge_human(&merge));
                }
                cli::EXIT_DONE
            }
            Err(error) => fail(&error),
        },
        Command::Status => {
            let reports = client.status_all().await;
            if json {
                emit_json(&cli::status_json(&reports));
            } else {
                emit(&cli::status_human(&reports));
            }
            cli::status_exit_code(&reports)
        }
        Command::Adjust(args) => {
            let kind = AdjustmentKind::from(args.kind);
            let request = AdjustRequest {
                event_id: args.event_id.clone(),
                sku: args.sku,
                location: args.location,
                kind: kind as i32,
                quantity: args.qty,
                reason: args.reason,
                source: args.source,
                source_seq: args.seq.unwrap_or_else(wall_clock_ms),
                observed_at_ms: args.observed_at_ms.unwrap_or(0),
            };
            match client.adjust(request).await {
                Ok(response) => {
                    if json {
                        emit_json(&cli::adjust_json(&response));
                    } else {
                        emit(&cli::adjust_human(&args.event_id, kind, args.qty, &response));
                    }
                    cli::exit_code_for_outcome(response.outcome())
                }
                Err(error) => fail(&error),
            }
        }
        Command::Reserve(args) => {
            if args.lines.len() > cli::LINES_MAX {
                return fail_usage(&format!("invalid --line: at most {} lines per reservation", cli::LINES_MAX));
            }
            let ttl_ms = u64::try_from(args.ttl.as_millis()).unwrap_or(u64::MAX);
            let risk_gate = args.risk_gate.then(stockd_proto::v1::RiskGate::default);
            let lines = args.lines.clone();
            let request = ReserveRequest { reservation_id: args.id.clone(), lines: args.lines, ttl_ms, risk_gate };
            match client.reserve(request).await {
                Ok(response) => {
                    if json {
                        emit_json(&cli::reserve_json(&response));
                    } else {
                        emit(&cli::reserve_human(&args.id, &lines, &response));
                    }
                    cli::exit_code_for_outcome(response.outcome())
                }
                Err(error) => fail(&error),
            }
        }
        Command::Commit(args) => transition(&client, Transition::Commit, &args.id, json).await,
        Command::Release(args) => transition(&client, Transition::Release, &args.id, json).await,
        Command::Fulfill(args) => transition(&client, Transition::Fulfill, &args.id, json).await,
        Command::Cancel(args) => transition(&client, Transition::Cancel, &args.id, json).await,
        Command::Reservation(args) => match client.get_reservation(&args.id).await {
            Ok(response) => {
                if json {
                    emit_json(&cli::get_reservation_json(&args.id, &response));
                } else {
                    emit(&cli::get_reservation_human(&args.id, &response));
                }
                cli::get_reservation_exit_code(&response)
            }
            Err(error) => fail(&error),
        },
        Command::Get(args) => {
            let request = GetPositionRequest {
                sku: args.sku.clone(),
                location: args.location.clone(),
                consistency: args.consistency.consistency as i32,
                max_staleness_ms: args.consistency.max_staleness_ms,
            };
            match client.get_position(request).await {
                Ok(response) => {
                    if json {
                        emit_json(&cli::position_json(&args.sku, &args.location, &response));
                    } else {
                        emit(&cli::position_human(&args.sku, &args.location, &response));
                    }
                    cli::EXIT_DONE
                }
                Err(error) => fail(&error),
            }
        }
        Command::Check(args) => {
            if args.sku.len() > BATCH_CHECKS_MAX {
                return fail_usage(&format!("--sku: at most {} SKUs in one check", BATCH_CHECKS_MAX));
            }
            let requests: Vec<CheckAvailabilityRequest> = args
                .sku
                .iter()
                .map(|sku| CheckAvailabilityRequest {
                    sku: sku.clone(),
                    location: args.location.clone().unwrap_or_default(),
                    quantity: args.qty,
                    context: match args.context {
                        cli::ContextArg::ProductPage => RequestContext::ProductPage as i32,
                        cli::ContextArg::Checkout => RequestContext::Checkout as i32,
                    },
                    consistency: args.consistency.consistency as i32,
                    max_staleness_ms: args.consistency.max_staleness_ms,
                    promo: args.promo,
                    route_key: args.route_key.clone(),
                    explain: false,
                })
                .collect();
            if let [request] = requests.as_slice() {
                return match client.check_availability(request.clone()).await {
                    Ok(response) => {
                        if json {
                            emit_json(&cli::check_json(&args.sku[0], &response));
                        } else {
                            emit(&cli::check_human(&args.sku[0], &response));
                        }
                        cli::EXIT_DONE
                    }
                    Err(error) => fail(&error),
                };
            }
            match client.check_availability_batch(CheckAvailabilityBatchRequest { checks: requests }).await {
                Ok(response) => {
                    if json {
                        emit_json(&cli::check_batch_json(&args.sku, &response.answers));
                    } else {
                        emit(&cli::check_batch_human(&args.sku, &response.answers));
                    }
                    cli::EXIT_DONE
                }
                Err(error) => fail(&error),
            }
        }
        Command::Rank(args) => {
            let request = RankFulfillmentRequest { sku: args.sku, quantity: args.qty, destination_region: args.region, route_key: String::new() };
            match client.rank_fulfillment(request).await {
                Ok(response) => {
                    if json {
                        emit_json(&cli::rank_json(&response));
                    } else {
                        emit(&cli::rank_human(&response));
                    }
                    cli::EXIT_DONE
                }
                Err(error) => fail(&error),
            }
        }
        Command::Model(command) => {
            let op = match command {
                cli::ModelCommand::Status => ModelOp::Status,
                cli::ModelCommand::Load { dir } => ModelOp::Load { dir },
                cli::ModelCommand::Promote { version } => ModelOp::Promote { version },
                cli::ModelCommand::Rollback => ModelOp::Rollback,
                cli::ModelCommand::Candidate { version, ab_percent, shadow } => ModelOp::Candidate { version: version.unwrap_or_default(), ab_percent, shadow },
                cli::ModelCommand::Disable => ModelOp::Disabled { disabled: true },
                cli::ModelCommand::Enable => ModelOp::Disabled { disabled: false },
            };
            // Every node serves its own models: apply to each.
            let addrs = client.addrs();
            let results = futures::future::join_all(addrs.iter().map(|addr| client.model_op_on(addr, &op))).await;
            let reports: Vec<_> = addrs.into_iter().zip(results).collect();
            if json {
                emit_json(&cli::model_json(&reports));
            } else {
                emit(&cli::model_human(&reports));
            }
            cli::model_exit_code(&reports)
        }
        Command::Roles => unreachable!("answered before any client is made"),
        Command::Bench(args) => {
            let config = BenchConfig {
                workload: args.workload,
                skus: args.skus,
                clients: args.clients,
                duration: args.duration,
                location: args.location,
                batch: args.batch,
                lines: args.lines,
                sku_prefix: args.sku_prefix,
                report_every: args.report_every,
            };
            let stock = match client_for(&addrs, client.config(), &credentials, &cli_access::bench_stock_rpcs()) {
                Ok(stock) => stock,
                Err(code) => return code,
            };
            match bench::run(&BenchClients { stock, load: client.clone() }, &config).await {
                Ok(report) => {
                    if json {
                        emit_json(&cli::bench_json(&report));
                    } else {
                        emit(&cli::bench_human(&report));
                    }
                    cli::bench_exit_code(&report)
                }
                Err(error) => {
                    eprintln!("{}", cli::bench_error_line(&error));
                    cli::bench_error_exit_code(&error)
                }
            }
        }
    }
}

/// A client for calls that make `rpcs`, with the certificate of the role
/// they need; on failure, the exit code (the message is printed).
fn client_for(addrs: &[String], config: &ClientConfig, credentials: &Credentials, rpcs: &[&str]) -> Result<Client, u8> {
    let tls = cli_access::tls_for(credentials, rpcs).map_err(|message| fail_usage(&message))?;
    Client::with_config(addrs, ClientConfig { tls, ..config.clone() }).map_err(|error| fail(&error))
}

async fn transition(client: &Client, transition: Transition, reservation_id: &str, json: bool) -> u8 {
    let answer = match transition {
        Transition::Commit => client.commit(reservation_id).await,
        Transition::Release => client.release(reservation_id).await,
        Transition::Fulfill => client.fulfill(reservation_id).await,
        Transition::Cancel => client.cancel(reservation_id).await,
    };
    match answer {
        Ok(response) => {
            if json {
                emit_json(&cli::reservation_response_json(&response));
            } else {
                emit(&cli::transition_human(transition, reservation_id, &response));
            }
            cli::exit_code_for_outcome(response.outcome())
        }
        Err(error) => fail(&error),
    }
}

fn fail(error: &ClientError) -> u8 {
    eprintln!("{}", cli::error_line(error));
    cli::exit_code_for_error(error)
}

fn fail_usage(message: &str) -> u8 {
    eprintln!("error: {message}");
    cli::EXIT_USAGE
}

/// Writes to stdout, ignoring a closed pipe (`stockctl status | head`).
fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn emit_json(value: &Value) {
    emit(&format!("{value}\n"));
}

/// `stockctl node drain`: waits until node `id` holds no replica, saying
/// which groups are left each time that changes.
async fn drain_wait(client: &stockd_client::Client, id: u64, wait: std::time::Duration, json: bool) -> u8 {
    let deadline = std::time::Instant::now() + wait;
    let mut last: Option<Vec<u32>> = None;
    loop {
        let left = cli::replicas_on(&client.status_all().await, id);
        if let Some(groups) = &left {
            if groups.is_empty() {
                if json {
                    emit_json(&serde_json::json!({ "node_id": id, "state": "draining", "replicas": [], "drained": true }));
                } else {
                    emit(&format!("node {id} drained: it holds no replica; `stockctl node remove {id}` forgets it\n"));
                }
                return cli::EXIT_DONE;
            }
            if !json && last.as_ref() != Some(groups) {
                let list = groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
                emit(&format!("node {id} draining: {} replica(s) left (groups {list})\n", groups.len()));
            }
            last = left;
        }
        if std::time::Instant::now() >= deadline {
            let Some(groups) = last else {
                // No node answered a status while we waited: nothing is known.
                if json {
                    emit_json(&serde_json::json!({ "node_id": id, "state": "draining", "replicas": null, "drained": false }));
                } else {
                    emit(&format!("node {id} is marked draining; no node answered a status within {} s, so what is left is unknown\n", wait.as_secs()));
                }
                return cli::EXIT_UNAVAILABLE;
            };
            if json {
                emit_json(&serde_json::json!({ "node_id": id, "state": "draining", "replicas": groups, "drained": false }));
            } else {
                emit(&format!(
                    "node {id} is still draining ({} replica(s) left); the metadata group's leader goes on, `stockctl node list` shows it\n",
                    groups.len()
                ));
            }
            return cli::EXIT_UNAVAILABLE;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
