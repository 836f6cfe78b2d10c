//! Bad input at every door of the `zerohop` binary: crafted window files (truncated,
//! wrong magic, wrong version, someone else's, world-writable, a symlink, a
//! directory, a character device), a peer that never finishes the handshake, bad
//! option values, bad stats windows. Each must give a clear error naming what is
//! wrong, exit 2, within a bounded time, and leave no file and no
//! process behind. The table in docs/THREAT_MODEL.md ("Bad input tried") lists the same cases
//! with the exact messages.
//!
//! (Pipeline configs and `report` inputs are covered by `pipeline.rs` and `report.rs`;
//! testpmd's range checks by `testpmd.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dataplane::pmd::window::WindowSpec;
use dataplane::port::{Port, PortConfig, Role};

static SERIAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills (SIGKILL) and reaps a child on drop.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Removes files (or empty directories) on drop.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
        }
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

/// Runs zerohop to completion within `secs` (killing it past that: a hang).
fn run(args: &[&str], secs: u64) -> (Output, Duration, u32) {
    let t0 = Instant::now();
    let mut g = ChildGuard(Some(spawn(args)));
    let pid = g.0.as_ref().map_or(0, |c| c.id());
    loop {
        let c = g.0.as_mut().expect("child");
        if let Ok(Some(_)) = c.try_wait() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "zerohop {args:?} hung past {secs} s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out =
        g.0.take()
            .expect("child")
            .wait_with_output()
            .expect("collect output");
    (out, t0.elapsed(), pid)
}

/// No /dev/shm file of `pid` and no process whose command line names `needle`.
fn no_leftovers(pid: u32, needle: &str) {
    for p in [
        format!("/dev/shm/zerohop-testpmd-{pid}"),
        format!("/dev/shm/zerohop-stats-{pid}"),
    ] {
        assert!(!Path::new(&p).exists(), "{p} left behind");
    }
    if let Ok(d) = std::fs::read_dir("/proc") {
        for e in d.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().parse::<u32>().is_err() {
                continue;
            }
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(
                !(cmd.contains("zerohop") && cmd.contains(needle) && cmd.contains("testpmd")),
                "process left behind: {cmd}"
            );
        }
    }
}

/// Asserts: exit `code`, stderr names `want`, nothing on the way out left behind.
fn fails(args: &[&str], code: i32, want: &str, needle: &str) -> String {
    let (out, took, pid) = run(args, 20);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
    assert!(err.contains(want), "{args:?}: stderr lacks {want:?}: {err}");
    no_leftovers(pid, needle);
    println!("{args:?}: exit {code} after {took:.2?}: {}", err.trim());
    took.as_secs_f64().to_string()
}

/// A valid window's bytes (a frontend's posted port), made with `Port::create`.
fn valid_window(tag: &str) -> Vec<u8> {
    let path = PathBuf::from(format!("/dev/shm/zh-bad-{}-{tag}-src", std::process::id()));
    let _c = Cleanup(vec![path.clone()]);
    let port = Port::create(&PortConfig::new(
        WindowSpec::Shm(path.clone()),
        Role::Frontend,
    ))
    .expect("create a valid window");
    let bytes = std::fs::read(&path).expect("read it");
    drop(port);
    bytes
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).expect("write crafted window");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn backend(window: &str) -> Vec<String> {
    [
        "testpmd",
        "--role",
        "backend",
        "--poll",
        "yield",
        "--duration",
        "0.2",
        "--handshake-timeout",
        "1",
        "--window",
        window,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn bad_window_files_fail_at_once() {
    let _g = lock();
    let base = format!("/dev/shm/zh-bad-{}", std::process::id());
    let good = valid_window("files");
    let p = |s: &str| PathBuf::from(format!("{base}-{s}"));
    let mut clean = Cleanup(Vec::new());

    let trunc = p("trunc");
    write_mode(&trunc, &good[..10], 0o600);
    let mut magic = good.clone();
    magic[..8].copy_from_slice(b"NOTAWIND");
    write_mode(&p("magic"), &magic, 0o600);
    let mut version = good.clone();
    version[8..12].copy_from_slice(&(9u32 << 16).to_le_bytes());
    write_mode(&p("version"), &version, 0o600);
    write_mode(&p("zeros"), &vec![0u8; good.len()], 0o600);
    write_mode(&p("world"), &good, 0o666);
    write_mode(&p("target"), &good, 0o600);
    std::os::unix::fs::symlink(p("target"), p("link")).expect("symlink");
    std::fs::create_dir(p("dir")).expect("mkdir");
    clean.0.extend(
        [
            "trunc", "magic", "version", "zeros", "world", "target", "link", "dir",
        ]
        .map(p),
    );

    let mut cases: Vec<(String, &str)> = vec![
        (
            format!("{base}-trunc"),
            "10 bytes, smaller than the 4096 bytes a window needs",
        ),
        (format!("{base}-magic"), "bad magic"),
        (
            format!("{base}-version"),
            "layout version mismatch: window has 9.0, this build speaks 1.1",
        ),
        (
            format!("{base}-world"),
            "mode 0666 is writable by group or others; refusing",
        ),
        (
            format!("{base}-link"),
            "is a symbolic link; refusing to follow it",
        ),
        (format!("{base}-dir"), "not a regular file"),
        ("/dev/zero".to_string(), "not a regular file"),
        (format!("{base}-missing/w"), "does not exist"),
    ];
    // Someone else's file: needs root to hand it to another uid.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let f = p("foreign");
        write_mode(&f, &good, 0o600);
        clean.0.push(f.clone());
        let c = std::ffi::CString::new(f.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        let r = unsafe { libc::chown(c.as_ptr(), 65534, 65534) };
        assert_eq!(r, 0, "chown to nobody");
        cases.push((
            f.to_string_lossy().into_owned(),
            "owned by uid 65534, not by us",
        ));
    } else {
        println!("not root: skipping the someone-else's-window case");
    }
    for (w, want) in &cases {
        let args = backend(w);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (out, took, pid) = run(&args, 20);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{w}: {out:?}");
        assert!(err.contains(want), "{w}: stderr lacks {want:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{w}: no summary for a run that never started"
        );
        // A permanent error is reported at once, not after the attach retries.
        assert!(took < Duration::from_secs(5), "{w}: took {took:?}");
        no_leftovers(pid, &base);
        println!("{w}: exit 2 after {took:.2?}: {}", err.trim());
    }
    // An all-zero file looks like a window whose creator has not finished: retried
    // until --handshake-timeout, then a clear error.
    fails(
        &backend(&format!("{base}-zeros"))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        2,
        "header not initialised",
        &base,
    );
    // --allow-foreign lets the same world-writable window through the ownership and
    // mode checks: the run then gets as far as the handshake (no peer: a timeout),
    // not a refusal.
    let world2 = p("world2");
    write_mode(&world2, &good, 0o666);
    clean.0.push(world2.clone());
    let mut args = backend(&world2.to_string_lossy());
    args.push("--allow-foreign".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, _, pid) = run(&args, 20);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("refusing"),
        "--allow-foreign still refused: {err}"
    );
    assert_eq!(out.status.code(), Some(2), "no peer: {out:?}");
    no_leftovers(pid, &base);
    // The crafted files are untouched (nobody "repaired" or removed them).
    assert_eq!(std::fs::read(p("magic")).expect("still there"), magic);
    assert!(std::fs::symlink_metadata(p("link")).is_ok());
}

#[test]
fn a_peer_that_never_finishes_the_handshake() {
    let _g = lock();
    let base = format!("/dev/shm/zh-bad-{}-hs", std::process::id());
    let good = valid_window("hs");
    // 1. A frontend that nobody answers: times out, removes its window.
    let fe = format!("{base}-nobody");
    let args = [
        "testpmd",
        "--role",
        "frontend",
        "--poll",
        "yield",
        "--handshake-timeout",
        "1",
        "--window",
        &fe,
    ];
    fails(&args, 2, "(waiting for a live backend", &base);
    assert!(!Path::new(&fe).exists(), "{fe} left behind");

    // 2. A backend on a window whose creator died (SIGKILL) after writing it.
    let dead = PathBuf::from(format!("{base}-dead"));
    let _c = Cleanup(vec![dead.clone()]);
    write_mode(&dead, &good, 0o600);
    let args = backend(&dead.to_string_lossy());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&args, 2, "(waiting for a live frontend", &base);

    // 3. A backend whose frontend is alive but stopped (SIGSTOP) before answering.
    let stopped = format!("{base}-stopped");
    let fe = ChildGuard(Some(spawn(&[
        "testpmd",
        "--role",
        "frontend",
        "--poll",
        "yield",
        "--handshake-timeout",
        "30",
        "--instance",
        "zh-bad-stopped",
        "--window",
        &stopped,
    ])));
    let _c2 = Cleanup(vec![
        PathBuf::from(&stopped),
        PathBuf::from("/dev/shm/zerohop-stats-zh-bad-stopped"),
    ]);
    let end = Instant::now() + Duration::from_secs(20);
    while !Path::new(&stopped).exists() {
        assert!(
            Instant::now() < end,
            "the frontend never created its window"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let fpid = fe.0.as_ref().map_or(0, |c| c.id()) as i32;
    // SAFETY: kill has no memory-safety preconditions; our own unreaped child.
    unsafe { libc::kill(fpid, libc::SIGSTOP) };
    let args = backend(&stopped);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&args, 2, "handshake timed out after", "-stopped-none");
    drop(fe); // SIGKILL (a stopped process dies of it too) and reap
}

#[test]
fn bad_option_values_and_stats_windows() {
    let _g = lock();
    let base = format!("/dev/shm/zh-bad-{}-opt", std::process::id());
    let t = |extra: &[&str], want: &str| {
        let mut a = vec!["testpmd", "--poll", "yield"];
        a.extend_from_slice(extra);
        fails(&a, 2, want, "zh-bad-none");
    };
    t(
        &["--instance", "../../tmp/evil"],
        "it names a /dev/shm file",
    );
    t(&["--instance", "a/b"], "it names a /dev/shm file");
    t(&["--stats-period", "nan"], "must be 0 or more seconds");
    t(&["--duration", "inf"], "must be 0 or more seconds");
    t(
        &["--handshake-timeout", "0"],
        "more than 0 and at most 86400",
    );
    t(&["--window", ""], "empty window spec");
    t(&["--window", "foo:bar"], "unknown window scheme \"foo\"");
    t(&["--window", "huge:"], "missing memfd or a path");
    t(&["--window", "pci:zz"], "expected DEVICE/barN");
    t(&["--lcores", ""], "is empty");
    t(&["--txpkts", "0"], "--txpkts");
    t(
        &["--ring", "split", "--rxq", "22"],
        "a Split port has at most 21 queue pairs",
    );
    t(&["--rxq", "32"], "--rxq");
    assert!(!Path::new("/tmp/evil").exists());

    // `zerohop stats` on things that are not stats windows: exit 2, clear message.
    let trunc = PathBuf::from(format!("{base}-trunc"));
    let junk = PathBuf::from(format!("{base}-junk"));
    let link = PathBuf::from(format!("{base}-link"));
    let _c = Cleanup(vec![trunc.clone(), junk.clone(), link.clone()]);
    write_mode(&trunc, &[1u8; 10], 0o600);
    write_mode(&junk, &[0x5a; 8192], 0o600);
    std::os::unix::fs::symlink(&junk, &link).expect("symlink");
    let s = |target: &str, want: &str| fails(&["stats", target, "--once"], 2, want, "zh-bad-none");
    s(&trunc.to_string_lossy(), "smaller than the 4096 bytes");
    s(&junk.to_string_lossy(), "bad magic");
    s(&link.to_string_lossy(), "is a symbolic link");
    s("/dev/zero", "not a regular file");
    s("zh-bad-no-such-instance", "no such file");

    // `zerohop rpmsg-guest`: bad settings and a RAM file that exists already are
    // refused before anything is created (the pre-planted file stays as it was).
    let ram = format!("{base}-rg-ram");
    let ctl = format!("{base}-rg-ctl");
    let _c = Cleanup(vec![ram.clone().into(), ctl.clone().into()]);
    let g = |extra: &[&str], want: &str| {
        let mut a = vec!["rpmsg-guest", "--ram", &ram, "--control", &ctl];
        a.extend_from_slice(extra);
        if !extra.contains(&"--duration") {
            a.extend_from_slice(&["--duration", "1"]);
        }
        fails(&a, 2, want, "zh-bad-none");
        assert!(!Path::new(&ctl).exists(), "{ctl} left behind");
    };
    g(&["--queue-size", "6"], "queue size must be a power of two");
    g(
        &["--control-size", "1000"],
        "control file size must be a power of two",
    );
    g(
        &["--control-size", "1099511627776"],
        "control file size must be a power of two",
    );
    g(
        &["--duration", "inf"],
        "--duration must be 0 or more seconds",
    );
    g(
        &["--duration", "nan"],
        "--duration must be 0 or more seconds",
    );
    g(&["--ram-mib", "0"], "--ram-mib");
    g(
        &["--transport", "rproc", "--ring", "packed"],
        "packed rings need the ZHVQ transport",
    );
    g(&["--transport", "mmio"], "--transport");
    write_mode(Path::new(&ram), &[7u8; 4096], 0o600);
    g(&[], "exists");
    assert_eq!(std::fs::read(&ram).expect("planted file"), vec![7u8; 4096]);
}
