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
