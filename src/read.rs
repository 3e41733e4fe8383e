//! What a read asks and what it answers: the types a node serves locally and
//! forwards to a replica over the peer plane.

use raft::NodeId;
use serde::Deserialize;
use serde::Serialize;
use storage::model::Cart;
use storage::model::GroupId;
use storage::model::Position;
use storage::model::PositionKey;
use storage::model::Reservation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    Strong,
    Bounded { max_staleness_ms: u64 },
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadQuery {
    Position(PositionKey),
    Reservation(String),
    /// What the risk path reads: one location of a SKU, or every location
    /// (at most `locations_max`, in location order), each position without
    /// its audit trail and feed sequences ([`Position::without_history`]).
    SkuPositions {
        sku: String,
        location: Option<String>,
        locations_max: usize,
    },
    /// The metadata group's topology, when its version is above
    /// `newer_than` or it is not bootstrapped yet (a node's copy asks only
    /// for what it lacks).
    Topology {
        newer_than: u64,
    },
    /// The group's range as its state machine holds it.
    Range,
    /// A key splitting the group's SKUs in two halves
    /// (`Inventory::middle_sku`).
    SplitKey,
    /// The group's whole state, when it is frozen for a merge (bounded by
    /// `storage::split::MERGE_BYTES_MAX`); else nothing.
    Frozen,
}

impl ReadQuery {
    /// The SKU the read is about, if it names one: the replica must hold it.
    pub fn sku(&self) -> Option<&str> {
        match self {
            ReadQuery::Position(key) => Some(&key.sku),
            ReadQuery::SkuPositions { sku, .. } => Some(sku),
            ReadQuery::Reservation(_) | ReadQuery::Topology { .. } | ReadQuery::Range | ReadQuery::SplitKey | ReadQuery::Frozen => None,
        }
    }

    /// True for a read of the group's records (positions, reservations,
    /// carts), which a group frozen for a merge does not answer: its
    /// records may be its left neighbour's already.
    pub fn reads_records(&self) -> bool {
        matches!(self, ReadQuery::Position(_) | ReadQuery::Reservation(_) | ReadQuery::SkuPositions { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadAnswer {
    pub position: Option<Position>,
    /// For `Reservation`: a plain reservation held in this group (never a
    /// cart's intent).
    pub reservation: Option<Reservation>,
    /// For `Reservation`: the home record of a cart homed in this group.
    pub cart: Option<Cart>,
    /// For `Reservation` at the id's home: the group its one-group
    /// reservation lives in, when that is another group.
    pub located: Option<GroupId>,
    /// For `SkuPositions`: (location, position) pairs.
    pub positions: Vec<(String, Position)>,
    /// For `Topology`: the topology, unless the asker's copy is as new.
    pub topology: Option<Box<storage::topology::Topology>>,
    /// The range as the replica that answered holds it (every answer).
    pub range: Option<storage::model::RangeDesc>,
    /// For `SplitKey`.
    pub split_key: Option<String>,
    /// For `Frozen`: the frozen state (an `InventorySnapshot` encoded by
    /// `storage::codec`) and the index of its freeze.
    pub frozen: Option<(u64, Vec<u8>)>,
    /// For `Range`: the positions the group holds and the commands/s its
    /// replica here proposed over the load window (a leader's figure).
    pub position_count: u64,
    pub load_cmds_per_s: u64,
    pub applied_index: u64,
    pub staleness_ms: u64,
    pub served_by: NodeId,
    pub leader: Option<NodeId>,
}
