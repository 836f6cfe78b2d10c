//! Latency results on disk: HdrHistogram's percentile-distribution text (`.hgrm`) and a
//! small JSON summary.
//!
//! zerohop records latencies in **nanoseconds**. The `.hgrm` text is written the way
//! HdrHistogram's `outputPercentileDistribution(out, 5, 1000.0)` prints it (Java, and the
//! C library's `hdr_percentiles_print(.., 5, 1000.0, CLASSIC)`): values divided by the
//! *output value unit scaling ratio* [`NS_PER_US`] = 1000, i.e. printed in
//! **microseconds** with as many decimals as the histogram has significant digits (3
//! decimals of a microsecond = whole nanoseconds), five percentile ticks per half distance
//! to 100%:
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!                                                          <- empty line
//!        1.000 0.000000000000          1           1.00    <- %12.{sigfig}f %2.12f %10d %14.2f
//!        ...
//!      100.031 1.000000000000       1000                   <- the 100% row has no last column
//! #[Mean    =       50.500, StdDeviation   =       28.866]
//! #[Max     =      100.031, Total count    =         1000]
//! #[Buckets =           27, SubBuckets     =         2048]
//! ```
//!
//! The `Value` column is the highest value equivalent (within the histogram's precision)
//! to the values counted at that percentile level, `Percentile` the level iterated to
//! (0..1), `TotalCount` the number of values at or below `Value`. HdrHistogram's plotters
//! (`HistogramLogAnalyzer`, hdr-plot, the online plotter) read this text.
//!
//! The JSON summary ([`LatencySummary`]) holds `p50, p90, p99, p999, p9999, max, mean,
//! count` in ns, plus `"unit": "ns"`.

// The writer half (`write_hgrm`, `write_latency_json`) serves `zerohop testpmd --hgrm /
// --latency-json`; `report` uses the reader half.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Nanoseconds per microsecond: the output value unit scaling ratio zerohop writes
/// `.hgrm` files with (values recorded in ns, printed in us).
pub const NS_PER_US: f64 = 1000.0;

/// Percentile ticks per half distance to 100%, as HdrHistogram's tools use by default.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Latency percentiles in nanoseconds, the `--latency-json` format.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Always `"ns"`.
    #[serde(default = "unit_ns")]
    pub unit: Unit,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest value recorded.
    pub max: u64,
    /// Mean (NaN-free: 0 for an empty histogram).
    #[serde(default)]
    pub mean: f64,
    /// Number of values recorded.
    #[serde(default)]
    pub count: u64,
}

/// The unit of a [`LatencySummary`] (only nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// Nanoseconds.
    #[serde(rename = "ns")]
    Ns,
}

fn unit_ns() -> Unit {
    Unit::Ns
}

/// The percentile levels of a [`LatencySummary`], as quantiles, with their names.
pub const SUMMARY_LEVELS: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
];

impl LatencySummary {
    /// The summary of a histogram recorded in ns.
    pub fn of(h: &Histogram<u64>) -> Self {
        let mean = h.mean();
        LatencySummary {
            unit: Unit::Ns,
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: if mean.is_finite() { mean } else { 0.0 },
            count: h.len(),
        }
    }

    /// The values at [`SUMMARY_LEVELS`] in order, then the max.
    pub fn values(&self) -> [u64; 6] {
        [
            self.p50, self.p90, self.p99, self.p999, self.p9999, self.max,
        ]
    }

    /// Pretty JSON text.
    pub fn to_json(self) -> String {
        serde_json::to_string_pretty(&self).unwrap_or_default()
    }
}

/// HdrHistogram's sub-bucket count for `sigfig` significant digits (2048 for 3).
pub fn sub_bucket_count(sigfig: u8) -> u32 {
    let largest_single_unit = 2.0 * 10f64.powi(i32::from(sigfig));
    let magnitude = largest_single_unit.log2().ceil() as u32;
    1 << magnitude.max(1)
}

/// One step of HdrHistogram's percentile iteration (before scaling).
#[derive(Debug, Clone, Copy, PartialEq)]
struct PercentileStep {
    /// Highest value equivalent to the bucket reached.
    value: u64,
    /// The percentile level iterated to, 0..=100.
    percent: f64,
    /// Values at or below `value`.
    total_count: u64,
}

/// HdrHistogram's `PercentileIterator`, in Java's arithmetic (levels in percent, so the
/// rows fall on the same levels as Java's output): start at 0%, step by
/// `100 / (ticks * 2^(floor(log2(100 / (100 - level))) + 1))`, emit a row each time the
/// cumulative percentile reaches the level; once the last value is reached, one row at
/// the current level and a final row at 100%.
fn percentile_rows(h: &Histogram<u64>, ticks_per_half_distance: u32) -> Vec<PercentileStep> {
    let mut rows = Vec::new();
    let total = h.len();
    if total == 0 {
        return rows;
    }
    let ticks = f64::from(ticks_per_half_distance.max(1));
    let mut level = 0.0f64;
    let mut to_here = 0u64;
    let mut last = 0u64;
    'values: for v in h.iter_recorded() {
        to_here += v.count_since_last_iteration();
        last = v.value_iterated_to();
        let current = 100.0 * to_here as f64 / total as f64;
        while current >= level {
            rows.push(PercentileStep {
                value: last,
                percent: level,
                total_count: to_here,
            });
            let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as i32;
            let reporting_ticks = ticks * 2f64.powi(halvings + 1);
            level += 100.0 / reporting_ticks;
            if to_here >= total {
                break 'values;
            }
        }
    }
    rows.push(PercentileStep {
        value: last,
        percent: 100.0,
        total_count: to_here,
    });
    rows
}

/// The `.hgrm` text of `h` (values divided by `scale`, e.g. [`NS_PER_US`]).
///
/// An empty histogram gives the header and the footer only, as HdrHistogram prints it.
pub fn hgrm_string(h: &Histogram<u64>, ticks_per_half_distance: u32, scale: f64) -> String {
    let digits = usize::from(h.sigfig());
    let mut s = String::new();
    // Infallible: writing into a String.
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for r in percentile_rows(h, ticks_per_half_distance) {
        let value = r.value as f64 / scale;
        let level = r.percent / 100.0;
        let total = r.total_count;
        if r.percent < 100.0 {
            let _ = writeln!(
                s,
                "{value:12.digits$} {level:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - level)
            );
        } else {
            let _ = writeln!(s, "{value:12.digits$} {level:2.12} {total:10}");
        }
    }
    let (mean, stddev) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale)
    };
    let _ = writeln!(
        s,
        "#[Mean    = {mean:12.digits$}, StdDeviation   = {stddev:12.digits$}]"
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.digits$}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    s
}

/// Writes `h` as `.hgrm` text (values in us, see the [module docs](self)) to `path`.
pub fn write_hgrm(path: &Path, h: &Histogram<u64>) -> io::Result<()> {
    std::fs::write(path, hgrm_string(h, TICKS_PER_HALF_DISTANCE, NS_PER_US))
}

/// Writes the [`LatencySummary`] of `h` as JSON to `path`.
pub fn write_latency_json(path: &Path, h: &Histogram<u64>) -> io::Result<()> {
    std::fs::write(path, LatencySummary::of(h).to_json() + "\n")
}

/// One row of a `.hgrm` table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HgrmRow {
    /// The value, in the file's unit.
    pub value: f64,
    /// The percentile level as a quantile, 0..=1.
    pub quantile: f64,
    /// Values at or below `value`.
    pub total_count: u64,
}

/// A parsed `.hgrm` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Hgrm {
    /// The rows in file order (quantile ascending).
    pub rows: Vec<HgrmRow>,
    /// `#[Mean = ..]`, in the file's unit, if present.
    pub mean: Option<f64>,
    /// `StdDeviation`, if present.
    pub stddev: Option<f64>,
    /// `#[Max = ..]`, if present.
    pub max: Option<f64>,
    /// `Total count`, if present.
    pub total_count: Option<u64>,
}

/// Why a `.hgrm` text does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HgrmError {
    /// No `Value Percentile TotalCount` header line.
    #[error("not an HdrHistogram percentile distribution: no \"Value Percentile TotalCount\" header line")]
    NoHeader,
    /// A row that is not `value percentile count [1/(1-p)]`.
    #[error("line {line}: {why}")]
    BadRow {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A header but no rows.
    #[error("the percentile distribution has no rows (empty histogram)")]
    Empty,
}

fn num<T: std::str::FromStr>(tok: Option<&str>, line: usize, what: &str) -> Result<T, HgrmError> {
    tok.and_then(|t| t.parse().ok())
        .ok_or_else(|| HgrmError::BadRow {
            line,
            why: format!("expected a number for {what}"),
        })
}

fn footer_field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(key)? + key.len();
    let rest = line[at..].trim_start().strip_prefix('=')?;
    let end = rest.find([',', ']']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Parses `.hgrm` text (HdrHistogram's classic format; values stay in the file's unit).
pub fn parse_hgrm(text: &str) -> Result<Hgrm, HgrmError> {
    let mut out = Hgrm {
        rows: Vec::new(),
        mean: None,
        stddev: None,
        max: None,
        total_count: None,
    };
    let mut header = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let lineno = i + 1;
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            if let Some(v) = footer_field(line, "Mean") {
                out.mean = Some(v);
            }
            if let Some(v) = footer_field(line, "StdDeviation") {
                out.stddev = Some(v);
            }
            if let Some(v) = footer_field(line, "Max") {
                out.max = Some(v);
            }
            if let Some(v) = footer_field(line, "Total count") {
                out.total_count = Some(v as u64);
            }
            continue;
        }
        if !header {
            let mut t = line.split_whitespace();
            if t.next() == Some("Value")
                && t.next() == Some("Percentile")
                && t.next() == Some("TotalCount")
            {
                header = true;
                continue;
            }
            return Err(HgrmError::NoHeader);
        }
        let mut t = line.split_whitespace();
        let value: f64 = num(t.next(), lineno, "Value")?;
        let quantile: f64 = num(t.next(), lineno, "Percentile")?;
        let total_count: u64 = num(t.next(), lineno, "TotalCount")?;
        if !(0.0..=1.0).contains(&quantile) || !value.is_finite() || value < 0.0 {
            return Err(HgrmError::BadRow {
                line: lineno,
                why: format!("percentile {quantile} must be 0..1 and value {value} non-negative"),
            });
        }
        if let Some(prev) = out.rows.last() {
            if quantile < prev.quantile || value < prev.value || total_count < prev.total_count {
                return Err(HgrmError::BadRow {
                    line: lineno,
                    why: "rows must not go down in value, percentile or count".into(),
                });
            }
        }
        out.rows.push(HgrmRow {
            value,
            quantile,
            total_count,
        });
    }
    if !header {
        return Err(HgrmError::NoHeader);
    }
    if out.rows.is_empty() {
        return Err(HgrmError::Empty);
    }
    Ok(out)
}

impl Hgrm {
    /// Values counted (the footer's total, else the last row's count).
    pub fn count(&self) -> u64 {
        self.total_count
            .or_else(|| self.rows.last().map(|r| r.total_count))
            .unwrap_or(0)
    }

    /// The value at quantile `q`, in the file's unit: the first row whose `TotalCount`
    /// reaches `ceil(q * count)` (HdrHistogram's own rule). Exact where such a row is the
    /// first one past that count; otherwise the next row up (an upper bound: with 5 ticks
    /// per half distance rows are at most 1/10 of the remaining distance to 100% apart).
    pub fn value_at_quantile(&self, q: f64) -> f64 {
        let n = self.count();
        let want = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        self.rows
            .iter()
            .find(|r| r.total_count >= want)
            .or(self.rows.last())
            .map_or(0.0, |r| r.value)
    }

    /// The summary in ns, the file's values multiplied by `scale` (e.g. [`NS_PER_US`]).
    pub fn summary(&self, scale: f64) -> LatencySummary {
        let ns = |v: f64| (v * scale).round() as u64;
        let at = |q| ns(self.value_at_quantile(q));
        LatencySummary {
            unit: Unit::Ns,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            p9999: at(0.9999),
            max: ns(self
                .max
                .unwrap_or_else(|| self.rows.last().map_or(0.0, |r| r.value))),
            mean: self.mean.map_or(0.0, |m| m * scale),
            count: self.count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
    }

    #[test]
    fn golden_small_histogram() {
        // Checked by hand against Java's PercentileIterator: levels 0, 10 .. 50 (step 10),
        // 55 .. 75 (step 5), 77.5 .. 87.5 (2.5), 88.75, 90 (1.25); the last value gives one
        // row at the current level (91.25) and then the 100% row. Values are the highest
        // equivalents: 9000 ns sits in a bucket 8 ns wide (8192..16383), so 9.007 us.
        let mut h = hist();
        for v in 1..=10u64 {
            h.record(v * 1000).unwrap();
        }
        let text = hgrm_string(&h, 5, NS_PER_US);
        let want = "       Value     Percentile TotalCount 1/(1-Percentile)

       1.000 0.000000000000          1           1.00
       1.000 0.100000000000          1           1.11
       2.000 0.200000000000          2           1.25
       3.001 0.300000000000          3           1.43
       4.001 0.400000000000          4           1.67
       5.003 0.500000000000          5           2.00
       6.003 0.550000000000          6           2.22
       6.003 0.600000000000          6           2.50
       7.003 0.650000000000          7           2.86
       7.003 0.700000000000          7           3.33
       8.003 0.750000000000          8           4.00
       8.003 0.775000000000          8           4.44
       8.003 0.800000000000          8           5.00
       9.007 0.825000000000          9           5.71
       9.007 0.850000000000          9           6.67
       9.007 0.875000000000          9           8.00
       9.007 0.887500000000          9           8.89
       9.007 0.900000000000          9          10.00
      10.007 0.912500000000         10          11.43
      10.007 1.000000000000         10
#[Mean    =        5.502, StdDeviation   =        2.874]
#[Max     =       10.007, Total count    =           10]
#[Buckets =           26, SubBuckets     =         2048]
";
        assert_eq!(text, want, "got:\n{text}");
    }

    #[test]
    fn write_then_parse_gives_back_percentiles() {
        let mut h = hist();
        // A long-tailed distribution: 1..100 us uniform plus a sparse tail to 10 ms.
        for v in 1..=100_000u64 {
            h.record(v * 7 % 100_000 + 1_000).unwrap();
        }
        for v in 1..=50u64 {
            h.record(v * 200_000).unwrap();
        }
        let want = LatencySummary::of(&h);
        let parsed = parse_hgrm(&hgrm_string(&h, 5, NS_PER_US)).unwrap();
        let got = parsed.summary(NS_PER_US);
        assert_eq!(got.count, want.count);
        assert_eq!(got.max, want.max);
        assert!((got.mean - want.mean).abs() <= 1.0, "{got:?} {want:?}");
        // p50 and p90 fall on rows; the others are the next row up, within 0.5%.
        assert_eq!(got.p50, want.p50);
        assert_eq!(got.p90, want.p90);
        for (g, w) in [
            (got.p99, want.p99),
            (got.p999, want.p999),
            (got.p9999, want.p9999),
        ] {
            assert!(g >= w && (g - w) as f64 <= w as f64 * 0.005, "{g} vs {w}");
        }
    }

    #[test]
    fn parse_rejects_non_histograms() {
        assert_eq!(parse_hgrm("hello\n"), Err(HgrmError::NoHeader));
        assert_eq!(parse_hgrm(""), Err(HgrmError::NoHeader));
        let e = parse_hgrm("       Value     Percentile TotalCount 1/(1-Percentile)\n\n 1.0 x 3\n");
        assert!(matches!(e, Err(HgrmError::BadRow { line: 3, .. })), "{e:?}");
        let empty = hgrm_string(&hist(), 5, NS_PER_US);
        assert_eq!(parse_hgrm(&empty), Err(HgrmError::Empty));
    }

    #[test]
    fn summary_json_round_trips() {
        let mut h = hist();
        for v in [100u64, 200, 300, 40_000] {
            h.record(v).unwrap();
        }
        let s = LatencySummary::of(&h);
        let text = s.to_json();
        assert!(text.contains("\"unit\": \"ns\""), "{text}");
        let back: LatencySummary = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.count, 4);
    }

    /// Regenerates the fixtures of `tools/tests/report.rs` and the docs picture's inputs:
    /// `cargo test -p zerohop --bin zerohop -- --ignored write_fixtures`.
    #[test]
    #[ignore]
    fn write_fixtures() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        std::fs::create_dir_all(&dir).unwrap();
        // Two synthetic (made-up, not measured) runs: a tight one and one with a longer tail.
        // xorshift: deterministic without a rand dependency.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (name, base, tail) in [("sample_a", 600u64, 40u64), ("sample_b", 450, 400)] {
            let mut h = hist();
            for _ in 0..200_000 {
                let r = next();
                let u = (r % 10_000) as f64 / 10_000.0;
                // Exponential-ish tail: base + tail * -ln(1-u), with a rare slow path.
                let mut v = base as f64 + tail as f64 * -(1.0 - u).ln();
                if r % 5_000 == 0 {
                    v += 20_000.0 + (r % 30_000) as f64;
                }
                h.record(v as u64).unwrap();
            }
            write_hgrm(&dir.join(format!("{name}.hgrm")), &h).unwrap();
            write_latency_json(&dir.join(format!("{name}.json")), &h).unwrap();
        }
    }

    #[test]
    fn sub_buckets_match_hdrhistogram() {
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
        assert_eq!(sub_bucket_count(1), 32);
    }
}
