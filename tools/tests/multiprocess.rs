//! Two real processes share a /dev/shm window and move at least 10 million entries
//! through each ring mode, with sequence numbers and payload checks: 0 lost, 0
//! reordered, 0 duplicated, 0 corrupted.
//!
//! Both processes poll in yield mode (so the test harness and the other side still get
//! CPU time on a 2-core machine) and the tests are serialised with a lock.

use std::process::{Command, Stdio};
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

const ENTRIES: u64 = 10_000_000;

fn run(mode: &str, size: u32) -> serde_json::Value {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let child = Command::new(env!("CARGO_BIN_EXE_zerohop"))
        .args([
            "demo",
            "--ring",
            mode,
            "--count",
            &ENTRIES.to_string(),
            "--size",
            &size.to_string(),
            "--poll",
            "yield",
            "--deadline",
            "240",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zerohop");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for zerohop");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "zerohop demo --ring {mode} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json output");
    let window = format!("/dev/shm/zerohop-demo-{pid}-{mode}");
    assert!(
        !std::path::Path::new(&window).exists(),
        "window file {window} left behind"
    );
    v[0].clone()
}

fn check(mode: &str, size: u32) {
    let r = run(mode, size);
    let rx = &r["rx"];
    assert_eq!(r["sent"], ENTRIES, "{r}");
    assert_eq!(rx["received"], ENTRIES, "{r}");
    assert_eq!(rx["lost"], 0, "{r}");
    assert_eq!(rx["reordered"], 0, "{r}");
    assert_eq!(rx["duplicated"], 0, "{r}");
    assert_eq!(rx["corrupted"], 0, "{r}");
    assert!(rx["error"].is_null(), "{r}");
    eprintln!(
        "{mode}: {} entries of {size} B, {:.2} Mpps (yield mode, not a benchmark)",
        ENTRIES,
        r["mpps"].as_f64().unwrap_or(0.0)
    );
}

#[test]
fn split_ten_million_entries_two_processes() {
    check("split", 64);
}

#[test]
fn packed_ten_million_entries_two_processes() {
    check("packed", 64);
}

#[test]
fn posted_ten_million_entries_two_processes() {
    // 32-byte entries go inline in the slot; 64-byte ones through credited buffers.
    check("posted", 64);
}

#[test]
fn posted_inline_entries_two_processes() {
    let r = run("posted", 32);
    assert_eq!(r["rx"]["received"], ENTRIES, "{r}");
    assert_eq!(r["rx"]["lost"], 0, "{r}");
    assert_eq!(r["rx"]["corrupted"], 0, "{r}");
}
