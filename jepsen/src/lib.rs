//! Fault-injection harness for stockd (Jepsen's method): real node
//! processes, a nemesis, a recorded history and independent checkers. See
//! README.md.

pub mod carts;
pub mod checks;
pub mod cluster;
pub mod history;
pub mod linear;
pub mod model;
pub mod nemesis;
pub mod net;
pub mod plot;
pub mod rng;
pub mod runner;
pub mod workload;
