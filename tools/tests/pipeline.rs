//! `zerohop pipeline check`: spawns the binary on the example configs and on bad ones.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines")
}

fn check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zerohop"))
        .args(["pipeline".as_ref(), "check".as_ref(), file.as_os_str()])
        .output()
        .expect("spawn zerohop")
}

#[test]
fn examples_pass() {
    let two_cpus = dataplane::lcore::online_cores().len() >= 2;
    for name in [
        "run_to_completion.toml",
        "two_lcore.toml",
        "two_queues.toml",
    ] {
        if name != "run_to_completion.toml" && !two_cpus {
            eprintln!("skipping {name}: needs CPUs 0 and 1 online");
            continue;
        }
        let o = check(&examples().join(name));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{name}: {o:?}");
        assert!(out.contains(": OK ("), "{name}: {out}");
        assert!(out.contains("lcore 0 (cpu 0): rx p0/0"), "{name}: {out}");
    }
}

const BASE: &str = r#"[[port]]
name = "p0"
ring = "split"
window = "/dev/shm/zerohop-test-never-created"
role = "backend"
queues = 1
ring_size = 256
buf_size = 2048

[[lcore]]
cpu = 0
stages = [
  { kind = "rx", port = "p0", queue = 0 },
  { kind = "fwd", fn = "io" },
  { kind = "tx", port = "p0", queue = 0 },
]
"#;

#[test]
fn bad_configs_fail_with_line_and_field() {
    let dir = std::env::temp_dir().join(format!("zerohop-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // (file, replace, with, "file:line", field, message part)
    let cases = [
        ("unknown_field", "queues = 1", "queues = 1\nspeed = 10", ":7:", "port[0].speed", "unknown field `speed`"),
        ("wrong_type", "queues = 1", "queues = \"one\"", ":6:", "port[0].queues", "invalid type: string \"one\", expected u32"),
        ("no_core", "cpu = 0", "cpu = 4096", ":11:", "lcore[0].cpu", "CPU 4096 does not exist"),
        ("too_many_queues", "queues = 1", "queues = 22", ":6:", "port[0].queues", "22 queue pairs (expected 1 to 21 for this ring mode)"),
        ("queue_size", "ring_size = 256", "ring_size = 1000", ":7:", "port[0].ring_size", "1000 is not a power of two"),
        ("tiny_window", "role = \"backend\"", "role = \"backend\"\nwindow_size = \"16K\"", ":6:", "port[0].window_size", "window too small"),
        (
            "same_queue",
            "  { kind = \"tx\", port = \"p0\", queue = 0 },",
            "  { kind = \"tx\", port = \"p0\", queue = 0 },\n  { kind = \"rx\", port = \"p0\", queue = 0 },\n  { kind = \"tx\", port = \"p0\", queue = 0 },",
            ":16:",
            "lcore[0].stages[3].queue",
            "rx queue 0 of port \"p0\" is already used by lcore[0].stages[0]",
        ),
    ];
    for (name, from, to, at, field, msg) in cases {
        assert!(BASE.contains(from), "{name}");
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, BASE.replacen(from, to, 1)).unwrap();
        let o = check(&file);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {o:?}");
        let head = format!("{}{at}", file.display());
        assert!(err.contains(&head), "{name}: want {head:?} in {err}");
        assert!(err.contains(field), "{name}: want {field:?} in {err}");
        assert!(err.contains(msg), "{name}: want {msg:?} in {err}");
        assert!(o.stdout.is_empty(), "{name}: nothing on stdout");
    }
    // A missing file is an error too.
    let o = check(&dir.join("nope.toml"));
    assert_eq!(o.status.code(), Some(2));
    // Nothing left behind: only the configs we wrote, and no window file.
    let left = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(left, cases.len());
    assert!(!Path::new("/dev/shm/zerohop-test-never-created").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `zerohop-*` files in /dev/shm.
fn shm_files() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("zerohop-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Children of `pid` (from /proc), for the no-leftover-process check.
fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.filter_map(|e| e.ok()) {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|x| x.parse::<u32>().ok());
            if ppid == Some(pid) {
                v.push(p);
            }
        }
    }
    v
}

/// Runs an example for 2 s (yielding pollers), with a deadline; returns its JSON.
fn run_example(name: &str) -> serde_json::Value {
    let file = examples().join(name);
    let window = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("window = \"")
                .map(|r| r.split('"').next().unwrap().to_owned())
        })
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zerohop"))
        .args(["pipeline".as_ref(), "run".as_ref(), file.as_os_str()])
        .args(["--duration", "2", "--poll", "yield", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn zerohop");
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut peers_seen = Vec::new();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        for c in children_of(pid) {
            if !peers_seen.contains(&c) {
                peers_seen.push(c);
            }
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: no exit within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        status.success(),
        "{name}: {status:?}\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !peers_seen.is_empty(),
        "{name}: no generator peer was started"
    );
    for c in peers_seen {
        assert!(
            !Path::new(&format!("/proc/{c}")).exists()
                || std::fs::read_to_string(format!("/proc/{c}/stat"))
                    .map_or(true, |s| s.contains(") Z")),
            "{name}: peer {c} still running"
        );
    }
    assert!(!Path::new(&window).exists(), "{name}: {window} left behind");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{name}: {e}: {out}"))
}

fn check_moved(name: &str, v: &serde_json::Value) {
    let returned = v["returned"].as_u64().unwrap();
    let lost = v["lost"].as_u64().unwrap();
    assert!(returned > 0, "{name}: nothing came back: {v}");
    assert_eq!(lost, 0, "{name}: {v}");
    assert!(v["error"].is_null(), "{name}: {v}");
    assert_eq!(v["ports"][0]["corrupted"].as_u64(), Some(0), "{name}: {v}");
}

#[test]
fn run_to_completion_moves_packets_and_cleans_up() {
    let v = run_example("run_to_completion.toml");
    check_moved("run_to_completion", &v);
    assert_eq!(v["lcores"][0]["rx"], v["lcores"][0]["tx"], "{v}");
}

#[test]
fn two_lcore_moves_packets_through_the_ring_and_cleans_up() {
    if dataplane::lcore::online_cores().len() < 2 {
        eprintln!("skipping: needs CPUs 0 and 1 online");
        return;
    }
    let v = run_example("two_lcore.toml");
    check_moved("two_lcore", &v);
    assert!(v["lcores"][0]["ring_out"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["lcores"][0]["ring_out"], v["lcores"][1]["ring_in"], "{v}");
    let before: Vec<String> = shm_files();
    assert!(
        !before.iter().any(|f| f == "zerohop-2lc"),
        "window left: {before:?}"
    );
}
