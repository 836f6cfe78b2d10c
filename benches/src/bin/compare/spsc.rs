//! Local SPSC ring (two threads, cores 0 and 1): zerohop `rings::spsc` (chunk and
//! slice APIs) against rtrb's chunk API and crossbeam's `ArrayQueue`, u64 items in
//! bursts of 32 through 1024 slots: the contenders of `benches/benches/common`, shared
//! with the `spsc` and `spsc_ratio` benches.

use crate::common::Contender;

/// The contenders with their figure keys.
pub const CONTENDERS: [(Contender, &str); 4] = [
    (Contender::ZhChunk, "spsc.zh_chunk"),
    (Contender::ZhSlice, "spsc.zh_slice"),
    (Contender::Rtrb, "spsc.rtrb"),
    (Contender::ArrayQueue, "spsc.array_queue"),
];

/// Million items per second moving `items` from core 0 to core 1.
pub fn run(c: Contender, items: u64) -> Result<f64, String> {
    let d = c
        .run(items, (0, 1))
        .ok_or_else(|| format!("{}: run hit its deadline", c.name()))?;
    Ok(items as f64 / d.as_secs_f64() / 1e6)
}
