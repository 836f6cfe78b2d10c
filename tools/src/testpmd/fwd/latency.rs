//! `latency`: the reflector of a ping-pong: each packet goes back on its own, at once
//! (the generator keeps one packet in flight and records round trips).

use dataplane::port::{PortError, QueueHandle, RxMbuf};

use super::{tx_all, EngineInfo, ForwardEngine, FwdCtx, Moved};

/// Registration.
pub const INFO: EngineInfo = EngineInfo {
    name: "latency",
    new: || Box::new(Latency),
    help: "ping-pong: the generator sends one packet at a time, this side reflects it",
};

struct Latency;

impl ForwardEngine for Latency {
    fn on_burst(
        &mut self,
        rx: &mut Vec<RxMbuf>,
        q: &mut QueueHandle,
        ctx: &mut FwdCtx,
    ) -> Result<Moved, PortError> {
        let mut moved = Moved::default();
        let mut r = Ok(());
        for m in rx.iter() {
            match tx_all(q, &[m.data()], ctx) {
                Ok(x) => {
                    moved.packets += x.packets;
                    moved.bytes += x.bytes;
                }
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        q.free(rx);
        r.map(|()| moved)
    }
}
