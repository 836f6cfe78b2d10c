//! `txonly`: generate stamped packets as fast as the ring takes them; received
//! packets are freed.

use dataplane::port::{PortError, QueueHandle, RxMbuf};

use super::{generate_burst, EngineInfo, ForwardEngine, FwdCtx, Moved};

/// Registration.
pub const INFO: EngineInfo = EngineInfo {
    name: "txonly",
    new: || Box::new(TxOnly),
    help: "this side generates; the generator process counts and checks",
};

struct TxOnly;

impl ForwardEngine for TxOnly {
    fn on_burst(
        &mut self,
        rx: &mut Vec<RxMbuf>,
        q: &mut QueueHandle,
        _ctx: &mut FwdCtx,
    ) -> Result<Moved, PortError> {
        q.free(rx);
        Ok(Moved::default())
    }

    fn generate(&mut self, q: &mut QueueHandle, ctx: &mut FwdCtx) -> Result<Moved, PortError> {
        generate_burst(q, ctx, |_| 0)
    }

    fn generates(&self) -> bool {
        true
    }
}
