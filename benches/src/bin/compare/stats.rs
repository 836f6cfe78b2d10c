//! Samples, medians, same-placement ratios, void rule and target verdicts.
//!
//! ```text
//!  repeat r:   probe | case | probe   ->  Sample { rep: r, value, before, after }
//!  void  <=>   classify(before) != classify(after)  (near/far split at 250 ns),
//!              or a probe is missing/unclean          (cross-core cases only)
//!  ratio r  =  zerohop sample of repeat r / peer sample of repeat r,
//!              both valid and (cross-core) in the same placement
//!  figure   =  median (min-max) over valid samples; ratio = median (min-max) over r
//! ```

use dataplane::probe::{classify, Placement};
use serde::Serialize;

/// Times a void sample is run again before it is kept as void.
pub const VOID_RETRIES: usize = 2;

/// One measurement of one figure.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Repeat (round) it belongs to.
    pub rep: usize,
    /// The figure's value (its unit is the figure's).
    pub value: f64,
    /// Placement probe before (one-line RTT, ns).
    pub probe_before_ns: Option<f64>,
    /// Placement probe after.
    pub probe_after_ns: Option<f64>,
    /// "near", "far" or "unknown" (from the probe before).
    pub placement: &'static str,
    /// True if the probe changed during the run (or a probe failed).
    pub void: bool,
    /// Extra per-sample figures (remote reads per packet, p99, Gbit/s, ...).
    pub extra: Vec<(String, f64)>,
}

impl Sample {
    /// A sample bracketed by two probes; `cross_core` false never voids.
    pub fn new(
        rep: usize,
        value: f64,
        before: Option<f64>,
        after: Option<f64>,
        cross_core: bool,
    ) -> Sample {
        let pb = before.map_or(Placement::Unknown, classify);
        Sample {
            rep,
            value,
            probe_before_ns: before,
            probe_after_ns: after,
            placement: name(pb),
            void: cross_core && is_void(before, after),
            extra: Vec::new(),
        }
    }

    /// Adds an extra figure.
    pub fn with(mut self, key: &str, v: f64) -> Sample {
        self.extra.push((key.to_owned(), v));
        self
    }

    /// An extra figure by key.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.extra.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

fn name(p: Placement) -> &'static str {
    match p {
        Placement::Near => "near",
        Placement::Far => "far",
        Placement::Unknown => "unknown",
    }
}

/// The void rule: both probes present and finite and on the same side of
/// `dataplane::probe::NEAR_FAR_THRESHOLD_NS` (250 ns; near is ~70-130 ns, far
/// ~390-500 ns on the reference machine, BASELINES.md).
pub fn is_void(before: Option<f64>, after: Option<f64>) -> bool {
    match (before, after) {
        (Some(b), Some(a)) if b.is_finite() && a.is_finite() => classify(b) != classify(a),
        _ => true,
    }
}

/// Median with its spread.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Values summarised.
    pub n: usize,
}

/// Median, min and max of `v` (`None` if empty; NaNs are dropped).
pub fn summarize(v: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// Valid (non-void) values of a figure.
pub fn valid_values(s: &[Sample]) -> Vec<f64> {
    s.iter().filter(|x| !x.void).map(|x| x.value).collect()
}

/// The placement of a figure's valid samples: "near", "far", "mixed" or "-".
pub fn placement_of(s: &[Sample]) -> &'static str {
    let mut near = false;
    let mut far = false;
    for x in s.iter().filter(|x| !x.void) {
        match x.placement {
            "near" => near = true,
            "far" => far = true,
            _ => {}
        }
    }
    match (near, far) {
        (true, true) => "mixed",
        (true, false) => "near",
        (false, true) => "far",
        _ => "-",
    }
}

/// Per-repeat ratios `num / (den * den_scale)`, pairing samples of the same repeat that
/// are both valid and (if `same_placement`) in the same placement.
pub fn pair_ratios(
    num: &[Sample],
    den: &[Sample],
    den_scale: f64,
    same_placement: bool,
) -> Vec<f64> {
    let mut out = Vec::new();
    for a in num.iter().filter(|x| !x.void) {
        let b = den
            .iter()
            .filter(|y| !y.void && y.rep == a.rep)
            .find(|y| !same_placement || y.placement == a.placement);
        if let Some(b) = b {
            let d = b.value * den_scale;
            if d > 0.0 && a.value.is_finite() {
                out.push(a.value / d);
            }
        }
    }
    out
}

/// What a ratio is held to.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Target {
    /// The ratio must be at least this.
    AtLeast(f64),
    /// The ratio must be at most this.
    AtMost(f64),
    /// Reported only.
    Report,
}

/// "met", "missed", "reported" or "no data" for a ratio's median.
pub fn verdict(target: Target, ratio: Option<Summary>) -> &'static str {
    match (target, ratio) {
        (_, None) => "no data",
        (Target::Report, _) => "reported",
        (Target::AtLeast(t), Some(r)) => {
            if r.median >= t {
                "met"
            } else {
                "missed"
            }
        }
        (Target::AtMost(t), Some(r)) => {
            if r.median <= t {
                "met"
            } else {
                "missed"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(rep: usize, v: f64, probe: f64) -> Sample {
        Sample::new(rep, v, Some(probe), Some(probe), true)
    }

    #[test]
    fn medians_and_spread() {
        assert_eq!(summarize(&[]), None);
        let m = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((m.median, m.min, m.max, m.n), (2.0, 1.0, 3.0, 3));
        let m = summarize(&[4.0, 1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!((m.median, m.n), (2.5, 4));
    }

    #[test]
    fn void_rule() {
        assert!(!is_void(Some(100.0), Some(120.0)));
        assert!(!is_void(Some(400.0), Some(480.0)));
        assert!(is_void(Some(100.0), Some(450.0)));
        assert!(is_void(None, Some(100.0)));
        assert!(is_void(Some(f64::NAN), Some(100.0)));
        let v = Sample::new(0, 1.0, Some(100.0), Some(450.0), true);
        assert!(v.void);
        // Single-core figures never void.
        let c = Sample::new(0, 1.0, Some(100.0), Some(450.0), false);
        assert!(!c.void);
        assert_eq!(c.placement, "near");
    }

    #[test]
    fn ratios_pair_same_repeat_and_placement() {
        let zh = vec![s(0, 10.0, 100.0), s(1, 12.0, 100.0), s(2, 9.0, 450.0)];
        let peer = vec![s(0, 5.0, 100.0), s(1, 4.0, 100.0), s(2, 3.0, 100.0)];
        // Repeat 2 is in different placements: not paired.
        assert_eq!(pair_ratios(&zh, &peer, 1.0, true), vec![2.0, 3.0]);
        assert_eq!(pair_ratios(&zh, &peer, 1.0, false), vec![2.0, 3.0, 3.0]);
        assert_eq!(pair_ratios(&zh, &peer, 2.0, true), vec![1.0, 1.5]);
        let mut void = peer.clone();
        void[0].void = true;
        assert_eq!(pair_ratios(&zh, &void, 1.0, true), vec![3.0]);
        assert_eq!(placement_of(&zh), "mixed");
        assert_eq!(placement_of(&peer), "near");
    }

    #[test]
    fn verdicts() {
        let r = summarize(&[1.2]);
        assert_eq!(verdict(Target::AtLeast(1.3), r), "missed");
        assert_eq!(verdict(Target::AtLeast(1.0), r), "met");
        assert_eq!(verdict(Target::AtMost(1.3), r), "met");
        assert_eq!(verdict(Target::AtMost(1.1), r), "missed");
        assert_eq!(verdict(Target::Report, r), "reported");
        assert_eq!(verdict(Target::AtLeast(1.0), None), "no data");
    }
}
