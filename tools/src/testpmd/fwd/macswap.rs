//! `macswap`: swap the source and destination MAC addresses, send back (zero-copy).

use dataplane::port::{PortError, QueueHandle, RxMbuf};

use super::{tx_rewrite, EngineInfo, ForwardEngine, FwdCtx, Moved};

/// Registration.
pub const INFO: EngineInfo = EngineInfo {
    name: "macswap",
    new: || Box::new(MacSwap),
    help: "swap src and dst MAC, send back (zero-copy tx)",
};

fn swap(mac: &mut [u8; 12]) {
    let (d, s) = mac.split_at_mut(6);
    d.swap_with_slice(s);
}

struct MacSwap;

impl ForwardEngine for MacSwap {
    fn on_burst(
        &mut self,
        rx: &mut Vec<RxMbuf>,
        q: &mut QueueHandle,
        ctx: &mut FwdCtx,
    ) -> Result<Moved, PortError> {
        tx_rewrite(q, rx, ctx, Some(swap))
    }
}
