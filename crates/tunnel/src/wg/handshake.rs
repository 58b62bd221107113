//! The Noise_IKpsk2 handshake (whitepaper §5.4.2–§5.4.5) with a zero pre-shared
//! key, MAC1/MAC2 and cookie replies (§5.4.7), and this node's side of the
//! denial-of-service defence (§5.3).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use x25519_dalek::StaticSecret;

use super::crypto::{
    Rng, TAG_LEN, WallClock, aead_open, aead_seal, dh, hash, kdf, mac, public_of, xaead_open,
    xaead_seal,
};
use super::{
    COOKIE_LEN, Error, INITIATION_LEN, MSG_COOKIE, MSG_INITIATION, MSG_RESPONSE, RESPONSE_LEN,
};

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";
/// The secret behind cookies changes this often.
const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// `C` and `H` before anything is mixed in, with the responder's static key.
fn initial(responder_static: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let c = hash(&[CONSTRUCTION]);
    let h = hash(&[&c, IDENTIFIER]);
    (c, hash(&[&h, responder_static]))
}

/// Constant-time equality of two MACs.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Cookie input: the source address and port of a message.
fn addr_bytes(addr: &SocketAddr) -> ([u8; 18], usize) {
    let mut b = [0u8; 18];
    let n = match addr.ip().to_canonical() {
        std::net::IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            4
        }
        std::net::IpAddr::V6(a) => {
            b[..16].copy_from_slice(&a.octets());
            16
        }
    };
    b[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
    (b, n + 2)
}

/// This node's static identity, random stream, clock and load state: what every
/// handshake with every peer shares.
pub struct Local {
    secret: StaticSecret,
    public: [u8; 32],
    /// `HASH(LABEL_MAC1 ‖ our public key)`: checks MAC1 of messages to us.
    mac1_key: [u8; 32],
    /// `HASH(LABEL_COOKIE ‖ our public key)`: seals cookies we hand out.
    cookie_key: [u8; 32],
    /// The seeded random stream (ephemeral keys, indices, cookies, jitter).
    pub rng: Rng,
    /// The TAI64N clock.
    pub clock: WallClock,
    cookie_secret: [u8; 32],
    cookie_secret_until: Option<Instant>,
    handshakes: u64,
    limit: u64,
}

/// A handshake initiation that authenticated: who sent it and the state to
/// answer it with.
#[derive(Clone)]
pub struct Initiation {
    /// The initiator's static public key.
    pub remote_static: [u8; 32],
    /// The initiator's index.
    pub sender: u32,
    ephemeral: [u8; 32],
    chain: [u8; 32],
    hash: [u8; 32],
    /// The initiator's TAI64N timestamp.
    pub timestamp: [u8; 12],
}

impl Initiation {
    /// The initiator's ephemeral public key: with `sender`, it names this
    /// handshake attempt (a retry makes a new one).
    pub(super) fn ephemeral(&self) -> &[u8; 32] {
        &self.ephemeral
    }
}

impl Local {
    /// This node: its X25519 secret, the random stream, the wall clock (`wall`
    /// read at `now`), and how many handshake messages a second it takes before
    /// demanding cookies.
    pub fn new(secret: [u8; 32], rng: Rng, now: Instant, wall: SystemTime, limit: u64) -> Self {
        let secret = StaticSecret::from(secret);
        let public = public_of(&secret);
        Self {
            mac1_key: hash(&[LABEL_MAC1, &public]),
            cookie_key: hash(&[LABEL_COOKIE, &public]),
            secret,
            public,
            rng,
            clock: WallClock::new(now, wall),
            cookie_secret: [0; 32],
            cookie_secret_until: None,
            handshakes: 0,
            limit,
        }
    }

    /// Our static public key.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// `DH(our static, public)` (`None` for a low-order point): the pair secret
    /// the discovery key is derived from.
    pub fn dh(&self, public: &[u8; 32]) -> Option<[u8; 32]> {
        dh(&self.secret, public)
    }

    /// Whether a handshake message carries a valid MAC1 for us.
    pub fn check_mac1(&self, msg: &[u8]) -> bool {
        let Some(at) = msg.len().checked_sub(32) else {
            return false;
        };
        ct_eq(&mac(&self.mac1_key, &msg[..at]), &msg[at..at + 16])
    }

    /// Counts one handshake message; `true` once this second's allowance is spent.
    pub fn under_load(&mut self) -> bool {
        self.handshakes = self.handshakes.saturating_add(1);
        self.handshakes > self.limit
    }

    /// Starts a new second of the allowance.
    pub fn reset_load(&mut self) {
        self.handshakes = 0;
    }

    fn cookie_for(&mut self, now: Instant, from: &SocketAddr) -> [u8; 16] {
        if self.cookie_secret_until.is_none_or(|t| now >= t) {
            self.cookie_secret = self.rng.bytes();
            self.cookie_secret_until = Some(now + COOKIE_SECRET_LIFETIME);
        }
        let (b, n) = addr_bytes(from);
        mac(&self.cookie_secret, &b[..n])
    }

    /// Whether a handshake message from `from` carries a valid MAC2 (the cookie
    /// we gave that address).
    pub fn check_mac2(&mut self, now: Instant, msg: &[u8], from: &SocketAddr) -> bool {
        let Some(at) = msg.len().checked_sub(16) else {
            return false;
        };
        let cookie = self.cookie_for(now, from);
        ct_eq(&mac16(&cookie, &msg[..at]), &msg[at..])
    }

    /// Writes a cookie reply to handshake message `msg` from `from` into `out`.
    pub fn cookie_reply(
        &mut self,
        now: Instant,
        msg: &[u8],
        from: &SocketAddr,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        if out.len() < COOKIE_LEN || msg.len() < 40 {
            return Err(Error::BufferTooSmall);
        }
        let cookie = self.cookie_for(now, from);
        let nonce: [u8; 24] = self.rng.bytes();
        let mac1 = &msg[msg.len() - 32..msg.len() - 16];
        let sealed = xaead_seal(&self.cookie_key, &nonce, &cookie, mac1);
        out[..4].copy_from_slice(&u32::from(MSG_COOKIE).to_le_bytes());
        out[4..8].copy_from_slice(&msg[4..8]);
        out[8..32].copy_from_slice(&nonce);
        out[32..64].copy_from_slice(&sealed);
        Ok(COOKIE_LEN)
    }

    /// Authenticates a handshake initiation (MAC1 already checked) and learns
    /// who sent it; the caller checks that the sender is a peer.
    pub fn consume_initiation(&self, msg: &[u8]) -> Result<Initiation, Error> {
        if msg.len() != INITIATION_LEN || msg[0] != MSG_INITIATION {
            return Err(Error::Malformed);
        }
        let (c, h) = initial(&self.public);
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&msg[8..40]);
        let [c] = kdf::<1>(&c, &ephemeral);
        let h = hash(&[&h, &ephemeral]);
        let [c, k] = kdf::<2>(&c, &dh(&self.secret, &ephemeral).ok_or(Error::BadAuth)?);
        let mut remote_static = [0u8; 32];
        if !aead_open(&k, 0, &msg[40..88], &h, &mut remote_static) {
            return Err(Error::BadAuth);
        }
        let h = hash(&[&h, &msg[40..88]]);
        let [c, k] = kdf::<2>(&c, &dh(&self.secret, &remote_static).ok_or(Error::BadAuth)?);
        let mut timestamp = [0u8; 12];
        if !aead_open(&k, 0, &msg[88..116], &h, &mut timestamp) {
            return Err(Error::BadAuth);
        }
        let h = hash(&[&h, &msg[88..116]]);
        Ok(Initiation {
            remote_static,
            sender: super::le32(&msg[4..]),
            ephemeral,
            chain: c,
            hash: h,
            timestamp,
        })
    }
}

/// `MAC` keyed with a 16-byte cookie (zero-padded, as BLAKE2s keys its length).
fn mac16(cookie: &[u8; 16], input: &[u8]) -> [u8; 16] {
    use blake2::Blake2sMac;
    use blake2::digest::consts::U16;
    use blake2::digest::{FixedOutput, KeyInit, Mac};
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(cookie)
        .unwrap_or_else(|_| unreachable!("16-byte key"));
    Mac::update(&mut m, input);
    m.finalize_fixed().into()
}

/// What we know of a peer's static key, computed once.
pub struct Remote {
    /// The peer's static public key.
    pub public: [u8; 32],
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    /// `DH(our static, their static)`.
    static_static: [u8; 32],
}

impl Remote {
    /// The peer with static key `public`; `None` if it is a low-order point.
    pub fn new(local: &Local, public: [u8; 32]) -> Option<Self> {
        Some(Self {
            mac1_key: hash(&[LABEL_MAC1, &public]),
            cookie_key: hash(&[LABEL_COOKIE, &public]),
            static_static: dh(&local.secret, &public)?,
            public,
        })
    }

    /// Fills in MAC1 and MAC2 (with `cookie`, else zero) of a message to the peer.
    fn add_macs(&self, cookie: Option<&[u8; 16]>, msg: &mut [u8]) -> [u8; 16] {
        let n = msg.len();
        let mac1 = mac(&self.mac1_key, &msg[..n - 32]);
        msg[n - 32..n - 16].copy_from_slice(&mac1);
        let mac2 = cookie.map_or([0; 16], |c| mac16(c, &msg[..n - 16]));
        msg[n - 16..].copy_from_slice(&mac2);
        mac1
    }
}

/// An initiation we sent and await the response to.
pub struct InitState {
    /// Our index in it.
    pub index: u32,
    ephemeral: StaticSecret,
    chain: [u8; 32],
    hash: [u8; 32],
    /// Its MAC1 (a cookie reply is sealed with it).
    mac1: [u8; 16],
}

/// The transport keys a handshake yields: (sending, receiving).
pub type TransportKeys = ([u8; 32], [u8; 32]);

/// Writes an initiation to `remote` with our index `index` into `out[..148]`.
pub fn create_initiation(
    local: &mut Local,
    remote: &Remote,
    index: u32,
    cookie: Option<&[u8; 16]>,
    now: Instant,
    out: &mut [u8],
) -> Result<InitState, Error> {
    if out.len() < INITIATION_LEN {
        return Err(Error::BufferTooSmall);
    }
    let msg = &mut out[..INITIATION_LEN];
    let (c, h) = initial(&remote.public);
    let ephemeral = local.rng.secret();
    let e_pub = public_of(&ephemeral);
    let [c] = kdf::<1>(&c, &e_pub);
    let h = hash(&[&h, &e_pub]);
    let [c, k] = kdf::<2>(&c, &dh(&ephemeral, &remote.public).ok_or(Error::BadAuth)?);
    msg[..4].copy_from_slice(&u32::from(MSG_INITIATION).to_le_bytes());
    msg[4..8].copy_from_slice(&index.to_le_bytes());
    msg[8..40].copy_from_slice(&e_pub);
    msg[40..72].copy_from_slice(&local.public);
    aead_seal(&k, 0, &mut msg[40..88], &h);
    let h = hash(&[&h, &msg[40..88]]);
    let [c, k] = kdf::<2>(&c, &remote.static_static);
    let ts = local.clock.tai64n(now);
    msg[88..100].copy_from_slice(&ts);
    aead_seal(&k, 0, &mut msg[88..116], &h);
    let h = hash(&[&h, &msg[88..116]]);
    let mac1 = remote.add_macs(cookie, msg);
    Ok(InitState {
        index,
        ephemeral,
        chain: c,
        hash: h,
        mac1,
    })
}

/// Answers `init` from `remote` with our index `index`: writes the response into
/// `out[..92]` and returns the transport keys.
pub fn create_response(
    local: &mut Local,
    remote: &Remote,
    init: &Initiation,
    index: u32,
    cookie: Option<&[u8; 16]>,
    out: &mut [u8],
) -> Result<TransportKeys, Error> {
    if out.len() < RESPONSE_LEN {
        return Err(Error::BufferTooSmall);
    }
    let msg = &mut out[..RESPONSE_LEN];
    let ephemeral = local.rng.secret();
    let e_pub = public_of(&ephemeral);
    let [c] = kdf::<1>(&init.chain, &e_pub);
    let h = hash(&[&init.hash, &e_pub]);
    let [c] = kdf::<1>(&c, &dh(&ephemeral, &init.ephemeral).ok_or(Error::BadAuth)?);
    let [c] = kdf::<1>(&c, &dh(&ephemeral, &remote.public).ok_or(Error::BadAuth)?);
    let [c, t, k] = kdf::<3>(&c, &[0u8; 32]);
    let h = hash(&[&h, &t]);
    msg[..4].copy_from_slice(&u32::from(MSG_RESPONSE).to_le_bytes());
    msg[4..8].copy_from_slice(&index.to_le_bytes());
    msg[8..12].copy_from_slice(&init.sender.to_le_bytes());
    msg[12..44].copy_from_slice(&e_pub);
    aead_seal(&k, 0, &mut msg[44..44 + TAG_LEN], &h);
    remote.add_macs(cookie, msg);
    let [recv, send] = kdf::<2>(&c, &[]);
    Ok((send, recv))
}

/// Completes our handshake `state` with the response `msg` (MAC1 checked) and
/// returns the transport keys.
pub fn consume_response(
    local: &Local,
    state: &InitState,
    msg: &[u8],
) -> Result<TransportKeys, Error> {
    if msg.len() != RESPONSE_LEN || msg[0] != MSG_RESPONSE {
        return Err(Error::Malformed);
    }
    let mut e_pub = [0u8; 32];
    e_pub.copy_from_slice(&msg[12..44]);
    let [c] = kdf::<1>(&state.chain, &e_pub);
    let h = hash(&[&state.hash, &e_pub]);
    let [c] = kdf::<1>(&c, &dh(&state.ephemeral, &e_pub).ok_or(Error::BadAuth)?);
    let [c] = kdf::<1>(&c, &dh(&local.secret, &e_pub).ok_or(Error::BadAuth)?);
    let [c, t, k] = kdf::<3>(&c, &[0u8; 32]);
    let h = hash(&[&h, &t]);
    if !aead_open(&k, 0, &msg[44..60], &h, &mut []) {
        return Err(Error::BadAuth);
    }
    let [send, recv] = kdf::<2>(&c, &[]);
    Ok((send, recv))
}

/// Opens a cookie reply to our handshake `state` from `remote`.
pub fn consume_cookie(remote: &Remote, state: &InitState, msg: &[u8]) -> Result<[u8; 16], Error> {
    if msg.len() != COOKIE_LEN || msg[0] != MSG_COOKIE {
        return Err(Error::Malformed);
    }
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&msg[8..32]);
    let mut sealed = [0u8; 32];
    sealed.copy_from_slice(&msg[32..64]);
    xaead_open(&remote.cookie_key, &nonce, &sealed, &state.mac1).ok_or(Error::BadAuth)
}
