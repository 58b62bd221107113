//! The nftables ruleset generation: a counter the kernel bumps on every
//! committed nftables transaction (any table), read with one
//! `NFT_MSG_GETGEN` round trip over `NETLINK_NETFILTER`. Observation lists a
//! table with `nft` (a process) only when the generation moved since the last
//! listing.

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN`.
const GETGEN: u16 = (10 << 8) | 16;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN`.
const NEWGEN: u16 = (10 << 8) | 15;
/// `NFTA_GEN_ID`.
const NFTA_GEN_ID: u16 = 1;

/// Reads the generation, opening its socket on first use (in the calling
/// thread's network namespace) and again after a failure.
#[derive(Debug, Default)]
pub(super) struct RulesetGeneration {
    socket: Option<Generation>,
}

impl RulesetGeneration {
    /// The current generation; `None` when it cannot be read (then the
    /// caller lists every time, or falls back to its own schedule).
    pub(super) fn current(&mut self) -> Option<u32> {
        if self.socket.is_none() {
            match Generation::open() {
                Ok(g) => self.socket = Some(g),
                Err(e) => {
                    tracing::debug!(error = %e, "nftables generation unavailable");
                    return None;
                }
            }
        }
        match self.socket.as_mut()?.read() {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the nftables generation");
                self.socket = None;
                None
            }
        }
    }
}

/// A `NETLINK_NETFILTER` socket asking for the ruleset generation.
#[derive(Debug)]
struct Generation {
    socket: Socket,
    seq: u32,
}

impl Generation {
    fn open() -> std::io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    fn read(&mut self) -> std::io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(20);
        msg.extend_from_slice(&20u32.to_ne_bytes());
        msg.extend_from_slice(&GETGEN.to_ne_bytes());
        msg.extend_from_slice(&1u16.to_ne_bytes()); // NLM_F_REQUEST
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[0, 0, 0, 0]); // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0
        self.socket.send(&msg, 0)?;
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        for _ in 0..8 {
            let (buf, _) = self.socket.recv_from_full()?;
            let Some(header) = buf.get(..16) else {
                return Err(bad("short netlink reply"));
            };
            let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
            let u32_at =
                |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let seq = u32_at(header, 8);
            if seq != self.seq {
                continue; // a late reply to an earlier request
            }
            let kind = u16_at(header, 4);
            if kind == 2 {
                // NLMSG_ERROR
                let errno = buf
                    .get(16..20)
                    .map_or(0, |b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            if kind != NEWGEN {
                return Err(bad("unexpected netlink reply"));
            }
            let len = usize::try_from(u32_at(header, 0))
                .unwrap_or(usize::MAX)
                .min(buf.len());
            // Attributes after the header and the 4-byte nfgenmsg.
            let mut at = 20;
            while at + 4 <= len {
                let alen = usize::from(u16_at(&buf, at));
                let atype = u16_at(&buf, at + 2) & 0x3fff;
                if alen < 4 || at + alen > len {
                    break;
                }
                if atype == NFTA_GEN_ID && alen >= 8 {
                    let b = &buf[at + 4..at + 8];
                    return Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                }
                at += alen.div_ceil(4) * 4;
            }
            return Err(bad("netlink reply without a generation"));
        }
        Err(bad("no netlink reply to the generation request"))
    }
}
