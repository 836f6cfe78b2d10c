//! `echo`: send every packet back unchanged through the zero-copy transmit path
//! (`alloc_tx` + `write` + `commit`), a burst at a time.

use dataplane::port::{PortError, QueueHandle, RxMbuf};

use super::{tx_rewrite, EngineInfo, ForwardEngine, FwdCtx, Moved};

/// Registration.
pub const INFO: EngineInfo = EngineInfo {
    name: "echo",
    new: || Box::new(Echo),
    help: "send every packet back unchanged (zero-copy tx)",
};

struct Echo;

impl ForwardEngine for Echo {
    fn on_burst(
        &mut self,
        rx: &mut Vec<RxMbuf>,
        q: &mut QueueHandle,
        ctx: &mut FwdCtx,
    ) -> Result<Moved, PortError> {
        tx_rewrite(q, rx, ctx, None)
    }
}
