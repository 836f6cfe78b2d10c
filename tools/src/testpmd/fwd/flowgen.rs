//! `flowgen`: like txonly, but packets cycle through `flows` flows (the flow id in the
//! header, the `meta` field, and the low bytes of the source MAC), as DPDK's flowgen
//! cycles IP addresses.

use dataplane::port::{PortError, QueueHandle, RxMbuf};

use super::{generate_burst, EngineInfo, ForwardEngine, FwdCtx, Moved};

/// Registration.
pub const INFO: EngineInfo = EngineInfo {
    name: "flowgen",
    new: || Box::new(FlowGen),
    help: "generate packets over many flows; the generator process counts and checks",
};

struct FlowGen;

impl ForwardEngine for FlowGen {
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
        let flows = u64::from(ctx.flows.max(1));
        generate_burst(q, ctx, move |seq| 1 + (seq % flows) as u16)
    }

    fn generates(&self) -> bool {
        true
    }
}
