//! The network of a test. In namespace mode every node runs in its own
//! network namespace (`sj-nN`), joined to a bridge (`sjbr0`) in the root
//! namespace through a veth pair; the harness reaches the nodes through the
//! bridge. Partitions are nftables rules in the receiving node's namespace
//! that drop packets from the cut-off peers: real packet loss, so
//! connections hang and time out as they would across a broken network.
//! In loopback mode (no namespaces) the nodes share 127.0.0.1 and there are
//! no partitions.
//!
//! The addresses live only on this bridge inside this machine.

use std::process::Stdio;

use anyhow::Context;

use crate::rng::Rng;

const BRIDGE: &str = "sjbr0";
const SUBNET: &str = "10.77.0";
const TABLE: &str = "jepsen";

/// Network namespaces of the nodes.
#[derive(Debug)]
pub struct Net {
    ids: Vec<u64>,
}

fn ns(id: u64) -> String {
    format!("sj-n{id}")
}

/// The address of node `id` inside its namespace.
pub fn node_ip(id: u64) -> String {
    format!("{SUBNET}.{id}")
}

async fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).output().await.with_context(|| format!("run {}", args.join(" ")))?;
    anyhow::ensure!(out.status.success(), "{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

async fn run_quiet(args: &[&str]) {
    let _ = tokio::process::Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
}

impl Net {
    /// Creates the bridge, namespaces and veth pairs for nodes `ids`
    /// (removing leftovers of an earlier run first).
    pub async fn setup(ids: &[u64]) -> anyhow::Result<Net> {
        Net::teardown_ids(ids).await;
        run(&["ip", "link", "add", BRIDGE, "type", "bridge"]).await?;
        run(&["ip", "addr", "add", &format!("{SUBNET}.254/24"), "dev", BRIDGE]).await?;
        run(&["ip", "link", "set", BRIDGE, "up"]).await?;
        for &id in ids {
            let (host, peer, name) = (format!("sjv{id}"), format!("sjp{id}"), ns(id));
            run(&["ip", "netns", "add", &name]).await?;
            run(&["ip", "link", "add", &host, "type", "veth", "peer", "name", &peer]).await?;
            run(&["ip", "link", "set", &peer, "netns", &name]).await?;
            run(&["ip", "link", "set", &host, "master", BRIDGE]).await?;
            run(&["ip", "link", "set", &host, "up"]).await?;
            run(&["ip", "netns", "exec", &name, "ip", "addr", "add", &format!("{}/24", node_ip(id)), "dev", &peer]).await?;
            run(&["ip", "netns", "exec", &name, "ip", "link", "set", &peer, "up"]).await?;
            run(&["ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up"]).await?;
            run(&["ip", "netns", "exec", &name, "nft", "add", "table", "inet", TABLE]).await?;
            run(&["ip", "netns", "exec", &name, "nft", "add", "chain", "inet", TABLE, "input", "{ type filter hook input priority 0 ; policy accept ; }"])
                .await?;
        }
        Ok(Net { ids: ids.to_vec() })
    }

    /// Whether namespaces work here (root, iproute2 and nftables present).
    pub async fn available() -> bool {
        let probe = "sj-probe";
        run_quiet(&["ip", "netns", "del", probe]).await;
        let ok = run(&["ip", "netns", "add", probe]).await.is_ok() && run(&["ip", "netns", "exec", probe, "nft", "list", "tables"]).await.is_ok();
        run_quiet(&["ip", "netns", "del", probe]).await;
        ok
    }

    pub fn netns(id: u64) -> String {
        ns(id)
    }

    /// Drops the packets of every `(from, to)` pair at `to`.
    pub async fn apply(&self, drops: &[(u64, u64)]) -> anyhow::Result<()> {
        for (from, to) in drops {
            run(&["ip", "netns", "exec", &ns(*to), "nft", "add", "rule", "inet", TABLE, "input", "ip", "saddr", &node_ip(*from), "drop"]).await?;
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub async fn heal(&self) -> anyhow::Result<()> {
        for id in &self.ids {
            run(&["ip", "netns", "exec", &ns(*id), "nft", "flush", "chain", "inet", TABLE, "input"]).await?;
        }
        Ok(())
    }

    pub async fn teardown(&self) {
        Net::teardown_ids(&self.ids).await;
    }

    async fn teardown_ids(ids: &[u64]) {
        for &id in ids {
            run_quiet(&["ip", "link", "del", &format!("sjv{id}")]).await;
            run_quiet(&["ip", "netns", "del", &ns(id)]).await;
        }
        run_quiet(&["ip", "link", "del", BRIDGE]).await;
    }
}

/// A seeded partition: its name and the `(from, to)` pairs whose packets
/// are dropped.
pub fn choose_partition(rng: &mut Rng, ids: &[u64], leader: u64) -> (String, Vec<(u64, u64)>) {
    let mut drops = Vec::new();
    let cut = |a: &[u64], b: &[u64], drops: &mut Vec<(u64, u64)>| {
        for x in a {
            for y in b {
                drops.push((*x, *y));
                drops.push((*y, *x));
            }
        }
    };
    let others: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
    match rng.below(4) {
        0 => {
            cut(&[leader], &others, &mut drops);
            ("isolate-leader".into(), drops)
        }
        1 => {
            let mut shuffled = ids.to_vec();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let half = shuffled.len() / 2;
            cut(&shuffled[..half], &shuffled[half..], &mut drops);
            ("random-halves".into(), drops)
        }
        2 => {
            // Two halves that cannot talk, except through one bridge node
            // that talks to both.
            let mut shuffled = ids.to_vec();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let half = rest.len() / 2;
            cut(&rest[..half], &rest[half..], &mut drops);
            (format!("bridge-via-{bridge}"), drops)
        }
        _ => {
            // One-way: nothing reaches the leader; its own packets still go out.
            for o in &others {
                drops.push((*o, leader));
            }
            ("one-way-into-leader".into(), drops)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_seeded_and_never_cut_a_node_from_itself() {
        let ids = [1, 2, 3, 4, 5];
        for seed in 0..50 {
            let a = choose_partition(&mut Rng::new(seed), &ids, 2);
            let b = choose_partition(&mut Rng::new(seed), &ids, 2);
            assert_eq!(a, b, "same seed, same partition");
            assert!(!a.1.is_empty());
            assert!(a.1.iter().all(|(x, y)| x != y && ids.contains(x) && ids.contains(y)));
        }
    }
}
