//! The link model (GUIDE.md section 6), computed: what each ring mode would cost over
//! PCIe, from the remote reads and writes per packet *measured* in the same run
//! (`pmd::queue::measure`, through `zerohop testpmd --json`) and the local time per
//! packet measured in the same run.
//!
//! ```text
//!  throughput, burst B:  t_pkt  = t_local + reads/pkt * R + D / B     (posted writes: free)
//!  ping-pong:            RTT    = RTT_local + reads/RT * R + 2 * D    (one doorbell each way)
//!  R = 0.5 us and 1 us (non-posted read stalls the core); D = LinkCost::pcie().doorbell
//! ```
//!
//! Computed, not run through the `LinkModel` wrapper: the wrapper busy-waits R per read
//! and on this 2-vCPU machine would turn a 5-minute budget into hours at 1 us per read.

use serde::Serialize;

/// Remote-read costs modelled, in ns.
pub const READ_NS: [f64; 2] = [500.0, 1000.0];

/// Doorbell cost, ns (the crate's PCIe default).
pub fn doorbell_ns() -> f64 {
    pmd::window::LinkCost::pcie().doorbell.as_nanos() as f64
}

/// One row of the link-model table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Ring mode.
    pub ring: String,
    /// "64 B one-way, burst 32", "64 B ping-pong".
    pub case: String,
    /// Remote reads per packet (per round trip for ping-pong), measured.
    pub reads: f64,
    /// Remote writes per packet (per round trip), measured.
    pub writes: f64,
    /// Measured local figure: ns per packet, or RTT ns.
    pub local_ns: f64,
    /// Modelled ns per packet (or RTT) for each of [`READ_NS`].
    pub model_ns: [f64; 2],
}

/// Throughput row from the median Mpps and measured accesses.
pub fn throughput(ring: &str, case: &str, mpps: f64, reads: f64, writes: f64, burst: usize) -> Row {
    let local = 1e3 / mpps;
    let d = doorbell_ns() / burst.max(1) as f64;
    Row {
        ring: ring.into(),
        case: case.into(),
        reads,
        writes,
        local_ns: local,
        model_ns: READ_NS.map(|r| local + reads * r + d),
    }
}

/// Ping-pong row from the median RTT and measured accesses per round trip.
pub fn ping_pong(ring: &str, rtt_ns: f64, reads: f64, writes: f64) -> Row {
    Row {
        ring: ring.into(),
        case: "64 B ping-pong RTT".into(),
        reads,
        writes,
        local_ns: rtt_ns,
        model_ns: READ_NS.map(|r| rtt_ns + reads * r + 2.0 * doorbell_ns()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_adds_reads_and_doorbells() {
        let d = doorbell_ns();
        let r = throughput("split", "x", 10.0, 2.0, 1.0, 32);
        assert_eq!(r.local_ns, 100.0);
        assert_eq!(r.model_ns[0], 100.0 + 1000.0 + d / 32.0);
        assert_eq!(r.model_ns[1], 100.0 + 2000.0 + d / 32.0);
        let p = ping_pong("posted", 400.0, 0.0, 10.0);
        assert_eq!(p.model_ns, [400.0 + 2.0 * d; 2]);
    }
}
