//! The documented example configuration parses and validates, and sets the
//! same values as the defaults (so the documentation cannot drift).

use std::path::Path;

use stockd::config::parse_peers;
use stockd::config::FileConfig;
use stockd::config::Overrides;

#[test]
fn example_config_is_valid_and_matches_the_defaults() {
    let path = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("stockd.example.toml");
    let file = FileConfig::load(&path).expect("example parses");
    let as_toml = toml::to_string(&file).expect("serializes");
    let defaults = toml::to_string(&FileConfig::default()).expect("serializes");
    assert_eq!(as_toml, defaults, "stockd.example.toml must show the defaults");
    let peers = parse_peers("1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103").expect("peers");
    let config = file
        .validate(Overrides { node_id: Some(2), peers: Some(peers), data_dir: Some("/tmp/x".into()), insecure: true, ..Default::default() })
        .expect("valid");
    assert_eq!(config.shard_map.ranges.len(), 1, "a new cluster starts with one range per region");
}
