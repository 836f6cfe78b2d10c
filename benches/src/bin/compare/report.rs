//! Output of a compare run: the ratios and verdicts, a markdown block (rewritten in
//! place between `<!-- compare:begin -->` and `<!-- compare:end -->`), JSON, and an SVG
//! bar chart of the ratios.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use plotters::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};

use crate::linkmodel;
use crate::stats::{pair_ratios, placement_of, summarize, valid_values, verdict, Summary, Target};
use crate::{zerohop, Figure, Opts, Outcome};

/// Start marker of the generated block.
pub const BEGIN: &str = "<!-- compare:begin -->";
/// End marker of the generated block.
pub const END: &str = "<!-- compare:end -->";

/// The machine, as the report's head describes it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model (/proc/cpuinfo).
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Memory, GiB.
    pub mem_gib: f64,
    /// Date and time (UTC) of the run.
    pub date: String,
    /// 1-minute load average at the start of the run.
    pub load_before: f64,
    /// 1-minute load average at the end (set by the run; includes the run's own two
    /// pinned processes, so it is information only).
    pub load_after: f64,
    /// Fraction of all CPU time (0 to 1) other processes used during one second
    /// sampled from /proc/stat just before the run: what decides "busy".
    pub cpu_busy_before: f64,
}

/// Fraction (0 to 1) of all CPUs' time spent not idle over `sample`, from the
/// aggregate `cpu` line of /proc/stat; NaN if unreadable.
pub fn cpu_busy(sample: std::time::Duration) -> f64 {
    fn snap() -> Option<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let line = s.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some((v.iter().take(8).sum(), idle))
    }
    let Some((t0, i0)) = snap() else {
        return f64::NAN;
    };
    std::thread::sleep(sample);
    let Some((t1, i1)) = snap() else {
        return f64::NAN;
    };
    let total = t1.saturating_sub(t0);
    if total == 0 {
        return f64::NAN;
    }
    1.0 - i1.saturating_sub(i0) as f64 / total as f64
}

/// The 1-minute load average (/proc/loadavg), NaN if unreadable.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

impl Machine {
    /// Reads /proc and `date`.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        let hyp = if cpuinfo.contains(" hypervisor") {
            ", virtual machine"
        } else {
            ""
        };
        let mem_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            })
            .map_or(0.0, |kb| (kb / 1048576.0 * 10.0).round() / 10.0);
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Machine {
            cpu: format!("{cpu}{hyp}"),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            mem_gib,
            date,
            load_before: loadavg(),
            load_after: f64::NAN,
            cpu_busy_before: f64::NAN,
        }
    }
}

/// A ratio the issues name: `num / (den * den_scale)`.
#[derive(Debug, Clone, Serialize)]
pub struct RatioSpec {
    /// Human label.
    pub label: String,
    /// Numerator figure key (zerohop).
    pub num: String,
    /// Denominator figure key (peer or floor).
    pub den: String,
    /// Scale of the denominator (GB/s -> Gbit/s: 8).
    pub den_scale: f64,
    /// What the ratio is held to.
    pub target: Target,
    /// Pair only samples in the same placement (cross-core peers).
    pub same_placement: bool,
    /// Use this extra of the numerator's samples instead of their value.
    pub num_extra: Option<&'static str>,
}

/// The ratios of the issues, in report order.
pub fn ratio_specs() -> Vec<RatioSpec> {
    let mut v = Vec::new();
    let mut add =
        |label: String, num: String, den: &str, scale: f64, target: Target, same: bool| {
            v.push(RatioSpec {
                label,
                num,
                den: den.to_owned(),
                den_scale: scale,
                target,
                same_placement: same,
                num_extra: None,
            })
        };
    for r in zerohop::RINGS {
        add(
            format!("{r} 64 B ping-pong RTT / floor (1-line ping-pong RTT); lower is better"),
            format!("zerohop.{r}.pingpong"),
            "floor.rtt1",
            1.0,
            if r == "posted" {
                Target::AtMost(1.3)
            } else {
                Target::Report
            },
            true,
        );
    }
    // The same round trip against the floors a ring that never reads the peer's
    // memory can reach (GUIDE.md section 3): a line per direction, and a 64-byte
    // message (two lines) per direction; and against the best any layout can do
    // for a 64-byte message (both directions in the same two lines).
    for (den, what) in [
        ("floor.rtt2", "2-line floor"),
        ("floor.rttmsg", "64 B message floor"),
        ("floor.rttshared", "shared 64 B message floor"),
    ] {
        add(
            format!("posted 64 B ping-pong RTT / {what}; lower is better"),
            "zerohop.posted.pingpong".into(),
            den,
            1.0,
            Target::Report,
            true,
        );
    }
    for size in [64usize, 1500] {
        for b in crate::BURSTS {
            for r in zerohop::RINGS {
                add(
                    format!("{r} {size} B one-way, burst {b} / DPDK (Mpps)"),
                    format!("zerohop.{r}.{size}.b{b}"),
                    &format!("dpdk.{size}.b{b}"),
                    1.0,
                    // Issue 3's target: posted mode, 64-byte packets.
                    if r == "posted" && size == 64 {
                        Target::AtLeast(1.3)
                    } else {
                        Target::Report
                    },
                    true,
                );
            }
        }
    }
    for b in crate::BURSTS {
        for r in zerohop::RINGS {
            add(
                format!("{r} 64 KiB one-way, burst {b} / NT copy 64 KiB (Gbit/s)"),
                format!("zerohop.{r}.65536.b{b}"),
                "copy.65536.nt",
                8.0,
                // Issue 3's target: posted mode, >= 0.9x the single-core NT copy.
                if r == "posted" {
                    Target::AtLeast(0.9)
                } else {
                    Target::Report
                },
                false,
            );
        }
    }
    for r in zerohop::RINGS {
        add(
            format!("{r} 64 B RTT / iceoryx2 RTT; lower is better"),
            format!("zerohop.{r}.pingpong"),
            "iceoryx2.rtt",
            1.0,
            Target::Report,
            true,
        );
    }
    for r in zerohop::RINGS {
        add(
            format!("{r} 64 B mean RTT / DPDK 1-packet ping-pong mean RTT; lower is better"),
            format!("zerohop.{r}.pingpong"),
            "dpdk.pingpong",
            1.0,
            Target::Report,
            true,
        );
    }
    add(
        "SPSC zerohop chunk / rtrb chunk (items/s)".into(),
        "spsc.zh_chunk".into(),
        "spsc.rtrb",
        1.0,
        Target::AtLeast(1.0),
        true,
    );
    add(
        "SPSC zerohop slice / rtrb chunk".into(),
        "spsc.zh_slice".into(),
        "spsc.rtrb",
        1.0,
        Target::Report,
        true,
    );
    add(
        "SPSC zerohop chunk / crossbeam ArrayQueue".into(),
        "spsc.zh_chunk".into(),
        "spsc.array_queue",
        1.0,
        Target::Report,
        true,
    );
    // DPDK gives only a mean round trip (time / packets): compare means with it.
    for s in v.iter_mut().filter(|s| s.den == "dpdk.pingpong") {
        s.num_extra = Some("mean_rtt_ns");
    }
    v
}

/// A computed ratio.
#[derive(Debug, Clone, Serialize)]
pub struct RatioOut {
    /// The spec.
    pub spec: RatioSpec,
    /// Median (min-max) over repeats.
    pub ratio: Option<Summary>,
    /// met / missed / reported / no data.
    pub verdict: &'static str,
    /// Why there is no data, when there is none.
    pub why: Option<String>,
    /// Placement of the pairs.
    pub placement: &'static str,
}

fn figure<'a>(o: &'a Outcome, key: &str) -> Option<&'a Figure> {
    o.figures.iter().find(|f| f.key == key)
}

/// Computes every ratio (with the reason when one cannot be computed).
pub fn ratios(o: &Outcome) -> Vec<RatioOut> {
    ratio_specs()
        .into_iter()
        .filter_map(|spec| {
            let (n, d) = (figure(o, &spec.num), figure(o, &spec.den));
            let section = |k: &str| k.split('.').next().unwrap_or(k).to_owned();
            // Leave out ratios neither side of which was asked for.
            if n.is_none() && d.is_none() {
                return None;
            }
            let why = match (n, d) {
                (None, _) => Some(format!("{} not measured (see Skipped)", section(&spec.num))),
                (_, None) => Some(format!("{} not measured (see Skipped)", section(&spec.den))),
                _ => None,
            };
            let (ratio, placement) = match (n, d) {
                (Some(n), Some(d)) => {
                    let num: Vec<_> = match spec.num_extra {
                        None => n.samples.clone(),
                        Some(k) => n
                            .samples
                            .iter()
                            .filter_map(|s| {
                                let mut s = s.clone();
                                s.value = s.get(k)?;
                                Some(s)
                            })
                            .collect(),
                    };
                    let r = pair_ratios(&num, &d.samples, spec.den_scale, spec.same_placement);
                    (summarize(&r), placement_of(&n.samples))
                }
                _ => (None, "-"),
            };
            let why = why.or_else(|| {
                ratio
                    .is_none()
                    .then(|| "no valid pair of samples in the same repeat and placement".into())
            });
            Some(RatioOut {
                verdict: verdict(spec.target, ratio),
                spec,
                ratio,
                why,
                placement,
            })
        })
        .collect()
}

/// Median of an extra key over a figure's valid samples.
fn extra_median(f: &Figure, key: &str) -> Option<f64> {
    let v: Vec<f64> = f
        .samples
        .iter()
        .filter(|s| !s.void)
        .filter_map(|s| s.get(key))
        .collect();
    summarize(&v).map(|s| s.median)
}

fn fig_median(o: &Outcome, key: &str) -> Option<f64> {
    figure(o, key).and_then(|f| summarize(&valid_values(&f.samples)).map(|s| s.median))
}

/// The link-model rows for every ring measured.
pub fn link_rows(o: &Outcome) -> Vec<linkmodel::Row> {
    let mut rows = Vec::new();
    for r in zerohop::RINGS {
        if let Some(f) = figure(o, &format!("zerohop.{r}.pingpong")) {
            if let (Some(rtt), Some(rd), Some(wr)) = (
                fig_median(o, &f.key),
                extra_median(f, "remote_reads_per_pkt"),
                extra_median(f, "remote_writes_per_pkt"),
            ) {
                rows.push(linkmodel::ping_pong(r, rtt, rd, wr));
            }
        }
        for size in [64usize, 1500] {
            let key = format!("zerohop.{r}.{size}.b32");
            if let Some(f) = figure(o, &key) {
                if let (Some(mpps), Some(rd), Some(wr)) = (
                    fig_median(o, &key),
                    extra_median(f, "remote_reads_per_pkt"),
                    extra_median(f, "remote_writes_per_pkt"),
                ) {
                    rows.push(linkmodel::throughput(
                        r,
                        &format!("{size} B one-way, burst 32"),
                        mpps,
                        rd,
                        wr,
                        32,
                    ));
                }
            }
        }
    }
    rows
}

fn fmt_sum(s: Option<Summary>, prec: usize) -> String {
    match s {
        Some(s) => format!("{:.p$} ({:.p$}-{:.p$})", s.median, s.min, s.max, p = prec),
        None => "-".into(),
    }
}

fn prec(v: f64) -> usize {
    if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else {
        2
    }
}

fn target_text(t: Target) -> String {
    match t {
        Target::AtLeast(x) => format!(">= {x}x"),
        Target::AtMost(x) => format!("<= {x}x"),
        Target::Report => "reported".into(),
    }
}

fn plain_words(r: &RatioOut) -> String {
    match (r.verdict, r.ratio) {
        ("met", Some(s)) => format!(
            "**met** ({:.2}x, target {})",
            s.median,
            target_text(r.spec.target)
        ),
        ("missed", Some(s)) => format!(
            "**missed**: {:.2}x where the target is {}",
            s.median,
            target_text(r.spec.target)
        ),
        ("reported", Some(_)) => "no target; reported".into(),
        _ => format!(
            "**not measured**: {}",
            r.why.clone().unwrap_or_else(|| "no data".into())
        ),
    }
}

/// The generated markdown block (markers included).
pub fn markdown(o: &Outcome, svg_rel: Option<&str>) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "{BEGIN}");
    let _ = writeln!(
        m,
        "## Side by side, one command (generated by `compare`; do not edit by hand)\n"
    );
    let _ = writeln!(m, "- Command: `{}`", o.command);
    let _ = writeln!(
        m,
        "- Machine: {}, {} CPUs, {} GiB, Linux {}",
        o.machine.cpu, o.machine.cores, o.machine.mem_gib, o.machine.kernel
    );
    let _ = writeln!(m, "- Date: {}", o.machine.date);
    // More than a quarter of the machine in use by others just before the run.
    let busy = o.machine.cpu_busy_before > 0.25;
    let _ = writeln!(
        m,
        "- CPU in use by other processes in the second before the run: {:.0}%; load average (1 min) at start / end: {:.2} / {:.2} (the end value includes this run's own two pinned processes){}",
        o.machine.cpu_busy_before * 100.0,
        o.machine.load_before,
        o.machine.load_after,
        if busy {
            " -- **the machine was busy: other processes competed for the two cores, so these figures are noise, not results; run again on an idle machine**"
        } else {
            ""
        }
    );
    let (mut near, mut far, mut void) = (0, 0, 0);
    let mut probes = Vec::new();
    for f in o.figures.iter().filter(|f| f.cross_core) {
        for s in &f.samples {
            if s.void {
                void += 1;
            } else if s.placement == "near" {
                near += 1;
            } else if s.placement == "far" {
                far += 1;
            }
            probes.extend(s.probe_before_ns);
        }
    }
    let _ = writeln!(
        m,
        "- Placement (probe: 1-line ping-pong between cores 0 and 1, before and after every sample; near < 250 ns <= far): {near} near samples, {far} far, {void} void (probe changed or failed; each void sample was run again up to {} times); probe RTT {} ns",
        crate::stats::VOID_RETRIES,
        fmt_sum(summarize(&probes), 0)
    );
    let _ = writeln!(
        m,
        "- {} interleaved repeat(s){}; wall time {:.0} s. Figures: median (min-max) over valid samples; ratios: computed within each repeat (same placement for cross-core pairs), median (min-max) over repeats.\n",
        o.repeats,
        if o.quick { " (--quick: short runs, not for conclusions)" } else { "" },
        o.wall_s
    );

    let rs = ratios(o);
    let _ = writeln!(m, "### Ratios and targets\n");
    let _ = writeln!(
        m,
        "| ratio | median (min-max) | placement | target | verdict |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|");
    // Ratios whose peer was not measured at all: one row per reason.
    let mut missing: Vec<(String, Vec<&RatioOut>)> = Vec::new();
    for r in rs.iter().filter(|r| r.ratio.is_none()) {
        let why = r.why.clone().unwrap_or_default();
        match missing.iter_mut().find(|(w, _)| *w == why) {
            Some((_, v)) => v.push(r),
            None => missing.push((why, vec![r])),
        }
    }
    for r in rs.iter().filter(|r| r.ratio.is_some()) {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} |",
            r.spec.label,
            r.ratio
                .map(|s| format!("{:.2}x ({:.2}-{:.2})", s.median, s.min, s.max))
                .unwrap_or_else(|| "-".into()),
            r.placement,
            target_text(r.spec.target),
            plain_words(r)
        );
    }
    for (why, v) in &missing {
        let targets: Vec<String> = v
            .iter()
            .filter(|r| r.spec.target != Target::Report)
            .map(|r| target_text(r.spec.target))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let _ = writeln!(
            m,
            "| {} ratio(s): {} | - | - | {} | **not measured**: {} |",
            v.len(),
            v.iter()
                .map(|r| r.spec.label.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            if targets.is_empty() {
                "reported".into()
            } else {
                targets.join(", ")
            },
            why
        );
    }
    if let Some(svg) = svg_rel {
        let _ = writeln!(m, "\n![zerohop ratios to peers and floor]({svg})");
    }

    let _ = writeln!(m, "\n### Figures\n");
    let _ = writeln!(
        m,
        "| figure | unit | median (min-max) | valid / void / failed | placement | remote reads / writes per packet |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|");
    for f in &o.figures {
        let vals = valid_values(&f.samples);
        let s = summarize(&vals);
        let nvoid = f.samples.iter().filter(|s| s.void).count();
        let rw = match (
            extra_median(f, "remote_reads_per_pkt"),
            extra_median(f, "remote_writes_per_pkt"),
        ) {
            (Some(r), Some(w)) => format!("{r:.2} / {w:.2}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} / {} / {} | {} | {} |",
            f.label,
            f.unit,
            fmt_sum(s, s.map_or(1, |s| prec(s.median))),
            vals.len(),
            nvoid,
            f.errors.len(),
            if f.cross_core {
                placement_of(&f.samples)
            } else {
                "1 core"
            },
            rw
        );
    }
    let errs: Vec<String> = o
        .figures
        .iter()
        .flat_map(|f| f.errors.iter().map(move |e| format!("{}: {e}", f.key)))
        .collect();
    if !errs.is_empty() {
        let _ = writeln!(m, "\nFailed attempts:\n");
        for e in errs.iter().take(20) {
            let _ = writeln!(m, "- {}", zerohop::one_line(e));
        }
    }

    let rows = link_rows(o);
    let _ = writeln!(m, "\n### Link model (GUIDE.md section 6)\n");
    let _ = writeln!(
        m,
        "Computed from the remote reads and writes per packet measured in this run (`pmd::queue::measure`: every area a side reaches through the link wrapped in `Counted`) and the local time measured in this run: time per packet = local + reads x R + D / burst; RTT = local RTT + reads per round trip x R + 2 D. R = remote-read cost, D = doorbell cost = {:.0} ns (`LinkCost::pcie()`), posted writes free. Not run through the `LinkModel` wrapper (busy-waiting 1 us per read would not fit the time budget).\n",
        linkmodel::doorbell_ns()
    );
    let _ = writeln!(
        m,
        "| ring | case | remote reads / writes per packet | measured here | R = 0.5 us | R = 1 us |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|");
    for r in &rows {
        let show = |ns: f64| {
            if r.case.contains("RTT") {
                format!("{:.2} us RTT", ns / 1e3)
            } else {
                format!("{:.1} ns/pkt ({:.2} Mpps)", ns, 1e3 / ns)
            }
        };
        let _ = writeln!(
            m,
            "| {} | {} | {:.2} / {:.2} | {} | {} | {} |",
            r.ring,
            r.case,
            r.reads,
            r.writes,
            show(r.local_ns),
            show(r.model_ns[0]),
            show(r.model_ns[1])
        );
    }
    if rows.is_empty() {
        let _ = writeln!(m, "| - | zerohop section not run | - | - | - | - |");
    }

    let _ = writeln!(m, "\n### Queue-pair scaling\n");
    if o.scaling.is_empty() {
        let _ = writeln!(m, "Not run (see Skipped).");
    } else {
        let _ = writeln!(m, "| queue pairs | aggregate Mpps (64 B rxonly, posted) |");
        let _ = writeln!(m, "|---|---|");
        for (n, r) in &o.scaling {
            let _ = writeln!(
                m,
                "| {n} | {} |",
                match r {
                    Ok(x) => format!("{x:.2}"),
                    Err(e) => format!("failed: {e}"),
                }
            );
        }
    }

    let _ = writeln!(m, "\n### Skipped\n");
    if o.skipped.is_empty() {
        let _ = writeln!(m, "Nothing.");
    }
    for s in &o.skipped {
        let _ = writeln!(m, "- {s}");
    }
    if !o.notes.is_empty() {
        let _ = writeln!(m, "\n### Notes\n");
        for s in &o.notes {
            let _ = writeln!(m, "- {s}");
        }
    }
    let _ = writeln!(m, "{END}");
    m
}

/// Byte offset of `marker` standing alone at the start of a line of `doc`.
fn line_marker(doc: &str, marker: &str, from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = doc.get(at..)?.find(marker) {
        let i = at + i;
        let starts = i == 0 || doc.as_bytes()[i - 1] == b'\n';
        let rest = &doc[i + marker.len()..];
        if starts && (rest.is_empty() || rest.starts_with('\n')) {
            return Some(i);
        }
        at = i + marker.len();
    }
    None
}

/// Replaces the generated block of `doc` (markers alone on their lines; a mention of
/// them inside a sentence does not count), or inserts it after the first line.
pub fn splice(doc: &str, block: &str) -> String {
    let a = line_marker(doc, BEGIN, 0);
    let b = a.and_then(|a| line_marker(doc, END, a));
    if let (Some(a), Some(b)) = (a, b) {
        {
            let end = b + END.len();
            let end = if doc[end..].starts_with('\n') {
                end + 1
            } else {
                end
            };
            return format!("{}{}{}", &doc[..a], block, &doc[end..]);
        }
    }
    match doc.find('\n') {
        Some(i) => format!("{}\n{}\n{}", &doc[..=i], block, &doc[i + 1..]),
        None => format!("{doc}\n\n{block}"),
    }
}

/// The JSON document.
pub fn to_json(o: &Outcome) -> Value {
    let figs: Vec<Value> = o
        .figures
        .iter()
        .map(|f| {
            let s = summarize(&valid_values(&f.samples));
            json!({
                "key": f.key, "section": f.section, "label": f.label, "unit": f.unit,
                "median": s.map(|s| s.median), "min": s.map(|s| s.min), "max": s.map(|s| s.max),
                "valid": s.map_or(0, |s| s.n),
                "void": f.samples.iter().filter(|s| s.void).count(),
                "placement": if f.cross_core { placement_of(&f.samples) } else { "1 core" },
                "remote_reads_per_pkt": extra_median(f, "remote_reads_per_pkt"),
                "remote_writes_per_pkt": extra_median(f, "remote_writes_per_pkt"),
                "samples": f.samples, "errors": f.errors,
            })
        })
        .collect();
    json!({
        "command": o.command,
        "machine": o.machine,
        "repeats": o.repeats,
        "quick": o.quick,
        "wall_s": o.wall_s,
        "figures": figs,
        "ratios": ratios(o),
        "linkmodel": {
            "read_ns": linkmodel::READ_NS,
            "doorbell_ns": linkmodel::doorbell_ns(),
            "rows": link_rows(o),
        },
        "scaling": o.scaling.iter().map(|(n, r)| json!({
            "queue_pairs": n,
            "mpps": r.as_ref().ok(),
            "error": r.as_ref().err(),
        })).collect::<Vec<_>>(),
        "skipped": o.skipped,
        "notes": o.notes,
    })
}

/// Horizontal bars of every ratio with data, a line at 1x.
pub fn svg(o: &Outcome) -> Result<String, String> {
    let rs: Vec<RatioOut> = ratios(o)
        .into_iter()
        .filter(|r| r.ratio.is_some())
        .collect();
    let n = rs.len().max(1);
    // Scaled to the medians (whiskers past the edge are cut there), so one wild
    // maximum does not squash every bar.
    let xmax = rs
        .iter()
        .filter_map(|r| r.ratio.map(|s| s.median))
        .fold(1.5f64, f64::max)
        * 1.3;
    let h = (120 + 22 * n) as u32;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1100, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let labels: Vec<String> = rs.iter().map(|r| r.spec.label.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("zerohop / peer or floor, same run ({})", o.machine.date),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(470)
            .build_cartesian_2d(0f64..xmax, -0.5f64..(n as f64 - 0.5))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = y.round();
                if (y - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("ratio (x); bar = median, whisker = min-max; green = target met, red = missed, grey = no target")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, r) in rs.iter().enumerate() {
            let Some(s) = r.ratio else { continue };
            let y = i as f64;
            let color = match r.verdict {
                "met" => RGBColor(60, 160, 80),
                "missed" => RGBColor(200, 60, 50),
                _ => RGBColor(140, 140, 140),
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y - 0.35), (s.median.min(xmax), y + 0.35)],
                    color.filled(),
                )))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(s.min.min(xmax), y), (s.max.min(xmax), y)],
                    BLACK.stroke_width(1),
                )))
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(1.0, -0.5), (1.0, n as f64 - 0.5)],
                BLACK.stroke_width(1),
            )))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn relative(svg: &Path, md: &Path) -> String {
    let dir = md.parent().unwrap_or(Path::new(""));
    svg.strip_prefix(dir).unwrap_or(svg).display().to_string()
}

/// Prints the report and writes the files asked for.
pub fn emit(opts: &Opts, o: &Outcome) -> ExitCode {
    let mut ok = true;
    let svg_rel = match (&opts.svg, &opts.markdown) {
        (Some(s), Some(m)) => Some(relative(s, m)),
        (Some(s), None) => Some(s.display().to_string()),
        _ => None,
    };
    let block = markdown(o, svg_rel.as_deref());
    let json_stdout = opts.json.as_deref() == Some(Path::new("-"));
    if json_stdout {
        eprint!("{block}");
    } else {
        print!("{block}");
    }
    if let Some(p) = &opts.json {
        let text = serde_json::to_string_pretty(&to_json(o)).unwrap_or_default();
        if json_stdout {
            println!("{text}");
        } else if let Err(e) = std::fs::write(p, text + "\n") {
            eprintln!("compare: --json {}: {e}", p.display());
            ok = false;
        }
    }
    if let Some(p) = &opts.markdown {
        let doc = std::fs::read_to_string(p).unwrap_or_else(|_| "# Benchmarks\n".into());
        if let Err(e) = std::fs::write(p, splice(&doc, &block)) {
            eprintln!("compare: --markdown {}: {e}", p.display());
            ok = false;
        }
    }
    if let Some(p) = &opts.svg {
        let r = svg(o).and_then(|s| {
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            std::fs::write(p, s).map_err(|e| e.to_string())
        });
        if let Err(e) = r {
            eprintln!("compare: --svg {}: {e}", p.display());
            ok = false;
        }
    }
    eprintln!("compare: done in {:.0} s", o.wall_s);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Sample;

    fn fig(key: &str, vals: &[(f64, f64)]) -> Figure {
        Figure {
            key: key.into(),
            section: "x",
            label: key.into(),
            unit: "u",
            cross_core: true,
            samples: vals
                .iter()
                .enumerate()
                .map(|(i, &(v, p))| Sample::new(i, v, Some(p), Some(p), true))
                .collect(),
            errors: Vec::new(),
        }
    }

    fn outcome(figures: Vec<Figure>) -> Outcome {
        Outcome {
            command: "compare".into(),
            machine: Machine {
                cpu: "cpu".into(),
                cores: 2,
                kernel: "k".into(),
                mem_gib: 1.0,
                date: "today".into(),
                load_before: 0.1,
                load_after: 0.1,
                cpu_busy_before: 0.01,
            },
            repeats: 2,
            quick: true,
            figures,
            skipped: vec!["DPDK section: not asked for".into()],
            notes: Vec::new(),
            scaling: Vec::new(),
            wall_s: 1.0,
        }
    }

    #[test]
    fn ratios_verdicts_and_missing_peers() {
        let o = outcome(vec![
            fig("floor.rtt1", &[(100.0, 100.0), (110.0, 100.0)]),
            fig("zerohop.posted.pingpong", &[(300.0, 100.0), (330.0, 100.0)]),
            fig("zerohop.posted.64.b32", &[(20.0, 100.0)]),
            fig("spsc.zh_chunk", &[(100.0, 100.0), (90.0, 400.0)]),
            fig("spsc.rtrb", &[(100.0, 100.0), (100.0, 100.0)]),
        ]);
        let rs = ratios(&o);
        let pp = rs
            .iter()
            .find(|r| r.spec.num == "zerohop.posted.pingpong" && r.spec.den == "floor.rtt1")
            .unwrap();
        assert_eq!(pp.verdict, "missed");
        assert_eq!(pp.ratio.unwrap().median, 3.0);
        let dp = rs
            .iter()
            .find(|r| r.spec.num == "zerohop.posted.64.b32")
            .unwrap();
        assert_eq!(dp.verdict, "no data");
        assert!(dp.why.as_deref().unwrap().contains("dpdk"));
        // Repeat 1 of the SPSC pair is in different placements: only repeat 0 pairs.
        let sp = rs
            .iter()
            .find(|r| r.spec.num == "spsc.zh_chunk" && r.spec.den == "spsc.rtrb");
        assert_eq!(sp.unwrap().ratio.unwrap().n, 1);
        assert_eq!(sp.unwrap().verdict, "met");
        let md = markdown(&o, Some("img/compare.svg"));
        assert!(md.starts_with(BEGIN) && md.trim_end().ends_with(END));
        assert!(md.contains("**missed**: 3.00x where the target is <= 1.3x"));
        assert!(md.contains("DPDK section: not asked for"));
        assert!(md.contains("**not measured**: dpdk not measured (see Skipped)"));
        let j = to_json(&o);
        for k in [
            "command",
            "machine",
            "figures",
            "ratios",
            "linkmodel",
            "skipped",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert!(svg(&o).unwrap().starts_with("<svg"));
    }

    #[test]
    fn splice_replaces_or_inserts() {
        let block = format!("{BEGIN}\nnew\n{END}\n");
        let doc = format!("# T\nintro\n{BEGIN}\nold\n{END}\nhistory\n");
        assert_eq!(
            splice(&doc, &block),
            format!("# T\nintro\n{block}history\n")
        );
        let fresh = splice("# T\nhistory\n", &block);
        assert_eq!(fresh, format!("# T\n\n{block}\nhistory\n"));
        // Idempotent.
        assert_eq!(splice(&fresh, &block), fresh);
    }
}
