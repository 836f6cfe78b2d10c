//! CI smoke test of the `compare` binary: a quick run of the floor and SPSC sections
//! (a few seconds) must produce valid JSON with the expected keys, leave nothing in
//! /dev/shm, and say what it skipped. No timing is asserted (the machine is shared).

use std::process::Command;

#[test]
fn quick_floor_and_spsc_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_compare"))
        .args(["--quick", "--only", "spsc,floor", "--json", "-"])
        .output()
        .expect("run compare");
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON on stdout");
    for k in [
        "command",
        "machine",
        "repeats",
        "figures",
        "ratios",
        "linkmodel",
        "skipped",
        "wall_s",
    ] {
        assert!(v.get(k).is_some(), "missing key {k}");
    }
    let figs = v["figures"].as_array().expect("figures");
    for key in [
        "floor.rtt1",
        "floor.rtt2",
        "floor.rttmsg",
        "floor.rttshared",
        "copy.65536.nt",
        "spsc.zh_chunk",
        "spsc.rtrb",
        "spsc.array_queue",
    ] {
        let f = figs
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("figure {key} missing"));
        for k in [
            "median",
            "min",
            "max",
            "valid",
            "void",
            "placement",
            "samples",
        ] {
            assert!(f.get(k).is_some(), "{key}: missing {k}");
        }
    }
    let ratios = v["ratios"].as_array().expect("ratios");
    assert!(ratios
        .iter()
        .any(|r| r["spec"]["num"] == "spsc.zh_chunk" && r["spec"]["den"] == "spsc.rtrb"));
    let skipped = v["skipped"].as_array().expect("skipped");
    assert!(skipped.iter().any(|s| s
        .as_str()
        .is_some_and(|s| s.to_lowercase().contains("dpdk"))));
    // Every scratch file of this run is gone.
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("zerohop-compare-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}
