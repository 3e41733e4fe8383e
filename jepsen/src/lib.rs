//! Fault-injection harness for stockd; see README.md.
