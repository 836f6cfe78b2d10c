//! `zerohop testpmd` and `zerohop stats`: spawns the binary (both sides on this host,
//! two processes), in yield mode, serialised with a lock, each run with a deadline.

#[allow(dead_code, unused_imports)]
#[path = "../src/latency.rs"]
mod latency;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits for `child` up to `secs`, killing it past the deadline.
fn wait(mut child: Child, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "zerohop ran past {secs} s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zerohop"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zerohop")
}

fn no_leftovers(pid: u32) {
    for p in [
        format!("/dev/shm/zerohop-testpmd-{pid}"),
        format!("/dev/shm/zerohop-stats-{pid}"),
    ] {
        assert!(!Path::new(&p).exists(), "{p} left behind");
    }
}

/// Runs testpmd with `--json` and the test defaults; returns the parsed object.
fn testpmd(extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["testpmd", "--poll", "yield", "--duration", "0.5", "--json"];
    args.extend_from_slice(extra);
    let child = spawn(&args);
    let pid = child.id();
    let out = wait(child, 90);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "zerohop {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    no_leftovers(pid);
    serde_json::from_str(&stdout).expect("one JSON object")
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn sum(v: &serde_json::Value, side: &str, k: &str) -> u64 {
    v[side]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q[k].as_u64().unwrap())
        .sum()
}

#[test]
fn every_forwarding_mode_moves_packets_and_counters_agree() {
    let _g = lock();
    // Every ring mode at least once.
    let runs: &[(&str, &str)] = &[
        ("io", "posted"),
        ("mac", "split"),
        ("macswap", "packed"),
        ("rxonly", "split"),
        ("txonly", "packed"),
        ("flowgen", "posted"),
        ("echo", "split"),
        ("latency", "posted"),
    ];
    for &(mode, ring) in runs {
        let v = testpmd(&["--forward-mode", mode, "--ring", ring]);
        let what = format!("{mode} over {ring}: {v}");
        assert!(u(&v, "packets") > 0, "{what}");
        assert_eq!(u(&v, "lost"), 0, "{what}");
        assert_eq!(u(&v, "packets"), u(&v, "sent"), "{what}");
        assert_eq!(
            (u(&v, "reordered"), u(&v, "corrupted"), u(&v, "errors")),
            (0, 0, 0),
            "{what}"
        );
        assert!(v["error"].is_null(), "{what}");
        // The sending side's per-queue counts are what it reports as sent.
        let sender = if matches!(mode, "txonly" | "flowgen") {
            "fwd_queues"
        } else {
            "gen_queues"
        };
        assert_eq!(sum(&v, sender, "sent"), u(&v, "sent"), "{what}");
        if !matches!(mode, "rxonly" | "txonly" | "flowgen") {
            // Round trips: the forwarder sent back everything it received.
            assert_eq!(sum(&v, "fwd_queues", "sent"), u(&v, "sent"), "{what}");
        }
        for k in [
            "mpps",
            "gbps",
            "remote_reads_per_pkt",
            "remote_writes_per_pkt",
        ] {
            assert!(v[k].as_f64().is_some(), "{k}: {what}");
        }
        assert!(v.get("placement_probe_ns").is_some(), "{what}");
        for k in ["p50", "p90", "p99", "p999", "p9999", "max"] {
            assert!(v["latency_ns"][k].as_u64().is_some(), "{k}: {what}");
        }
        assert!(v["latency_ns"]["p50"].as_u64().unwrap() > 0, "{what}");
    }
}

#[test]
fn two_queues_on_two_lcores() {
    let _g = lock();
    let v = testpmd(&[
        "--forward-mode",
        "macswap",
        "--rxq",
        "2",
        "--txq",
        "2",
        "-l",
        "0,1",
    ]);
    assert_eq!(v["gen_queues"].as_array().unwrap().len(), 2, "{v}");
    assert!(sum(&v, "gen_queues", "received") > 0);
    assert_eq!(u(&v, "lost"), 0, "{v}");
}

#[test]
fn more_queue_pairs_than_lcores() {
    let _g = lock();
    // 8 queue pairs (above the 16-entry header's old limit of 5) on 2 cores: every
    // queue moves packets, none are lost.
    for ring in ["posted", "split"] {
        let v = testpmd(&[
            "--forward-mode",
            "rxonly",
            "--ring",
            ring,
            "--rxq",
            "8",
            "--txq",
            "8",
            "-l",
            "0,1",
        ]);
        let q = v["fwd_queues"].as_array().unwrap();
        assert_eq!(q.len(), 8, "{ring}: {v}");
        assert!(
            q.iter().all(|q| q["received"].as_u64().unwrap() > 0),
            "{ring}: {v}"
        );
        assert_eq!(u(&v, "lost"), 0, "{ring}: {v}");
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zerohop-testpmd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn hgrm_parses_back_to_the_latency_json_percentiles() {
    let _g = lock();
    let dir = tmpdir("hgrm");
    let (h, j) = (dir.join("lat.hgrm"), dir.join("lat.json"));
    let v = testpmd(&[
        "--forward-mode",
        "latency",
        "--burst",
        "1",
        "--hgrm",
        h.to_str().unwrap(),
        "--latency-json",
        j.to_str().unwrap(),
    ]);
    let hg = latency::parse_hgrm(&std::fs::read_to_string(&h).unwrap()).expect("hgrm parses");
    let js: latency::LatencySummary =
        serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).expect("latency json");
    // The .hgrm rows sit on percentile ticks (5 per half distance), so a level such as
    // p99 lies between two rows: its exact value must lie between their values (us with
    // three decimals = whole ns), and on a row it must be that row's value.
    let ns = |x: f64| (x * latency::NS_PER_US).round() as u64;
    for (&(name, q), want) in latency::SUMMARY_LEVELS.iter().zip(js.values()) {
        let below = hg.rows.iter().rev().find(|r| r.quantile <= q).unwrap();
        let above = hg.rows.iter().find(|r| r.quantile >= q).unwrap();
        assert!(
            ns(below.value) <= want && want <= ns(above.value),
            "{name}: json {want} not within hgrm rows {below:?} .. {above:?}"
        );
        if below.quantile == q {
            assert_eq!(ns(below.value), want, "{name}");
        }
    }
    assert_eq!(ns(hg.max.unwrap()), js.max);
    assert_eq!(hg.total_count, Some(js.count));
    assert_eq!(js.p50, v["latency_ns"]["p50"].as_u64().unwrap());
    assert_eq!(js.count, u(&v, "packets"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_compares_two_testpmd_runs_as_svg() {
    let _g = lock();
    let dir = tmpdir("report");
    let mut files = Vec::new();
    for ring in ["posted", "split"] {
        let v = testpmd(&["--forward-mode", "io", "--ring", ring]);
        let f = dir.join(format!("{ring}.json"));
        std::fs::write(&f, v.to_string()).unwrap();
        files.push(f);
    }
    let svg = dir.join("cmp.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_zerohop"))
        .arg("report")
        .args(&files)
        .arg("--plot")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg"), "not an SVG");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stats_once_reads_a_running_instance() {
    let _g = lock();
    let inst = format!("t{}", std::process::id());
    let child = spawn(&[
        "testpmd",
        "--poll",
        "yield",
        "--duration",
        "4",
        "--instance",
        &inst,
        "--json",
    ]);
    let path = format!("/dev/shm/zerohop-stats-{inst}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Path::new(&path).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let out = Command::new(env!("CARGO_BIN_EXE_zerohop"))
        .args(["stats", &inst, "--once"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let run = wait(child, 60);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A gen line with a non-zero tx-packets column.
    let gen = text
        .lines()
        .find(|l| l.starts_with("gen "))
        .unwrap_or_else(|| panic!("no gen line in {text}"));
    let cols: Vec<&str> = gen.split_whitespace().collect();
    assert!(cols[4].parse::<f64>().unwrap() > 0.0, "{text}");
    assert!(text.lines().any(|l| l.starts_with("fwd ")), "{text}");
    assert!(!Path::new(&path).exists(), "stats window left behind");
}

#[test]
fn bad_options_fail_cleanly() {
    let _g = lock();
    let cases: &[(&[&str], &str)] = &[
        (&["--burst", "0"], "--burst"),
        (&["--burst", "513"], "--burst"),
        (&["--lcores", "0-"], "--lcores"),
        (&["--ring", "foo"], "--ring"),
        (&["--lcores", "0,4095"], "core 4095 does not exist"),
        (&["--window", "/nonexistent-zerohop/w"], "does not exist"),
        (&["--rxd", "100"], "--rxd 100"),
    ];
    for &(args, want) in cases {
        let mut a = vec!["testpmd", "--poll", "yield", "--duration", "0.2"];
        a.extend_from_slice(args);
        let child = spawn(&a);
        let pid = child.id();
        let out = wait(child, 30);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: stderr lacks {want:?}: {err}");
        no_leftovers(pid);
    }
}

/// `--packets`: two independently started sides (as across a PCI BAR) finish an exact
/// count in both directions and both report `exact`; the checker has the verdict.
#[test]
fn split_roles_move_an_exact_count_both_ways() {
    let _g = lock();
    let win = format!("/dev/shm/zerohop-test-exact-{}", std::process::id());
    for (mode, ring) in [("rxonly", "split"), ("txonly", "packed")] {
        let common = [
            "--forward-mode",
            mode,
            "--packets",
            "20000",
            "--poll",
            "yield",
            "--duration",
            "30",
            "--json",
            "--window",
            &win,
        ];
        let mut fe_args = vec!["testpmd", "--role", "frontend", "--ring", ring, "-l", "0"];
        fe_args.extend(common);
        let fe = spawn(&fe_args);
        // The backend retries its attach for up to 10 s while the frontend starts.
        let mut be_args = vec!["testpmd", "--role", "backend", "-l", "1"];
        be_args.extend(common);
        let be = spawn(&be_args);
        let (fe, be) = (wait(fe, 60), wait(be, 60));
        assert!(!Path::new(&win).exists(), "{win} left behind");
        let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(fe.status.success(), "frontend: {}", text(&fe));
        assert!(be.status.success(), "backend: {}", text(&be));
        let fe: serde_json::Value = serde_json::from_str(&text(&fe)).expect("frontend json");
        let be: serde_json::Value = serde_json::from_str(&text(&be)).expect("backend json");
        let (gen, chk) = if mode == "rxonly" {
            (&fe["exact"], &be["exact"])
        } else {
            (&be["exact"], &fe["exact"])
        };
        assert_eq!(gen["generated_here"], true, "{gen}");
        assert_eq!(gen["sent"], 20000, "{gen}");
        assert_eq!(chk["checked_here"], true, "{chk}");
        assert_eq!(chk["received"], 20000, "{chk}");
        for k in ["lost", "reordered", "corrupted"] {
            assert_eq!(chk[k], 0, "{k}: {chk}");
        }
    }
}
