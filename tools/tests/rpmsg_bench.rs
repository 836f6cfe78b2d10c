//! `zerohop rpmsg-bench`: a short yielding run checks the JSON keys, no loss and
//! cleanup (no window file left); bad options fail with exit code 2 and a message,
//! leaving nothing behind. Runs serialised (each run starts a busy peer process).

use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills the child if the test fails before it exits.
struct Guard(Option<Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(args: &[&str], dir: &std::path::Path) -> (Output, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_zerohop"))
        .arg("rpmsg-bench")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zerohop");
    let pid = child.id();
    let mut g = Guard(Some(child));
    let start = Instant::now();
    loop {
        let c = g.0.as_mut().unwrap();
        if c.try_wait().expect("try_wait").is_some() {
            let out = g.0.take().unwrap().wait_with_output().expect("output");
            return (out, pid);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "rpmsg-bench did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("zh-rpmsg-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn empty(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn short_run_json_no_loss_cleanup() {
    let _g = lock();
    let dir = scratch("ok");
    for ring in ["posted", "split"] {
        let (out, _) = run(
            &[
                "--poll",
                "yield",
                "--duration",
                "0.05",
                "--sizes",
                "16,496",
                "--ring",
                ring,
                "--json",
            ],
            &dir,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{ring}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        for k in [
            "ring",
            "mode",
            "poll",
            "lcores",
            "duration_s",
            "results",
            "probe",
            "lost",
            "peer_ok",
        ] {
            assert!(v.get(k).is_some(), "{ring}: key {k} missing in {v}");
        }
        assert_eq!(v["ring"], ring);
        assert_eq!(v["lost"], 0);
        assert_eq!(v["peer_ok"], true);
        for k in ["before_ns", "after_ns", "before", "after", "changed"] {
            assert!(v["probe"].get(k).is_some(), "probe key {k}");
        }
        let rs = v["results"].as_array().unwrap();
        assert_eq!(rs.len(), 2);
        for (r, size) in rs.iter().zip([16, 496]) {
            assert_eq!(r["size"], size);
            let o = &r["oneway"];
            assert_eq!(o["lost"], 0);
            assert!(o["sent"].as_u64().unwrap() > 0);
            assert_eq!(o["sent"], o["received"]);
            for k in ["secs", "msgs_per_s", "mb_per_s"] {
                assert!(o[k].as_f64().unwrap() > 0.0, "oneway {k}");
            }
            let l = &r["rtt"];
            assert!(l["count"].as_u64().unwrap() > 0);
            for k in ["p50", "p90", "p99", "p999", "max"] {
                assert!(l[k].as_u64().unwrap() > 0, "rtt {k}");
            }
            assert!(l["p50"].as_u64() <= l["max"].as_u64());
        }
        assert!(empty(&dir), "{ring}: window file left in {}", dir.display());
    }
    // Human output, one mode only.
    let (out, _) = run(
        &[
            "--poll",
            "yield",
            "--duration",
            "0.05",
            "--sizes",
            "64",
            "--mode",
            "rtt",
        ],
        &dir,
    );
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("placement probe") && s.contains("p50"), "{s}");
    assert!(empty(&dir));
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn bad_options_fail_cleanly() {
    let _g = lock();
    let dir = scratch("bad");
    for (args, want) in [
        (&["--sizes", "0"][..], "--sizes"),
        (&["--sizes", "497"][..], "--sizes"),
        (&["--sizes", "64,x"][..], "--sizes"),
        (&["--duration", "0"][..], "--duration"),
        (&["--duration", "nan"][..], "--duration"),
        (&["-l", "0"][..], "--lcores"),
        (&["-l", "0,0"][..], "--lcores"),
        (&["--ring", "ring"][..], "--ring"),
        (&["--mode", "sideways"][..], "--mode"),
    ] {
        let (out, _) = run(args, &dir);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(empty(&dir), "{args:?} left a file");
    }
    let (out, _) = run(
        &["--duration", "0.01"],
        std::path::Path::new("/nonexistent-dir"),
    );
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir(&dir).unwrap();
}
