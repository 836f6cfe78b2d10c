//! Links and endpoints from a TOML file (in place of the original patch series'
//! configfs entries). Every error names its line.
//!
//! ```toml
//! [[link]]
//! name = "l0"
//! window = "/dev/shm/rpmsg-l0"
//! mode = "posted"            # posted | split | packed
//! role = "host"              # host | remote
//! host_to_remote_buf = 512   # bytes per buffer, header included (default 512)
//! remote_to_host_buf = 512
//! ring_size = 256            # entries per direction (default 256)
//! slot_size = 128            # posted only (default 128)
//! name_service = true        # VIRTIO_RPMSG_F_NS (default true)
//! rx_queue_depth = 32        # per endpoint (default 32)
//!
//! [[guest]]                  # a Linux guest's virtio_rpmsg_bus (crate::guest): we are
//! name = "vm0"               # its remote; endpoints name it like a link
//! ram = "/dev/shm/vm0-ram"   # QEMU memory-backend-file,mem-path=...,share=on
//! ram_mib = 256              # QEMU -m (1..=2048)
//! control = "/dev/shm/vm0-ctl"   # the ivshmem-plain memdev
//! control_size = 4096        # a power of two, 4 KiB..=64 MiB (default 4096)
//! queue_size = 256           # entries per virtqueue (default 256)
//! packed = false             # also offer packed virtqueues (default false; zhvq only)
//! transport = "zhvq"         # zhvq (zh_virtio) | rproc (zh_rproc + remoteproc)
//! name_service = true        # (default true)
//! rx_queue_depth = 256       # per endpoint (default: queue_size)
//!
//! [[endpoint]]
//! link = "l0"
//! name = "rpmsg-echo"        # optional service name
//! addr = "dynamic"           # or a number
//! announce = true            # announce the name (default false)
//! bind = "other-service"     # optional: follow the peer's announcement of this name
//! ```

use std::collections::HashSet;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::bus::{Addr, BusConfig};
use crate::guest::{GuestLinkConfig, Transport};
use crate::link::{LinkConfig, RingMode, Role};
use crate::wire::{ADDR_ANY, NAME_SIZE, NS_ADDR, VIRTIO_RPMSG_F_NS};

/// A config error, with the 1-based line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct ConfigError {
    /// 1-based line number (0 if unknown).
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    link: Vec<Spanned<RawLink>>,
    #[serde(default)]
    guest: Vec<Spanned<RawGuest>>,
    #[serde(default)]
    endpoint: Vec<Spanned<RawEndpoint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    name: Spanned<String>,
    ram: Spanned<String>,
    ram_mib: Spanned<u32>,
    control: Spanned<String>,
    control_size: Option<Spanned<usize>>,
    queue_size: Option<Spanned<u32>>,
    packed: Option<bool>,
    transport: Option<Spanned<String>>,
    name_service: Option<bool>,
    rx_queue_depth: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    name: Spanned<String>,
    window: Spanned<String>,
    mode: Spanned<RingMode>,
    role: Spanned<Role>,
    host_to_remote_buf: Option<Spanned<usize>>,
    remote_to_host_buf: Option<Spanned<usize>>,
    ring_size: Option<Spanned<u32>>,
    slot_size: Option<Spanned<u32>>,
    name_service: Option<bool>,
    rx_queue_depth: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawAddr {
    Num(i64),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    link: Spanned<String>,
    name: Option<Spanned<String>>,
    addr: Spanned<RawAddr>,
    #[serde(default)]
    announce: bool,
    bind: Option<Spanned<String>>,
}

/// One link of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEntry {
    /// The link's name (endpoints refer to it).
    pub name: String,
    /// Its settings.
    pub config: LinkConfig,
}

/// One Linux guest of the file (`[[guest]]`): open it with
/// [`GuestLink::create`](crate::guest::GuestLink::create).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestEntry {
    /// The guest link's name (endpoints refer to it like to a link).
    pub name: String,
    /// Its settings.
    pub config: GuestLinkConfig,
}

/// One endpoint of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    /// The link it lives on.
    pub link: String,
    /// Service name.
    pub name: Option<String>,
    /// Address.
    pub addr: Addr,
    /// Announce `name` through the name service.
    pub announce: bool,
    /// Remote service to bind to.
    pub bind: Option<String>,
}

/// A validated config file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Links, in file order.
    pub links: Vec<LinkEntry>,
    /// Linux guests, in file order.
    pub guests: Vec<GuestEntry>,
    /// Endpoints, in file order.
    pub endpoints: Vec<EndpointEntry>,
}

struct Src<'a>(&'a str);

impl Src<'_> {
    fn line(&self, at: usize) -> usize {
        let at = at.min(self.0.len());
        self.0.as_bytes()[..at]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }
    fn err(&self, span: Range<usize>, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            line: self.line(span.start),
            msg: msg.into(),
        }
    }
}

/// The bus keys a link and a guest share: `rx_queue_depth`, `name_service`.
fn bus_options(
    src: &Src<'_>,
    rx_queue_depth: &Option<Spanned<usize>>,
    name_service: Option<bool>,
    bus: &mut BusConfig,
) -> Result<(), ConfigError> {
    if let Some(v) = rx_queue_depth {
        if *v.get_ref() == 0 || *v.get_ref() > u16::MAX as usize {
            return Err(src.err(
                v.span(),
                format!("rx_queue_depth {} outside 1..=65535", v.get_ref()),
            ));
        }
        bus.rx_queue_depth = *v.get_ref();
    }
    if name_service == Some(false) {
        bus.features &= !(1 << VIRTIO_RPMSG_F_NS);
    }
    Ok(())
}

fn check_name(src: &Src<'_>, n: &Spanned<String>, what: &str) -> Result<(), ConfigError> {
    let s = n.get_ref();
    if s.is_empty() || s.len() >= NAME_SIZE || s.contains('\0') {
        return Err(src.err(n.span(), format!("{what} {s:?}: 1..=31 bytes without NUL")));
    }
    Ok(())
}

impl Config {
    /// Parses and validates a config file's text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let src = Src(text);
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError {
            line: e.span().map(|s| src.line(s.start)).unwrap_or(0),
            msg: e.message().trim().to_owned(),
        })?;
        let mut out = Config::default();
        let mut names = HashSet::new();
        for l in &raw.link {
            let r = l.get_ref();
            if !names.insert(r.name.get_ref().clone()) {
                return Err(src.err(
                    r.name.span(),
                    format!("duplicate link {:?}", r.name.get_ref()),
                ));
            }
            let mut c = LinkConfig::new(r.window.get_ref(), *r.mode.get_ref(), *r.role.get_ref());
            for (v, dst) in [
                (&r.host_to_remote_buf, &mut c.host_to_remote_buf),
                (&r.remote_to_host_buf, &mut c.remote_to_host_buf),
            ] {
                if let Some(v) = v {
                    if *v.get_ref() <= 16 || *v.get_ref() > 16 + u16::MAX as usize {
                        return Err(src.err(
                            v.span(),
                            format!("buffer size {} outside 17..=65551", v.get_ref()),
                        ));
                    }
                    *dst = *v.get_ref();
                }
            }
            if let Some(v) = &r.ring_size {
                if !v.get_ref().is_power_of_two() || *v.get_ref() < 2 || *v.get_ref() > 32768 {
                    return Err(src.err(
                        v.span(),
                        format!(
                            "ring_size {} is not a power of two in 2..=32768",
                            v.get_ref()
                        ),
                    ));
                }
                c.ring_size = *v.get_ref();
            }
            if let Some(v) = &r.slot_size {
                if !v.get_ref().is_power_of_two() || *v.get_ref() < 64 {
                    return Err(src.err(
                        v.span(),
                        format!("slot_size {} is not a power of two >= 64", v.get_ref()),
                    ));
                }
                c.slot_size = *v.get_ref();
            }
            bus_options(&src, &r.rx_queue_depth, r.name_service, &mut c.bus)?;
            out.links.push(LinkEntry {
                name: r.name.get_ref().clone(),
                config: c,
            });
        }
        for g in &raw.guest {
            let r = g.get_ref();
            if !names.insert(r.name.get_ref().clone()) {
                return Err(src.err(
                    r.name.span(),
                    format!("duplicate link {:?}", r.name.get_ref()),
                ));
            }
            let mib = *r.ram_mib.get_ref();
            if !(1..=2048).contains(&mib) {
                return Err(src.err(r.ram_mib.span(), format!("ram_mib {mib} outside 1..=2048")));
            }
            let mut c = GuestLinkConfig::new(
                r.ram.get_ref(),
                mib as usize * (1 << 20),
                r.control.get_ref(),
            );
            if let Some(v) = &r.control_size {
                let n = *v.get_ref();
                if !n.is_power_of_two() || !(4096..=pmd::guest::MAX_CONTROL).contains(&n) {
                    return Err(src.err(
                        v.span(),
                        format!("control_size {n} is not a power of two in 4096..=64 MiB"),
                    ));
                }
                c.control_size = n;
            }
            if let Some(v) = &r.queue_size {
                let n = *v.get_ref();
                if !n.is_power_of_two() || !(2..=32768).contains(&n) {
                    return Err(src.err(
                        v.span(),
                        format!("queue_size {n} is not a power of two in 2..=32768"),
                    ));
                }
                c.queue_size = n as u16;
            }
            c.packed = r.packed.unwrap_or(false);
            if let Some(v) = &r.transport {
                c.transport =
                    match v.get_ref().as_str() {
                        "zhvq" => Transport::Zhvq,
                        "rproc" if c.packed => return Err(src.err(
                            v.span(),
                            "transport \"rproc\" makes split rings: packed = true needs \"zhvq\"",
                        )),
                        "rproc" => Transport::Rproc,
                        t => {
                            return Err(src.err(
                                v.span(),
                                format!("transport {t:?} is not \"zhvq\" or \"rproc\""),
                            ))
                        }
                    };
            }
            // Every message the guest sends holds one of its transmit buffers until it
            // is released: a queue this deep never drops.
            c.bus.rx_queue_depth = usize::from(c.queue_size);
            bus_options(&src, &r.rx_queue_depth, r.name_service, &mut c.bus)?;
            out.guests.push(GuestEntry {
                name: r.name.get_ref().clone(),
                config: c,
            });
        }
        let mut addrs = HashSet::new();
        for e in &raw.endpoint {
            let r = e.get_ref();
            let want = r.link.get_ref();
            let link = out
                .links
                .iter()
                .find(|l| &l.name == want)
                .map(|l| (&l.name, l.config.bus.features))
                .or_else(|| {
                    out.guests
                        .iter()
                        .find(|g| &g.name == want)
                        .map(|g| (&g.name, g.config.bus.features))
                });
            let Some((link_name, link_features)) = link else {
                return Err(src.err(
                    r.link.span(),
                    format!("unknown link {:?}", r.link.get_ref()),
                ));
            };
            if let Some(n) = &r.name {
                check_name(&src, n, "endpoint name")?;
            }
            if let Some(n) = &r.bind {
                check_name(&src, n, "bind name")?;
            }
            let addr = match r.addr.get_ref() {
                RawAddr::Word(w) if w == "dynamic" => Addr::Dynamic,
                RawAddr::Word(w) => {
                    return Err(src.err(
                        r.addr.span(),
                        format!("addr {w:?}: expected a number or \"dynamic\""),
                    ))
                }
                RawAddr::Num(n) => {
                    let a = u32::try_from(*n)
                        .ok()
                        .filter(|&a| a != NS_ADDR && a != ADDR_ANY)
                        .ok_or_else(|| {
                            src.err(
                                r.addr.span(),
                                format!("addr {n}: outside 0..2^32-1 or the name service's 53"),
                            )
                        })?;
                    if !addrs.insert((r.link.get_ref().clone(), a)) {
                        return Err(src.err(
                            r.addr.span(),
                            format!("addr {a} used twice on link {:?}", r.link.get_ref()),
                        ));
                    }
                    Addr::Fixed(a)
                }
            };
            if r.announce && r.name.is_none() {
                return Err(src.err(e.span(), "announce = true needs a name"));
            }
            if r.announce && link_features & (1 << VIRTIO_RPMSG_F_NS) == 0 {
                return Err(src.err(
                    e.span(),
                    format!("announce on link {link_name:?} whose name_service is off"),
                ));
            }
            out.endpoints.push(EndpointEntry {
                link: r.link.get_ref().clone(),
                name: r.name.as_ref().map(|n| n.get_ref().clone()),
                addr,
                announce: r.announce,
                bind: r.bind.as_ref().map(|n| n.get_ref().clone()),
            });
        }
        Ok(out)
    }

    /// Reads and parses a file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path.as_ref()).map_err(|e| ConfigError {
            line: 0,
            msg: format!("{}: {e}", path.as_ref().display()),
        })?;
        Self::parse(&text)
    }
}
