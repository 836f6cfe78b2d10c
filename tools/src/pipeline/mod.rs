//! `zerohop pipeline`: per-core pipelines from a TOML file (ports, local rings, lcores
//! and the stages each lcore runs). `pipeline check` validates a file; see [`config`] for
//! the schema and the rules.
//!
//! ```text
//!   lcore 0 (cpu 0)                         lcore 1 (cpu 1)
//!   rx p0/0 -> fwd macswap -> ring_out r1 ==> ring_in r1 -> tx p0/0
//!                              (SPSC ring r1, local memory)
//! ```

pub mod config;
pub mod run;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use config::{human, window_bound, Checked};

/// `zerohop pipeline` subcommands.
#[derive(Subcommand, Debug)]
pub enum PipelineCmd {
    /// Validate a pipeline config without running it (exit 0 and a summary, or exit 2
    /// and an error naming the line and field).
    Check {
        /// The config file.
        file: PathBuf,
    },
    /// Run a pipeline config: create/attach its ports, start a generator peer for
    /// ports with `peer = "generator"`, run the lcores for --duration, print counters.
    Run(run::RunArgs),
    /// Internal: the generator peer of one port.
    #[command(hide = true)]
    Peer(run::PeerArgs),
}

/// A human summary of a checked config.
pub fn summary(c: &Checked) -> String {
    let cfg = &c.config;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: OK ({} port(s), {} ring(s), {} lcore(s))",
        c.file.display(),
        cfg.port.len(),
        cfg.ring.len(),
        cfg.lcore.len()
    );
    for p in &cfg.port {
        let p = p.get_ref();
        let (q, n, b) = (
            *p.queues.get_ref(),
            *p.ring_size.get_ref(),
            *p.buf_size.get_ref(),
        );
        let size = p
            .window_size
            .as_ref()
            .map_or_else(String::new, |w| format!(", window_size {}", w.get_ref()));
        let _ = writeln!(
            s,
            "  port {}: {} ring, {}, window {}{size} (layout needs at most {}), {q} queue pair(s) x {n} entries x {b} B",
            p.name.get_ref(),
            p.ring.get_ref(),
            p.role.get_ref(),
            p.window.get_ref(),
            human(window_bound(q, n, b)),
        );
    }
    for r in &cfg.ring {
        let r = r.get_ref();
        let name = r.name.get_ref();
        let end = |out: bool| {
            cfg.lcore
                .iter()
                .enumerate()
                .find(|(_, l)| {
                    l.get_ref().stages.get_ref().iter().any(|st| {
                        let st = st.get_ref();
                        let want = if out {
                            config::StageKind::RingOut
                        } else {
                            config::StageKind::RingIn
                        };
                        *st.kind.get_ref() == want
                            && st.ring.as_ref().is_some_and(|x| x.get_ref() == name)
                    })
                })
                .map_or_else(|| "?".to_owned(), |(i, _)| format!("lcore {i}"))
        };
        let _ = writeln!(
            s,
            "  ring {name}: {} entries, {} -> {}",
            r.size.get_ref(),
            end(true),
            end(false)
        );
    }
    for (i, l) in cfg.lcore.iter().enumerate() {
        let l = l.get_ref();
        let mut chain = String::new();
        for (si, st) in l.stages.get_ref().iter().enumerate() {
            let st = st.get_ref();
            let sep = match (si, *st.kind.get_ref()) {
                (0, _) => "",
                (_, config::StageKind::Rx | config::StageKind::RingIn) => " ; ",
                _ => " -> ",
            };
            let _ = write!(chain, "{sep}{st}");
        }
        let _ = writeln!(s, "  lcore {i} (cpu {}): {chain}", l.cpu.get_ref());
    }
    s
}

/// Runs a `zerohop pipeline` subcommand.
pub fn run(cmd: &PipelineCmd) -> ExitCode {
    match cmd {
        PipelineCmd::Run(a) => run::run(a),
        PipelineCmd::Peer(a) => run::run_peer(a),
        PipelineCmd::Check { file } => {
            let online = dataplane::lcore::online_cores();
            match config::load(file, &online) {
                Ok(c) => {
                    print!("{}", summary(&c));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("zerohop pipeline check: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::config::{parse, window_bound, ConfigError};

    const ONLINE: &[usize] = &[0, 1];

    const GOOD: &str = r#"
[[port]]
name = "p0"
ring = "split"
window = "/dev/shm/zh-test"
role = "backend"
queues = 2
ring_size = 256
buf_size = 2048

[[ring]]
name = "r1"
size = 1024

[[lcore]]
cpu = 0
stages = [
  { kind = "rx", port = "p0", queue = 0 },
  { kind = "fwd", fn = "macswap" },
  { kind = "ring_out", ring = "r1" },
]

[[lcore]]
cpu = 1
stages = [
  { kind = "ring_in", ring = "r1" },
  { kind = "tx", port = "p0", queue = 0 },
  { kind = "rx", port = "p0", queue = 1 },
  { kind = "fwd", fn = "rxonly" },
]
"#;

    fn check(text: &str) -> Result<(), ConfigError> {
        parse(Path::new("t.toml"), text, ONLINE).map(|_| ())
    }

    /// Checks one bad config; returns a description of any mismatch.
    fn bad(text: &str, line: usize, field: &str, msg: &str) -> Option<String> {
        let Err(e) = check(text) else {
            return Some(format!("passed, want {field}: {msg}"));
        };
        if (e.line, e.field.as_str()) != (line, field) || !e.msg.contains(msg) {
            return Some(format!("want {line} {field} {msg:?}, got: {e}"));
        }
        None
    }

    #[test]
    fn good_config_passes() {
        check(GOOD).unwrap();
    }

    #[test]
    fn rule_violations_name_line_and_field() {
        // (replace this, with that, expected line, field, message part). GOOD's line 1
        // is empty: [[port]] is line 2, ring_size line 8, lcore[1].cpu line 24.
        let cases: &[(&str, &str, usize, &str, &str)] = &[
            (
                "queues = 2",
                "queues = 2\ncolour = 1",
                8,
                "port[0].colour",
                "unknown field",
            ),
            (
                "ring_size = 256",
                "ring_size = \"big\"",
                8,
                "port[0].ring_size",
                "invalid type",
            ),
            (
                "ring_size = 256",
                "ring_size = 1000",
                8,
                "port[0].ring_size",
                "power of two",
            ),
            ("cpu = 1", "cpu = 7", 24, "lcore[1].cpu", "does not exist"),
            ("cpu = 1", "cpu = 0", 24, "lcore[1].cpu", "already"),
            (
                "\"rx\", port = \"p0\", queue = 1",
                "\"rx\", port = \"p0\", queue = 0",
                28,
                "lcore[1].stages[2].queue",
                "already used by lcore[0].stages[0]",
            ),
            (
                "queue = 1 }",
                "queue = 2 }",
                28,
                "lcore[1].stages[2].queue",
                "0 to 1",
            ),
            (
                "\"p0\", queue = 1",
                "\"p9\", queue = 1",
                28,
                "lcore[1].stages[2].port",
                "no port",
            ),
            (
                "\"split\"",
                "\"spiral\"",
                4,
                "port[0].ring",
                "unknown variant",
            ),
            (
                "buf_size = 2048\n",
                "",
                2,
                "port[0].buf_size",
                "missing field `buf_size`",
            ),
            (
                "fn = \"macswap\"",
                "fn = \"macswap\", colour = 2",
                19,
                "lcore[0].stages[1].colour",
                "unknown field `colour`",
            ),
            (
                "fn = \"macswap\"",
                "fn = \"swap\"",
                19,
                "lcore[0].stages[1].fn",
                "unknown variant",
            ),
            (
                "role = \"backend\"",
                "role = \"backend\"\nwindow_size = \"64K\"",
                7,
                "port[0].window_size",
                "window too small",
            ),
            (
                "\"/dev/shm/zh-test\"",
                "\"heap:4K\"",
                5,
                "port[0].window",
                "window too small",
            ),
            (
                "{ kind = \"ring_in\", ring = \"r1\" },",
                "{ kind = \"ring_in\", ring = \"r1\" },\n  { kind = \"ring_in\", ring = \"r1\" },",
                27,
                "lcore[1].stages[1].kind",
                "inside a chain",
            ),
            (
                "size = 1024",
                "size = 1024\n[[ring]]\nname = \"r2\"\nsize = 8",
                15,
                "ring[1].name",
                "no producer",
            ),
            (
                "fn = \"macswap\"",
                "fn = \"macswap\", queue = 3",
                19,
                "lcore[0].stages[1].queue",
                "takes no `queue`",
            ),
            (
                "{ kind = \"fwd\", fn = \"rxonly\" },",
                "",
                28,
                "lcore[1].stages",
                "no sink",
            ),
        ];
        let errs: Vec<String> = cases
            .iter()
            .filter_map(|&(from, to, line, field, msg)| {
                assert!(GOOD.contains(from), "{from}");
                bad(&GOOD.replacen(from, to, 1), line, field, msg)
            })
            .collect();
        assert!(errs.is_empty(), "{}", errs.join("\n"));
    }

    #[test]
    fn ring_out_twice_is_not_spsc() {
        let text = GOOD.replace(
            "{ kind = \"fwd\", fn = \"rxonly\" },",
            "{ kind = \"ring_out\", ring = \"r1\" },",
        );
        let e = check(&text).unwrap_err();
        assert!(e.msg.contains("already has a producer"), "{e}");
        assert_eq!(e.field, "lcore[1].stages[3].ring");
    }

    #[test]
    fn peer_and_run_fields() {
        let text = GOOD.replace("buf_size = 2048", "buf_size = 2048\npeer = \"generator\"")
            + "\n[run]\npoll = \"yield\"\n";
        check(&text).unwrap();
        let e = check(&GOOD.replace("buf_size = 2048", "buf_size = 2048\npeer = \"echo\""))
            .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (10, "port[0].peer"), "{e}");
        assert!(e.msg.contains("expected \"generator\""), "{e}");
        let e = check(&(GOOD.to_owned() + "\n[run]\npoll = \"nap\"\n")).unwrap_err();
        assert!(e.msg.contains("unknown variant"), "{e}");
    }

    #[test]
    fn bound_formula() {
        // 4 KiB + 1 x 2 x (256 x (64 + 2048) + 8 KiB)
        assert_eq!(window_bound(1, 256, 2048), 4096 + 2 * (256 * 2112 + 8192));
    }

    #[test]
    fn error_display_has_snippet() {
        let e = check(&GOOD.replace("ring_size = 256", "ring_size = 1000")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("t.toml:8:13: port[0].ring_size: 1000 is not a power of two"),
            "{s}"
        );
        assert!(
            s.contains("    8 | ring_size = 1000\n      |             ^^^^"),
            "{s}"
        );
    }
}
