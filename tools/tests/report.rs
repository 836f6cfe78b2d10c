//! `zerohop report`: spawns the binary on the fixtures in `tests/data/` (regenerate them
//! with `cargo test -p zerohop --bin zerohop -- --ignored write_fixtures`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn zerohop(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zerohop"))
        .args(args)
        .output()
        .expect("spawn zerohop")
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zerohop-report-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn two_runs_table_and_svg() {
    let dir = tmpdir("svg");
    let out = dir.join("cmp.svg");
    let o = zerohop(&[
        "report".as_ref(),
        data("sample_a.hgrm").as_os_str(),
        data("sample_b.hgrm").as_os_str(),
        "--labels".as_ref(),
        "before,after".as_ref(),
        "--plot".as_ref(),
        out.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    for want in ["before", "after", "p50", "p99.99", "max", "B/A"] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.trim_start().starts_with("<svg"), "{}", &svg[..100]);
    assert!(svg.trim_end().ends_with("</svg>"));
    // Balanced tags, roughly: every opened element is closed or self-closing.
    let opens = svg.matches("<text").count();
    assert_eq!(opens, svg.matches("</text>").count());
    for want in ["before", "after", "99.9%", "polyline"] {
        assert!(svg.contains(want), "{want} missing from the SVG");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_inputs_and_json_output() {
    let dir = tmpdir("json");
    // A testpmd-style --json object.
    let testpmd = dir.join("testpmd.json");
    std::fs::write(
        &testpmd,
        r#"{"ring": "split", "mpps": 12.5, "latency_ns": {"p50": 700, "p90": 900, "p99": 1500, "p999": 4000, "p9999": 9000, "max": 20000}}"#,
    )
    .unwrap();
    let o = zerohop(&[
        "report".as_ref(),
        data("sample_a.json").as_os_str(),
        testpmd.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["p99"], 1500);
    assert_eq!(v[1]["label"], "testpmd");
    assert_eq!(v[0]["unit"], "ns");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fails(args: &[&std::ffi::OsStr], want: &str) {
    let o = zerohop(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stderr.contains(want), "want {want:?} in {stderr}");
}

#[test]
fn bad_inputs_fail_clearly() {
    let dir = tmpdir("bad");
    let missing = dir.join("missing.hgrm");
    fails(&["report".as_ref(), missing.as_os_str()], "no such file");
    let junk = dir.join("junk.hgrm");
    std::fs::write(&junk, "this is not a histogram\n").unwrap();
    fails(
        &["report".as_ref(), junk.as_os_str()],
        "not a latency result",
    );
    let json = dir.join("other.json");
    std::fs::write(&json, r#"{"hello": 1}"#).unwrap();
    fails(
        &["report".as_ref(), json.as_os_str()],
        "not a latency result",
    );
    // Wrong label count, and PNG output: errors, and no plot file is left behind.
    let png = dir.join("out.png");
    fails(
        &[
            "report".as_ref(),
            data("sample_a.hgrm").as_os_str(),
            "--plot".as_ref(),
            png.as_os_str(),
        ],
        "PNG is not supported",
    );
    let svg = dir.join("out.svg");
    fails(
        &[
            "report".as_ref(),
            data("sample_a.hgrm").as_os_str(),
            "--labels".as_ref(),
            "a,b".as_ref(),
            "--plot".as_ref(),
            svg.as_os_str(),
        ],
        "--labels gives 2 names",
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "only the two inputs remain: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
