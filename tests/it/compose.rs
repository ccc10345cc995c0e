//! `compose.yaml` cannot be run here (no container engine). What can be
//! checked: it parses, and every flag and variable it gives the gateway is
//! one the binary accepts (`--help` and a dry parse).

use std::process::Command;

use crate::support::process::BIN;

#[test]
fn compose_file_parses_and_its_flags_are_the_binarys() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/compose.yaml")).unwrap();
    let doc: serde_json::Value = serde_yaml_ng::from_str(&text).expect("compose.yaml is YAML");
    let node = &doc["services"]["node1"];
    let command: Vec<String> = node["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(doc["services"]["node2"].is_object() && doc["services"]["node3"].is_object());
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in command.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "{flag} is not a flag of the binary"
        );
    }
    for (var, _) in node["environment"].as_object().unwrap() {
        assert!(
            help.contains(var.as_str()),
            "{var} is not a variable of the binary"
        );
    }
    let conf =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf")).unwrap();
    for needed in [
        "proxy_buffering off",
        "proxy_read_timeout 1h",
        "proxy_http_version 1.1",
    ] {
        assert!(conf.contains(needed), "{needed}");
    }
}
