//! `mac`: set the source and destination MAC addresses, send back (zero-copy).

use dataplane::port::{PortError, QueueHandle, RxMbuf};

use super::{tx_rewrite, EngineInfo, ForwardEngine, FwdCtx, Moved};

/// Registration.
pub const INFO: EngineInfo = EngineInfo {
    name: "mac",
    new: || Box::new(Mac),
    help: "rewrite src/dst MAC to fixed addresses, send back (zero-copy tx)",
};

/// The addresses `mac` writes: dst = the generator, src = this port.
const DST: [u8; 6] = crate::testpmd::pkt::GEN_SRC;
const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

fn set(mac: &mut [u8; 12]) {
    mac[..6].copy_from_slice(&DST);
    mac[6..].copy_from_slice(&SRC);
}

struct Mac;

impl ForwardEngine for Mac {
    fn on_burst(
        &mut self,
        rx: &mut Vec<RxMbuf>,
        q: &mut QueueHandle,
        ctx: &mut FwdCtx,
    ) -> Result<Moved, PortError> {
        tx_rewrite(q, rx, ctx, Some(set))
    }
}
