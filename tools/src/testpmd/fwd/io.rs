//! `io`: every received packet goes back unchanged (copied once with `tx_burst`).

use dataplane::port::{PortError, QueueHandle, RxMbuf};

use super::{tx_back, EngineInfo, ForwardEngine, FwdCtx, Moved};

/// Registration.
pub const INFO: EngineInfo = EngineInfo {
    name: "io",
    new: || Box::new(Io),
    help: "send every packet back unchanged (copying tx_burst)",
};

struct Io;

impl ForwardEngine for Io {
    fn on_burst(
        &mut self,
        rx: &mut Vec<RxMbuf>,
        q: &mut QueueHandle,
        ctx: &mut FwdCtx,
    ) -> Result<Moved, PortError> {
        tx_back(q, rx, ctx)
    }
}
