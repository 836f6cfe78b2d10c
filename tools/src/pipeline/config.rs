//! The pipeline config file: schema, parsing and validation.
//!
//! ```toml
//! [[port]]                      # one link to a peer
//! name = "p0"
//! ring = "split"                # split | packed | posted
//! window = "/dev/shm/zh-p0"     # a window spec (see pmd::window::spec)
//! window_size = "8M"            # optional; at least the layout bound (below)
//! role = "backend"              # frontend | backend
//! queues = 1                    # queue pairs, 1..=8
//! ring_size = 256               # entries per ring, a power of two 2..=32768
//! buf_size = 2048               # bytes per buffer, a multiple of 64, 64..=65536
//! peer = "generator"            # optional: `pipeline run` starts a generator peer
//!
//! [run]                         # optional: `pipeline run` settings
//! poll = "spin"                 # spin | yield (idle lcores yield the CPU)
//!
//! [[ring]]                      # a local SPSC ring between two stages
//! name = "r1"
//! size = 1024                   # a power of two 2..=65536
//!
//! [[lcore]]                     # one polling thread
//! cpu = 0                       # the CPU it is pinned to; must be online
//! stages = [                    # chains: a source, fwd stages, a sink; repeat
//!   { kind = "rx", port = "p0", queue = 0 },      # sources: rx, ring_in
//!   { kind = "fwd", fn = "macswap" },             # io | mac | macswap | rxonly
//!   { kind = "ring_out", ring = "r1" },           # sinks: tx, ring_out (or fwd rxonly)
//! ]
//! ```
//!
//! Window bound (an upper bound on every ring mode's layout, checked against
//! `window_size` or a `heap:SIZE` window):
//!
//! ```text
//!   4 KiB header + queues x 2 directions x (ring_size x (64 + buf_size) + 8 KiB)
//! ```
//!
//! 64 bytes of ring metadata per entry covers split (16 + 2 + 8), packed (16) and posted
//! slots; 8 KiB per direction covers the page alignment of its areas. The port opens
//! the real layout at run time and checks it exactly.
//!
//! Every error names the file, the line and column, and the field (`port[0].ring_size`),
//! and says what was expected.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use dataplane::port::RingKind;
use serde::Deserialize;
use toml::Spanned;

/// Bytes of window header.
const HEADER_BYTES: u64 = 4096;
/// Ring metadata bytes per entry in the bound.
const META_PER_ENTRY: u64 = 64;
/// Alignment slack per direction in the bound.
const SLACK_PER_DIRECTION: u64 = 8192;

/// A whole config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Links to peers.
    #[serde(default)]
    pub port: Vec<Spanned<Port>>,
    /// Local SPSC rings.
    #[serde(default)]
    pub ring: Vec<Spanned<Ring>>,
    /// Polling threads.
    #[serde(default)]
    pub lcore: Vec<Spanned<Lcore>>,
    /// `[run]`: how `pipeline run` runs the config.
    #[serde(default)]
    pub run: Option<RunSection>,
}

/// `[run]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// How an idle lcore waits: `spin` (default) or `yield` (shared machines, tests).
    #[serde(default)]
    pub poll: Option<Spanned<PollKind>>,
}

/// `[run] poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollKind {
    /// Busy-poll.
    Spin,
    /// Yield the CPU after a few empty polls.
    Yield,
}

/// A ring mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RingMode {
    /// Virtio split ring.
    Split,
    /// Virtio packed ring.
    Packed,
    /// zerohop's posted ring.
    Posted,
}

impl RingMode {
    /// The port's ring kind.
    pub fn kind(self) -> RingKind {
        match self {
            RingMode::Split => RingKind::Split,
            RingMode::Packed => RingKind::Packed,
            RingMode::Posted => RingKind::Posted,
        }
    }
}

/// Which end of the link a port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The driver side (creates the window).
    Frontend,
    /// The device side.
    Backend,
}

/// `[[port]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Name stages refer to.
    pub name: Spanned<String>,
    /// Ring mode.
    pub ring: Spanned<RingMode>,
    /// Window spec.
    pub window: Spanned<String>,
    /// Window size (`64K`, `8M`, ...); default: the layout bound.
    #[serde(default)]
    pub window_size: Option<Spanned<String>>,
    /// Which end.
    pub role: Spanned<Role>,
    /// Queue pairs.
    pub queues: Spanned<u32>,
    /// Entries per ring.
    pub ring_size: Spanned<u32>,
    /// Bytes per buffer.
    pub buf_size: Spanned<u32>,
    /// `"generator"`: `pipeline run` starts a peer process on this port's window
    /// (the other role) that sends sequence-numbered packets and counts returns.
    #[serde(default)]
    pub peer: Option<Spanned<String>>,
}

/// `[[ring]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ring {
    /// Name stages refer to.
    pub name: Spanned<String>,
    /// Entries.
    pub size: Spanned<u32>,
}

/// `[[lcore]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lcore {
    /// The CPU to pin to.
    pub cpu: Spanned<usize>,
    /// The stages, in order.
    pub stages: Spanned<Vec<Spanned<Stage>>>,
}

/// What a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Receive a burst from a port queue (a source).
    Rx,
    /// Transmit to a port queue (a sink).
    Tx,
    /// Apply a forwarding function.
    Fwd,
    /// Take from a local ring (a source).
    RingIn,
    /// Hand to a local ring (a sink).
    RingOut,
}

/// Forwarding functions of a `fwd` stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FwdFn {
    /// Pass packets on unchanged.
    Io,
    /// Rewrite source and destination MAC.
    Mac,
    /// Swap source and destination MAC.
    Macswap,
    /// Count and drop (ends a chain).
    Rxonly,
}

/// One stage: `kind` says which of the other fields it takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// What it does.
    pub kind: Spanned<StageKind>,
    /// `rx`, `tx`: the port.
    #[serde(default)]
    pub port: Option<Spanned<String>>,
    /// `rx`, `tx`: the queue pair.
    #[serde(default)]
    pub queue: Option<Spanned<u32>>,
    /// `ring_in`, `ring_out`: the ring.
    #[serde(default)]
    pub ring: Option<Spanned<String>>,
    /// `fwd`: the function.
    #[serde(default, rename = "fn")]
    pub func: Option<Spanned<FwdFn>>,
}

/// A config error: where, which field, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the file could not be read).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// The field, e.g. `port[0].ring_size` (empty for syntax errors).
    pub field: String,
    /// What is wrong and what is expected.
    pub msg: String,
    /// The offending source line and a caret under the span.
    pub snippet: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.msg)?;
        if !self.snippet.is_empty() {
            write!(f, "\n{}", self.snippet)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A config that passed [`load`]; the spans still point into the file.
#[derive(Debug)]
pub struct Checked {
    /// The file.
    pub file: PathBuf,
    /// The config.
    pub config: Config,
}

/// Where errors point.
struct Src<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Src<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> ConfigError {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let col = self.text[line_start..start].chars().count() + 1;
        let src_line = &self.text[line_start..line_end];
        let end = span.end.clamp(start, line_end);
        let width = self.text[start..end].chars().count().max(1);
        let gutter = format!("{line:>5} | ");
        let snippet = format!(
            "{gutter}{src_line}\n{:>w$}{}{}",
            "| ",
            " ".repeat(col - 1),
            "^".repeat(width),
            w = gutter.len()
        );
        ConfigError {
            file: self.file.to_owned(),
            line,
            col,
            field: field.into(),
            msg: msg.into(),
            snippet,
        }
    }

    /// The field a serde/toml error points at: `table[i].key` from the text around it.
    fn field_at(&self, at: usize) -> String {
        let at = at.min(self.text.len());
        let line_start = self.text[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[at..]
            .find('\n')
            .map_or(self.text.len(), |i| at + i);
        let before = &self.text[line_start..at];
        let is_key = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        // The span is a key (`key = ..`, e.g. an unknown field), or a value whose key is
        // the word before the last '=' on its line.
        let word: String = self.text[at..line_end]
            .chars()
            .take_while(|&c| is_key(c))
            .collect();
        let at_key = self.text[at + word.len()..line_end]
            .trim_start()
            .starts_with('=');
        let key = match before.rfind('=') {
            Some(eq) if !at_key || word.is_empty() => {
                let k = before[..eq].trim_end();
                let start = k.rfind(|c: char| !is_key(c)).map_or(0, |i| i + 1);
                k[start..].to_owned()
            }
            _ => word,
        };
        // The enclosing [[table]] and its index (the span's own line counts: a missing
        // field points at the table's header).
        let mut table = String::new();
        let mut table_end = 0;
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut offset = 0;
        for l in self.text[..line_end].split_inclusive('\n') {
            offset += l.len();
            if offset > line_start && !l.trim_start().starts_with('[') {
                break;
            }
            let t = l.trim();
            if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
                table_end = offset;
                let name = name.trim().to_owned();
                let n = counts.entry(name.clone()).or_insert(0);
                table = format!("{name}[{n}]");
                *n += 1;
            } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
                table_end = offset;
                table = name.trim().to_owned();
            }
        }
        // Inside `stages = [ {..}, {..} ]`: which inline table.
        let section = &self.text[table_end.min(at)..at];
        if let Some(pos) = section.rfind("stages") {
            let after = section[pos + "stages".len()..].trim_start();
            if let Some(list) = after.strip_prefix('=').map(str::trim_start) {
                if let Some(items) = list.strip_prefix('[') {
                    let n = items.matches('{').count();
                    let closed = items.contains(']');
                    if n > 0 && !closed {
                        let stage = format!("stages[{}]", n - 1);
                        table = if table.is_empty() {
                            stage
                        } else {
                            format!("{table}.{stage}")
                        };
                    }
                }
            }
        }
        match (table.is_empty(), key.is_empty()) {
            (true, _) => key,
            (false, true) => table,
            (false, false) => format!("{table}.{key}"),
        }
    }
}

/// Reads and validates a config file; `online` is the set of usable CPUs.
pub fn load(file: &Path, online: &[usize]) -> Result<Checked, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_owned(),
        line: 0,
        col: 0,
        field: String::new(),
        msg: format!("cannot read: {e}"),
        snippet: String::new(),
    })?;
    let config = parse(file, &text, online)?;
    Ok(Checked {
        file: file.to_owned(),
        config,
    })
}

/// Parses and validates config text (`file` names it in errors).
pub fn parse(file: &Path, text: &str, online: &[usize]) -> Result<Config, ConfigError> {
    let src = Src { file, text };
    let config: Config = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let mut field = src.field_at(span.start);
        if let Some(name) = e
            .message()
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
        {
            field = if field.is_empty() {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            };
        }
        src.err(span, field, expectation(e.message()))
    })?;
    validate(&src, &config, online)?;
    Ok(config)
}

/// serde's messages, with what is expected spelled out where serde is terse.
fn expectation(msg: &str) -> String {
    let msg = msg.trim().to_owned();
    if msg.starts_with("missing field") {
        format!("{msg} (every [[port]] needs name, ring, window, role, queues, ring_size, buf_size; every [[lcore]] needs cpu and stages; every [[ring]] needs name and size)")
    } else {
        msg
    }
}

/// The window bound of the [module docs](self), in bytes.
pub fn window_bound(queues: u32, ring_size: u32, buf_size: u32) -> u64 {
    let per_direction =
        u64::from(ring_size) * (META_PER_ENTRY + u64::from(buf_size)) + SLACK_PER_DIRECTION;
    HEADER_BYTES + u64::from(queues) * 2 * per_direction
}

/// `1.5 MiB`, `64 KiB`, `512 B`.
pub fn human(n: u64) -> String {
    const K: u64 = 1024;
    if n >= K * K && n.is_multiple_of(K * K) {
        format!("{} MiB", n / (K * K))
    } else if n >= K * K {
        format!("{:.1} MiB", n as f64 / (K * K) as f64)
    } else if n >= K && n.is_multiple_of(K) {
        format!("{} KiB", n / K)
    } else if n >= K {
        format!("{:.1} KiB", n as f64 / K as f64)
    } else {
        format!("{n} B")
    }
}

fn pow2_in(v: u32, lo: u32, hi: u32) -> bool {
    v.is_power_of_two() && (lo..=hi).contains(&v)
}

/// Who uses a ring.
#[derive(Default)]
struct RingUse {
    producer: Option<(usize, Range<usize>)>,
    consumer: Option<(usize, Range<usize>)>,
}

fn validate(src: &Src, c: &Config, online: &[usize]) -> Result<(), ConfigError> {
    if c.port.is_empty() {
        return Err(src.err(
            0..0,
            "port",
            "no [[port]] table (expected at least one port)",
        ));
    }
    // Ports.
    let mut ports: HashMap<&str, (usize, u32)> = HashMap::new();
    for (i, p) in c.port.iter().enumerate() {
        let p = p.get_ref();
        let f = |k: &str| format!("port[{i}].{k}");
        let name = p.name.get_ref().as_str();
        if name.is_empty() {
            return Err(src.err(
                p.name.span(),
                f("name"),
                "empty name (expected a name stages can refer to)",
            ));
        }
        if ports.insert(name, (i, *p.queues.get_ref())).is_some() {
            return Err(src.err(
                p.name.span(),
                f("name"),
                format!("port {name:?} is defined twice (expected unique port names)"),
            ));
        }
        let spec: Result<pmd::window::WindowSpec, _> = p.window.get_ref().parse();
        let spec = spec.map_err(|e| src.err(p.window.span(), f("window"), format!("{e}")))?;
        let queues = *p.queues.get_ref();
        // The window header's area table bounds it, per ring mode.
        let max = u32::from(p.ring.get_ref().kind().max_queues());
        if !(1..=max).contains(&queues) {
            return Err(src.err(
                p.queues.span(),
                f("queues"),
                format!("{queues} queue pairs (expected 1 to {max} for this ring mode)"),
            ));
        }
        let ring_size = *p.ring_size.get_ref();
        if !pow2_in(ring_size, 2, 32768) {
            return Err(src.err(
                p.ring_size.span(),
                f("ring_size"),
                format!("{ring_size} is not a power of two from 2 to 32768"),
            ));
        }
        let buf_size = *p.buf_size.get_ref();
        if !(64..=65536).contains(&buf_size) || !buf_size.is_multiple_of(64) {
            return Err(src.err(
                p.buf_size.span(),
                f("buf_size"),
                format!("{buf_size} bytes (expected a multiple of 64 from 64 to 65536)"),
            ));
        }
        if let Some(peer) = &p.peer {
            if peer.get_ref() != "generator" {
                return Err(src.err(
                    peer.span(),
                    f("peer"),
                    format!(
                        "unknown peer {:?} (expected \"generator\", or no `peer` for a peer started elsewhere)",
                        peer.get_ref()
                    ),
                ));
            }
        }
        let need = window_bound(queues, ring_size, buf_size);
        let explain = format!(
            "needs at least {} = 4 KiB + {queues} queue pair(s) x 2 x ({ring_size} x (64 + {buf_size}) + 8 KiB)",
            human(need)
        );
        if let Some(ws) = &p.window_size {
            let Some(have) = pmd::window::spec::parse_size(ws.get_ref()) else {
                return Err(src.err(ws.span(), f("window_size"), format!("{:?} is not a size (expected a number with an optional K, M or G suffix, e.g. \"8M\")", ws.get_ref())));
            };
            if (have as u64) < need {
                return Err(src.err(
                    ws.span(),
                    f("window_size"),
                    format!(
                        "window too small: {} for this port's layout, which {explain}",
                        human(have as u64)
                    ),
                ));
            }
        }
        if let pmd::window::WindowSpec::Heap(have) = spec {
            if (have as u64) < need {
                return Err(src.err(
                    p.window.span(),
                    f("window"),
                    format!(
                        "window too small: {} for this port's layout, which {explain}",
                        human(have as u64)
                    ),
                ));
            }
        }
    }
    // Rings.
    let mut rings: HashMap<&str, (usize, RingUse)> = HashMap::new();
    for (i, r) in c.ring.iter().enumerate() {
        let r = r.get_ref();
        let name = r.name.get_ref().as_str();
        if name.is_empty() {
            return Err(src.err(
                r.name.span(),
                format!("ring[{i}].name"),
                "empty name (expected a name stages can refer to)",
            ));
        }
        if rings.insert(name, (i, RingUse::default())).is_some() {
            return Err(src.err(
                r.name.span(),
                format!("ring[{i}].name"),
                format!("ring {name:?} is defined twice (expected unique ring names)"),
            ));
        }
        let size = *r.size.get_ref();
        if !pow2_in(size, 2, 65536) {
            return Err(src.err(
                r.size.span(),
                format!("ring[{i}].size"),
                format!("{size} is not a power of two from 2 to 65536"),
            ));
        }
    }
    if c.lcore.is_empty() {
        return Err(src.err(
            0..0,
            "lcore",
            "no [[lcore]] table (expected at least one lcore)",
        ));
    }
    // Lcores and stages.
    let mut cpus: HashMap<usize, usize> = HashMap::new();
    let mut rx_queues: HashMap<(&str, u32), String> = HashMap::new();
    let mut tx_queues: HashMap<(&str, u32), String> = HashMap::new();
    for (li, l) in c.lcore.iter().enumerate() {
        let l = l.get_ref();
        let cpu = *l.cpu.get_ref();
        if !online.contains(&cpu) {
            return Err(src.err(
                l.cpu.span(),
                format!("lcore[{li}].cpu"),
                format!(
                    "CPU {cpu} does not exist or is offline (expected one of the online CPUs {})",
                    dataplane::lcore::format_core_list(online)
                ),
            ));
        }
        if let Some(other) = cpus.insert(cpu, li) {
            return Err(src.err(
                l.cpu.span(),
                format!("lcore[{li}].cpu"),
                format!("CPU {cpu} is already lcore[{other}]'s (expected one lcore per CPU)"),
            ));
        }
        let stages = l.stages.get_ref();
        if stages.is_empty() {
            return Err(src.err(l.stages.span(), format!("lcore[{li}].stages"), "no stages (expected a source (rx, ring_in), fwd stages, and a sink (tx, ring_out))"));
        }
        // Chain state: true while inside a chain (after a source, before a sink).
        let mut open = false;
        for (si, s) in stages.iter().enumerate() {
            let field = |k: &str| format!("lcore[{li}].stages[{si}].{k}");
            let here = format!("lcore[{li}].stages[{si}]");
            let st = s.get_ref();
            let kind = *st.kind.get_ref();
            // Which optional fields this kind takes.
            let (wants_port, wants_ring, wants_fn) = match kind {
                StageKind::Rx | StageKind::Tx => (true, false, false),
                StageKind::RingIn | StageKind::RingOut => (false, true, false),
                StageKind::Fwd => (false, false, true),
            };
            let kname = kind_name(kind);
            let extra = |name: &str, span: Range<usize>| {
                src.err(
                    span,
                    field(name),
                    format!(
                        "a {kname} stage takes no `{name}` (expected {})",
                        takes(kind)
                    ),
                )
            };
            let missing = |name: &str| {
                src.err(
                    s.span(),
                    here.clone(),
                    format!("a {kname} stage needs `{name}` (expected {})", takes(kind)),
                )
            };
            if !wants_port {
                if let Some(p) = &st.port {
                    return Err(extra("port", p.span()));
                }
                if let Some(q) = &st.queue {
                    return Err(extra("queue", q.span()));
                }
            }
            if !wants_ring {
                if let Some(r) = &st.ring {
                    return Err(extra("ring", r.span()));
                }
            }
            if !wants_fn {
                if let Some(x) = &st.func {
                    return Err(extra("fn", x.span()));
                }
            }
            let is_source = matches!(kind, StageKind::Rx | StageKind::RingIn);
            if is_source && open {
                return Err(src.err(st.kind.span(), field("kind"), format!("a {kname} stage inside a chain (expected a sink, tx or ring_out, to end the chain before the next source)")));
            }
            if !is_source && !open {
                return Err(src.err(st.kind.span(), field("kind"), format!("a {kname} stage with nothing before it (expected a source, rx or ring_in, to start the chain)")));
            }
            match kind {
                StageKind::Rx | StageKind::Tx => {
                    let port = st.port.as_ref().ok_or_else(|| missing("port"))?;
                    let queue = st.queue.as_ref().ok_or_else(|| missing("queue"))?;
                    let pname = port.get_ref().as_str();
                    let Some(&(_, nq)) = ports.get(pname) else {
                        return Err(src.err(
                            port.span(),
                            field("port"),
                            format!(
                                "no port named {pname:?} (expected one of {})",
                                names(ports.keys())
                            ),
                        ));
                    };
                    let q = *queue.get_ref();
                    if q >= nq {
                        return Err(src.err(queue.span(), field("queue"), format!("port {pname:?} has {nq} queue pair(s) (expected a queue from 0 to {})", nq - 1)));
                    }
                    let used = if kind == StageKind::Rx {
                        &mut rx_queues
                    } else {
                        &mut tx_queues
                    };
                    if let Some(other) = used.insert((pname, q), here.clone()) {
                        return Err(src.err(queue.span(), field("queue"), format!("{kname} queue {q} of port {pname:?} is already used by {other} (expected one {kname} stage per queue: queues are single-consumer/single-producer)")));
                    }
                    open = kind == StageKind::Rx;
                }
                StageKind::RingIn | StageKind::RingOut => {
                    let ring = st.ring.as_ref().ok_or_else(|| missing("ring"))?;
                    let rname = ring.get_ref().as_str();
                    let known = names(rings.keys());
                    let Some((_, usage)) = rings.get_mut(rname) else {
                        return Err(src.err(ring.span(), field("ring"), format!("no ring named {rname:?} (expected one of {known}, declared in a [[ring]] table)")));
                    };
                    let (slot, role) = if kind == StageKind::RingOut {
                        (&mut usage.producer, "producer")
                    } else {
                        (&mut usage.consumer, "consumer")
                    };
                    if let Some((other, _)) = slot {
                        return Err(src.err(ring.span(), field("ring"), format!("ring {rname:?} already has a {role} on lcore[{other}] (expected one producer and one consumer: rings are SPSC)")));
                    }
                    *slot = Some((li, ring.span()));
                    open = kind == StageKind::RingIn;
                }
                StageKind::Fwd => {
                    let func = st.func.as_ref().ok_or_else(|| missing("fn"))?;
                    if *func.get_ref() == FwdFn::Rxonly {
                        open = false;
                    }
                }
            }
        }
        if open {
            let last = stages.last().map_or(l.stages.span(), |s| s.span());
            return Err(src.err(
                last,
                format!("lcore[{li}].stages"),
                "the last chain has no sink (expected it to end in tx, ring_out or fwd rxonly)",
            ));
        }
    }
    // Every ring needs both ends.
    let mut unused: Vec<_> = rings.iter().collect();
    unused.sort_by_key(|(_, (i, _))| *i);
    for (name, (i, u)) in unused {
        let span = c.ring[*i].get_ref().name.span();
        let field = format!("ring[{i}].name");
        match (&u.producer, &u.consumer) {
            (None, _) => {
                return Err(src.err(
                    span,
                    field,
                    format!(
                        "ring {name:?} has no producer (expected a ring_out stage that feeds it)"
                    ),
                ))
            }
            (_, None) => {
                return Err(src.err(
                    span,
                    field,
                    format!(
                        "ring {name:?} has no consumer (expected a ring_in stage that drains it)"
                    ),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn kind_name(k: StageKind) -> &'static str {
    match k {
        StageKind::Rx => "rx",
        StageKind::Tx => "tx",
        StageKind::Fwd => "fwd",
        StageKind::RingIn => "ring_in",
        StageKind::RingOut => "ring_out",
    }
}

fn takes(k: StageKind) -> &'static str {
    match k {
        StageKind::Rx => "{ kind = \"rx\", port = NAME, queue = N }",
        StageKind::Tx => "{ kind = \"tx\", port = NAME, queue = N }",
        StageKind::Fwd => "{ kind = \"fwd\", fn = \"io|mac|macswap|rxonly\" }",
        StageKind::RingIn => "{ kind = \"ring_in\", ring = NAME }",
        StageKind::RingOut => "{ kind = \"ring_out\", ring = NAME }",
    }
}

fn names<'a>(it: impl Iterator<Item = &'a &'a str>) -> String {
    let mut v: Vec<String> = it.map(|n| format!("{n:?}")).collect();
    if v.is_empty() {
        return "(none defined)".into();
    }
    v.sort();
    v.join(", ")
}

impl fmt::Display for FwdFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FwdFn::Io => "io",
            FwdFn::Mac => "mac",
            FwdFn::Macswap => "macswap",
            FwdFn::Rxonly => "rxonly",
        })
    }
}

impl fmt::Display for RingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingMode::Split => "split",
            RingMode::Packed => "packed",
            RingMode::Posted => "posted",
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Frontend => "frontend",
            Role::Backend => "backend",
        })
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = *self.kind.get_ref();
        write!(f, "{}", kind_name(kind))?;
        if let (Some(p), Some(q)) = (&self.port, &self.queue) {
            write!(f, " {}/{}", p.get_ref(), q.get_ref())?;
        }
        if let Some(r) = &self.ring {
            write!(f, " {}", r.get_ref())?;
        }
        if let Some(x) = &self.func {
            write!(f, " {}", x.get_ref())?;
        }
        Ok(())
    }
}
