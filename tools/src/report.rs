//! `zerohop report FILE...`: latency results side by side, and a picture of them.
//!
//! Each FILE is one of (detected from its content, not its name):
//!
//! - a `.hgrm` percentile distribution (HdrHistogram's classic text; see [`crate::latency`]),
//!   whose values are taken to be in microseconds (`--hgrm-unit` to change);
//! - the latency JSON (`--latency-json`: `{"unit": "ns", "p50": .., "max": .., ..}`);
//! - the `--json` output of `zerohop testpmd` / `zerohop demo`: an object, or an array of
//!   objects, each with `latency_ns: {p50, p90, p99, p999, p9999, max}`.
//!
//! The plot is HdrHistogram's usual picture: latency on a log y axis against percentile
//! on a `log10(1/(1-p))` x axis labelled 0%, 90%, 99%, 99.9%, ...; one line per run. A
//! `.hgrm` gives the full curve, a JSON summary its six points. The 100% point (the max)
//! is drawn at the right edge of the axis.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::latency::{parse_hgrm, HgrmError, LatencySummary, SUMMARY_LEVELS};

/// `zerohop report` arguments.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Result files: .hgrm percentile distributions, latency JSON, or testpmd/demo --json
    /// output.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Draw latency against percentile into this file (.svg).
    #[arg(long, value_name = "OUT.svg")]
    plot: Option<PathBuf>,
    /// Names for the runs, comma-separated, in order (default: the file names).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    labels: Vec<String>,
    /// Print the percentiles as one JSON array instead of the table.
    #[arg(long)]
    json: bool,
    /// Unit of the values in .hgrm files (zerohop writes microseconds, as HdrHistogram's
    /// tools do for nanosecond recordings).
    #[arg(long, value_enum, default_value_t = HgrmUnit::Us)]
    hgrm_unit: HgrmUnit,
}

/// Unit of `.hgrm` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HgrmUnit {
    /// Nanoseconds (scaling ratio 1).
    Ns,
    /// Microseconds (scaling ratio 1000).
    Us,
    /// Milliseconds (scaling ratio 1e6).
    Ms,
}

impl HgrmUnit {
    fn ns_per_unit(self) -> f64 {
        match self {
            HgrmUnit::Ns => 1.0,
            HgrmUnit::Us => 1e3,
            HgrmUnit::Ms => 1e6,
        }
    }
}

/// Why a report fails.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file that does not exist.
    #[error("{}: no such file", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// A file that cannot be read.
    #[error("{}: cannot read: {err}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// A file that is none of the formats.
    #[error("{}: not a latency result: {why} (expected an HdrHistogram .hgrm percentile distribution, latency JSON with p50..max, or testpmd --json output with latency_ns)", path.display())]
    NotLatency {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// `--labels` does not name every run.
    #[error("--labels gives {given} names but the files hold {runs} runs")]
    Labels {
        /// Names given.
        given: usize,
        /// Runs read.
        runs: usize,
    },
    /// An output format we cannot write.
    #[error("{}: {why}", path.display())]
    PlotFormat {
        /// The output path.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// Drawing or writing the picture failed.
    #[error("{}: cannot write the plot: {why}", path.display())]
    Plot {
        /// The output path.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

impl ReportError {
    /// The exit code: 2 for bad input or arguments, 1 for failures writing output.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReportError::Plot { .. } => 1,
            _ => 2,
        }
    }
}

/// One run: a label, its summary, and the points of its curve.
#[derive(Debug, Clone)]
pub struct Run {
    /// Name in the table and the legend.
    pub label: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Percentiles in ns.
    pub summary: LatencySummary,
    /// `(quantile, ns)` points, quantile ascending; the last one is the max at 1.0.
    pub curve: Vec<(f64, f64)>,
}

/// The `latency_ns` object of testpmd/demo JSON (extra fields ignored).
#[derive(Deserialize)]
struct LatencyNs {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    p9999: u64,
    max: u64,
    #[serde(default)]
    mean: f64,
    #[serde(default)]
    count: u64,
}

fn summary_of(l: &LatencyNs) -> LatencySummary {
    LatencySummary {
        unit: crate::latency::Unit::Ns,
        p50: l.p50,
        p90: l.p90,
        p99: l.p99,
        p999: l.p999,
        p9999: l.p9999,
        max: l.max,
        mean: l.mean,
        count: l.count,
    }
}

fn summary_curve(s: &LatencySummary) -> Vec<(f64, f64)> {
    let v = s.values();
    let mut c: Vec<(f64, f64)> = SUMMARY_LEVELS
        .iter()
        .zip(v)
        .map(|(&(_, q), ns)| (q, ns as f64))
        .collect();
    c.push((1.0, s.max as f64));
    c
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Reads one file into one or more runs (a demo JSON array holds one run per ring mode).
pub fn load(path: &Path, hgrm_unit: HgrmUnit) -> Result<Vec<Run>, ReportError> {
    let text = std::fs::read(path).map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            ReportError::NotFound {
                path: path.to_owned(),
            }
        } else {
            ReportError::Read {
                path: path.to_owned(),
                err,
            }
        }
    })?;
    let not = |why: String| ReportError::NotLatency {
        path: path.to_owned(),
        why,
    };
    let text = String::from_utf8(text).map_err(|_| not("not UTF-8 text".into()))?;
    let name = stem(path);
    let trimmed = text.trim_start();
    // `{` is JSON; `[` may be JSON (a demo array) or something else (a TOML file).
    let json: Option<serde_json::Value> = if trimmed.starts_with('{') {
        Some(serde_json::from_str(trimmed).map_err(|e| not(format!("bad JSON: {e}")))?)
    } else if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).ok()
    } else {
        None
    };
    if let Some(v) = json {
        let items: Vec<&serde_json::Value> = match &v {
            serde_json::Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        if items.is_empty() {
            return Err(not("an empty JSON array".into()));
        }
        let many = items.len() > 1;
        let mut runs = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let lat = item.get("latency_ns").unwrap_or(item);
            let l: LatencyNs = serde_json::from_value(lat.clone()).map_err(|e| {
                not(format!(
                    "JSON without latency percentiles ({e}; need p50, p90, p99, p999, p9999, max in ns)"
                ))
            })?;
            let summary = summary_of(&l);
            let label = if many {
                // A demo array: one run per ring mode.
                let tag = item
                    .get("mode")
                    .or_else(|| item.get("ring"))
                    .and_then(|m| m.as_str())
                    .map_or_else(|| i.to_string(), str::to_owned);
                format!("{name}:{tag}")
            } else {
                name.clone()
            };
            runs.push(Run {
                label,
                file: path.to_owned(),
                curve: summary_curve(&summary),
                summary,
            });
        }
        return Ok(runs);
    }
    let h = parse_hgrm(&text).map_err(|e| match e {
        HgrmError::NoHeader => not("no HdrHistogram \"Value Percentile TotalCount\" header".into()),
        other => not(other.to_string()),
    })?;
    let scale = hgrm_unit.ns_per_unit();
    let mut curve: Vec<(f64, f64)> = h
        .rows
        .iter()
        .map(|r| (r.quantile, r.value * scale))
        .collect();
    if let Some(max) = h.max {
        if curve.last().is_some_and(|&(q, _)| q < 1.0) {
            curve.push((1.0, max * scale));
        }
    }
    Ok(vec![Run {
        label: name,
        file: path.to_owned(),
        summary: h.summary(scale),
        curve,
    }])
}

/// The side-by-side table (values in ns); with two runs a last column gives B/A.
pub fn table(runs: &[Run]) -> String {
    let w = runs
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0)
        .max(12);
    let mut s = String::new();
    let _ = write!(s, "{:<10}", "(ns)");
    for r in runs {
        let _ = write!(s, " {:>w$}", r.label);
    }
    let ratio = runs.len() == 2;
    if ratio {
        let _ = write!(s, " {:>8}", "B/A");
    }
    s.push('\n');
    let mut rows: Vec<(&str, Vec<f64>)> = SUMMARY_LEVELS
        .iter()
        .enumerate()
        .map(|(i, &(name, _))| {
            (
                name,
                runs.iter().map(|r| r.summary.values()[i] as f64).collect(),
            )
        })
        .collect();
    rows.push(("max", runs.iter().map(|r| r.summary.max as f64).collect()));
    rows.push(("mean", runs.iter().map(|r| r.summary.mean).collect()));
    for (name, vals) in rows {
        let _ = write!(s, "{name:<10}");
        for v in &vals {
            let _ = write!(s, " {:>w$.0}", v);
        }
        if ratio {
            if vals[0] > 0.0 {
                let _ = write!(s, " {:>7.2}x", vals[1] / vals[0]);
            } else {
                let _ = write!(s, " {:>8}", "-");
            }
        }
        s.push('\n');
    }
    let _ = write!(s, "{:<10}", "count");
    for r in runs {
        let _ = write!(s, " {:>w$}", r.summary.count);
    }
    s.push('\n');
    s
}

/// One run in `--json` output.
#[derive(Serialize)]
struct JsonRun<'a> {
    label: &'a str,
    file: String,
    #[serde(flatten)]
    summary: &'a LatencySummary,
}

/// `--json` output: an array of `{label, file, unit, p50, .., count}`.
pub fn json(runs: &[Run]) -> String {
    let v: Vec<JsonRun> = runs
        .iter()
        .map(|r| JsonRun {
            label: &r.label,
            file: r.file.display().to_string(),
            summary: &r.summary,
        })
        .collect();
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Line colours, in order (Tableau 10).
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn x_of(q: f64, xmax: f64) -> f64 {
    if q >= 1.0 {
        xmax
    } else {
        (1.0 / (1.0 - q)).log10().min(xmax)
    }
}

fn percent_label(x: f64) -> String {
    let k = x.round();
    if (x - k).abs() > 1e-6 || k < 0.0 {
        return String::new();
    }
    if k == 0.0 {
        return "0%".into();
    }
    // 1 -> 90%, 2 -> 99%, 3 -> 99.9%, ...
    let decimals = (k as usize).saturating_sub(2);
    format!("{:.*}%", decimals, 100.0 * (1.0 - 10f64.powi(-(k as i32))))
}

fn ns_label(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{} us", ns / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// Latency gridlines: 1, 2, 5 x 10^k ns inside `lo..=hi`.
fn y_keys(lo: f64, hi: f64) -> Vec<f64> {
    let mut keys = Vec::new();
    let mut decade = 1.0f64;
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let k = decade * m;
            if (lo..=hi).contains(&k) {
                keys.push(k);
            }
        }
        decade *= 10.0;
    }
    keys
}

/// Renders the runs as an SVG document.
pub fn svg(runs: &[Run]) -> Result<String, String> {
    let finite_max_x = runs
        .iter()
        .flat_map(|r| r.curve.iter())
        .filter(|&&(q, _)| q < 1.0)
        .map(|&(q, _)| (1.0 / (1.0 - q)).log10())
        .fold(0.0f64, f64::max);
    let xmax = finite_max_x.ceil().clamp(5.0, 9.0);
    let (lo, hi) = runs
        .iter()
        .flat_map(|r| r.curve.iter())
        .fold((f64::MAX, 1.0f64), |(lo, hi), &(_, v)| {
            (lo.min(v.max(1.0)), hi.max(v))
        });
    let lo = if lo == f64::MAX { 1.0 } else { lo };
    let (ylo, yhi) = ((lo * 0.8).max(1.0), (hi * 1.25).max(lo * 2.0));

    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption("latency by percentile", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(80)
            .build_cartesian_2d(
                0f64..xmax,
                (ylo..yhi).log_scale().with_key_points(y_keys(ylo, yhi)),
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(xmax as usize + 1)
            .x_label_formatter(&|x| percent_label(*x))
            .y_label_formatter(&|y| ns_label(*y))
            .x_desc("percentile")
            .y_desc("latency")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, r) in runs.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = r
                .curve
                .iter()
                .map(|&(q, v)| (x_of(q, xmax), v.max(ylo)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(r.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Writes the plot to `path` (SVG only); nothing is written on error.
pub fn plot(runs: &[Run], path: &Path) -> Result<(), ReportError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("svg") => {}
        Some("png") => {
            return Err(ReportError::PlotFormat {
                path: path.to_owned(),
                why: "PNG is not supported in this build: plotters' bitmap backend needs a font \
                      library to draw text; write an .svg (any browser shows it, and \
                      `rsvg-convert -o out.png out.svg` makes a PNG)",
            })
        }
        _ => {
            return Err(ReportError::PlotFormat {
                path: path.to_owned(),
                why: "the plot file must end in .svg",
            })
        }
    }
    let doc = svg(runs).map_err(|why| ReportError::Plot {
        path: path.to_owned(),
        why,
    })?;
    std::fs::write(path, doc).map_err(|e| ReportError::Plot {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

fn report(a: &ReportArgs) -> Result<String, ReportError> {
    let mut runs = Vec::new();
    for f in &a.files {
        runs.extend(load(f, a.hgrm_unit)?);
    }
    if !a.labels.is_empty() {
        if a.labels.len() != runs.len() {
            return Err(ReportError::Labels {
                given: a.labels.len(),
                runs: runs.len(),
            });
        }
        for (r, l) in runs.iter_mut().zip(&a.labels) {
            r.label = l.trim().to_owned();
        }
    } else {
        // Same file names in different directories: use the paths instead.
        let mut seen = std::collections::HashSet::new();
        if !runs.iter().all(|r| seen.insert(r.label.clone())) {
            for r in runs.iter_mut() {
                if !r.label.contains(':') {
                    r.label = r.file.display().to_string();
                }
            }
        }
    }
    if let Some(p) = &a.plot {
        plot(&runs, p)?;
    }
    Ok(if a.json {
        json(&runs) + "\n"
    } else {
        table(&runs)
    })
}

/// Runs `zerohop report`.
pub fn run(a: &ReportArgs) -> ExitCode {
    match report(a) {
        Ok(text) => {
            print!("{text}");
            if let (Some(p), false) = (&a.plot, a.json) {
                println!("plot: {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zerohop report: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_labels() {
        assert_eq!(percent_label(0.0), "0%");
        assert_eq!(percent_label(1.0), "90%");
        assert_eq!(percent_label(2.0), "99%");
        assert_eq!(percent_label(3.0), "99.9%");
        assert_eq!(percent_label(5.0), "99.999%");
        assert_eq!(percent_label(2.5), "");
    }

    #[test]
    fn x_axis_is_log_inverse() {
        assert!((x_of(0.99, 5.0) - 2.0).abs() < 1e-9);
        assert_eq!(x_of(1.0, 5.0), 5.0);
        assert_eq!(x_of(0.0, 5.0), 0.0);
    }
}
