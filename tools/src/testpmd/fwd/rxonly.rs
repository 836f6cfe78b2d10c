//! `rxonly`: receive, check (sequence, pattern, one-way latency) and free.

use dataplane::port::{PortError, QueueHandle, RxMbuf};

use super::{EngineInfo, ForwardEngine, FwdCtx, Moved};
use crate::testpmd::pkt;

/// Registration.
pub const INFO: EngineInfo = EngineInfo {
    name: "rxonly",
    new: || Box::new(RxOnly),
    help: "receive and drop (checking order, payload and one-way latency)",
};

struct RxOnly;

impl ForwardEngine for RxOnly {
    fn on_burst(
        &mut self,
        rx: &mut Vec<RxMbuf>,
        q: &mut QueueHandle,
        ctx: &mut FwdCtx,
    ) -> Result<Moved, PortError> {
        let now = pkt::ticks();
        for m in rx.iter() {
            ctx.checker.check(m.data(), now);
        }
        q.free(rx);
        Ok(Moved::default())
    }
}
