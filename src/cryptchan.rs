//! cryptchan (thesis §2.4.3, "MUTA implements its own abstractions over
//! Libsodium"): the key exchange and stream encryption every MUTA connection
//! uses, over `libsodium-sys-stable`.
//!
//! - [`KeyPair`], [`kx_client`], [`kx_server`]: `crypto_kx` (X25519 +
//!   BLAKE2b). The side that opened the TCP connection is the kx *client*
//!   (port decision).
//! - [`PushStream`], [`PullStream`]: `crypto_secretstream_xchacha20poly1305`,
//!   one per direction. Both work **in place**: a push turns
//!   `[tag slot][message][16 spare bytes]` into the ciphertext over the same
//!   bytes, and a pull turns the ciphertext back into `[tag][message][mac]`, so
//!   messages are encrypted and decrypted inside secpool blocks and output
//!   buffers with no copy. libsodium writes the tag byte before it reads the
//!   message and checks the MAC before it decrypts, which is what makes this
//!   layout safe; a test compares it with libsodium's out-of-place result.
//! - A pull fails on any tampering, truncation, reordering, replay or wrong
//!   key (the MAC and the stream's internal nonce), and leaves the stream
//!   unchanged. A message that authenticates but carries a tag other than
//!   `TAG_MESSAGE` (we never send one) has already advanced the stream; either
//!   way the caller closes the connection.
//! - [`PushStream::export_state`] and [`PushStream::import_state`] move a
//!   stream to another process: the proxy hands the shard the state of the
//!   proxy-to-client stream in `FPROXY_MSG_PLAYER_CRYPTCHAN` (port decision).
//! - Secret keys and stream states are wiped (`sodium_memzero`) when dropped.
//! - [`init`] runs `sodium_init` once; every constructor calls it too.
//! - Also: [`random_bytes`], [`memcmp_ct`] (constant-time comparison, for
//!   tokens and passwords), [`pwhash_str`] and [`pwhash_str_verify`]
//!   (Argon2id, for the login server's accounts).
//!
//! This is the only module of the crate with `unsafe` code; every block says
//! why it is sound.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::fmt;
use std::sync::OnceLock;

use libsodium_sys as sodium;

/// Bytes in a public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Bytes in a secretstream header.
pub const HEADER_BYTES: usize = 24;
/// Bytes a push adds to a message: one tag byte and a 16-byte MAC.
pub const ABYTES: usize = 17;
/// Bytes of an exported push-stream state.
pub const STATE_BYTES: usize = 52;
/// Bytes of a login token (thesis §3.8.3: "a random 64-byte key").
pub const TOKEN_BYTES: usize = 64;

const _: () = assert!(sodium::crypto_kx_PUBLICKEYBYTES as usize == PUBLIC_KEY_BYTES);
const _: () = assert!(sodium::crypto_kx_SECRETKEYBYTES as usize == 32);
const _: () = assert!(sodium::crypto_kx_SESSIONKEYBYTES as usize == 32);
const _: () =
    assert!(sodium::crypto_secretstream_xchacha20poly1305_HEADERBYTES as usize == HEADER_BYTES);
const _: () = assert!(sodium::crypto_secretstream_xchacha20poly1305_KEYBYTES as usize == 32);
const _: () = assert!(
    std::mem::size_of::<sodium::crypto_secretstream_xchacha20poly1305_state>() == STATE_BYTES
);

/// What went wrong; never more detail than the caller needs to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptError {
    /// `sodium_init` failed (no usable randomness).
    Init,
    /// The peer's public key is unusable (a low-order point).
    BadPublicKey,
    /// The header could not start a stream.
    BadHeader,
    /// The message failed authentication: tampered, truncated, reordered,
    /// replayed, or encrypted with another key.
    Decrypt,
    /// The message is too short to be a ciphertext, or the buffer has no room.
    Length,
    /// A tag other than `TAG_MESSAGE` (the protocols only use that one).
    Tag,
    /// Password hashing failed (out of memory).
    Pwhash,
}

impl fmt::Display for CryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CryptError::Init => "libsodium initialisation failed",
            CryptError::BadPublicKey => "unusable public key",
            CryptError::BadHeader => "bad stream header",
            CryptError::Decrypt => "message failed authentication",
            CryptError::Length => "bad ciphertext length",
            CryptError::Tag => "unexpected stream tag",
            CryptError::Pwhash => "password hashing failed",
        })
    }
}

impl std::error::Error for CryptError {}

/// Initialises libsodium (`sodium_init`) once per process. Safe to call from
/// any thread, any number of times.
pub fn init() -> Result<(), CryptError> {
    static INIT: OnceLock<bool> = OnceLock::new();
    // SAFETY: sodium_init takes no arguments, is thread-safe and idempotent
    // (it returns 1 when already initialised); OnceLock makes it run once.
    let ok = *INIT.get_or_init(|| unsafe { sodium::sodium_init() } >= 0);
    if ok { Ok(()) } else { Err(CryptError::Init) }
}

fn must_init() {
    // Without randomness no key can be made; there is nothing to fall back to.
    init().expect("libsodium could not be initialised");
}

/// Fills `buf` with cryptographically secure random bytes.
pub fn random_bytes(buf: &mut [u8]) {
    must_init();
    // SAFETY: the pointer and length describe `buf`, which is valid for writes
    // of `buf.len()` bytes for the duration of the call.
    unsafe { sodium::randombytes_buf(buf.as_mut_ptr().cast(), buf.len()) }
}

/// Compares two byte strings in time that depends only on their length
/// (`sodium_memcmp`). Strings of different lengths are unequal.
pub fn memcmp_ct(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    must_init();
    // SAFETY: both pointers are valid for reads of `a.len()` bytes (checked
    // equal above); sodium_memcmp only reads them.
    unsafe { sodium::sodium_memcmp(a.as_ptr().cast(), b.as_ptr().cast(), a.len()) == 0 }
}

/// Overwrites `buf` with zeros in a way the compiler cannot remove.
pub fn memzero(buf: &mut [u8]) {
    // SAFETY: the pointer and length describe `buf`, valid for writes.
    unsafe { sodium::sodium_memzero(buf.as_mut_ptr().cast(), buf.len()) }
}

/// 32 secret bytes, wiped on drop.
struct Secret32([u8; 32]);

impl Drop for Secret32 {
    fn drop(&mut self) {
        memzero(&mut self.0);
    }
}

/// A kx public key. Printed and parsed as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; PUBLIC_KEY_BYTES]);

impl PublicKey {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<PublicKey> {
        let bytes = hex.as_bytes();
        if bytes.len() != 2 * PUBLIC_KEY_BYTES {
            return None;
        }
        let mut key = [0u8; PUBLIC_KEY_BYTES];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            key[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(PublicKey(key))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A `crypto_kx` key pair; the secret half is wiped on drop.
pub struct KeyPair {
    public: PublicKey,
    secret: Secret32,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({}, secret: ***)", self.public.to_hex())
    }
}

impl KeyPair {
    /// A new random key pair (`crypto_kx_keypair`).
    pub fn generate() -> KeyPair {
        must_init();
        let mut pk = [0u8; 32];
        let mut sk = Secret32([0u8; 32]);
        // SAFETY: both buffers are 32 bytes, the sizes crypto_kx_keypair writes
        // (asserted against the crypto_kx_* constants above).
        unsafe { sodium::crypto_kx_keypair(pk.as_mut_ptr(), sk.0.as_mut_ptr()) };
        KeyPair {
            public: PublicKey(pk),
            secret: sk,
        }
    }

    /// The key pair derived from a 32-byte seed (`crypto_kx_seed_keypair`),
    /// for a server whose key must survive restarts so clients can pin it.
    pub fn from_seed(seed: &[u8; 32]) -> KeyPair {
        must_init();
        let mut pk = [0u8; 32];
        let mut sk = Secret32([0u8; 32]);
        // SAFETY: pk and sk are 32 bytes and the seed is
        // crypto_kx_SEEDBYTES (32) bytes, readable for the call.
        unsafe {
            sodium::crypto_kx_seed_keypair(pk.as_mut_ptr(), sk.0.as_mut_ptr(), seed.as_ptr())
        };
        KeyPair {
            public: PublicKey(pk),
            secret: sk,
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }
}

/// The two session keys of one connection: `rx` decrypts what the peer sends,
/// `tx` encrypts what this side sends. Wiped on drop.
pub struct SessionKeys {
    rx: Secret32,
    tx: Secret32,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(***)")
    }
}

/// Session keys for the side that opened the connection
/// (`crypto_kx_client_session_keys`).
pub fn kx_client(mine: &KeyPair, server: &PublicKey) -> Result<SessionKeys, CryptError> {
    must_init();
    let mut keys = SessionKeys {
        rx: Secret32([0; 32]),
        tx: Secret32([0; 32]),
    };
    // SAFETY: rx and tx are 32-byte output buffers; the three keys are 32-byte
    // inputs; all are valid for the call and do not overlap.
    let rc = unsafe {
        sodium::crypto_kx_client_session_keys(
            keys.rx.0.as_mut_ptr(),
            keys.tx.0.as_mut_ptr(),
            mine.public.0.as_ptr(),
            mine.secret.0.as_ptr(),
            server.0.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(keys)
    } else {
        Err(CryptError::BadPublicKey)
    }
}

/// Session keys for the side that accepted the connection
/// (`crypto_kx_server_session_keys`).
pub fn kx_server(mine: &KeyPair, client: &PublicKey) -> Result<SessionKeys, CryptError> {
    must_init();
    let mut keys = SessionKeys {
        rx: Secret32([0; 32]),
        tx: Secret32([0; 32]),
    };
    // SAFETY: as in kx_client.
    let rc = unsafe {
        sodium::crypto_kx_server_session_keys(
            keys.rx.0.as_mut_ptr(),
            keys.tx.0.as_mut_ptr(),
            mine.public.0.as_ptr(),
            mine.secret.0.as_ptr(),
            client.0.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(keys)
    } else {
        Err(CryptError::BadPublicKey)
    }
}

type StreamState = sodium::crypto_secretstream_xchacha20poly1305_state;

fn zeroed_state() -> Box<StreamState> {
    Box::new(StreamState {
        k: [0; 32],
        nonce: [0; 12],
        _pad: [0; 8],
    })
}

fn wipe_state(state: &mut StreamState) {
    memzero(&mut state.k);
    memzero(&mut state.nonce);
}

/// The sending half of a stream.
pub struct PushStream {
    state: Box<StreamState>,
}

impl fmt::Debug for PushStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PushStream(***)")
    }
}

impl Drop for PushStream {
    fn drop(&mut self) {
        wipe_state(&mut self.state);
    }
}

impl PushStream {
    /// Starts a stream with the session's `tx` key; the header must reach the
    /// peer before the first message.
    pub fn new(keys: &SessionKeys) -> (PushStream, [u8; HEADER_BYTES]) {
        must_init();
        let mut state = zeroed_state();
        let mut header = [0u8; HEADER_BYTES];
        // SAFETY: state points to a valid, exclusively borrowed state struct;
        // header is HEADERBYTES long; the key is KEYBYTES (32) long.
        unsafe {
            sodium::crypto_secretstream_xchacha20poly1305_init_push(
                &mut *state,
                header.as_mut_ptr(),
                keys.tx.0.as_ptr(),
            )
        };
        (PushStream { state }, header)
    }

    /// Encrypts in place. `buf` is `[tag slot (1 byte)][message][16 spare
    /// bytes]`, so `buf.len()` is the message length plus [`ABYTES`]; on return
    /// it holds the ciphertext.
    pub fn push_in_place(&mut self, buf: &mut [u8]) -> Result<(), CryptError> {
        if buf.len() < ABYTES {
            return Err(CryptError::Length);
        }
        let mlen = buf.len() - ABYTES;
        let out = buf.as_mut_ptr();
        // SAFETY: `out` is valid for writes of mlen + ABYTES bytes (buf.len()).
        // The message is read from out + 1, exactly where its ciphertext is
        // written: libsodium writes out[0] (the tag) before reading the
        // message, XORs the message in place (c == m is supported by the
        // stream cipher), and writes the MAC after it, at out + 1 + mlen. No
        // other overlap exists. The state is valid and exclusively borrowed.
        let rc = unsafe {
            sodium::crypto_secretstream_xchacha20poly1305_push(
                &mut *self.state,
                out,
                std::ptr::null_mut(),
                out.add(1),
                mlen as u64,
                std::ptr::null(),
                0,
                sodium::crypto_secretstream_xchacha20poly1305_TAG_MESSAGE as u8,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(CryptError::Length)
        }
    }

    /// The stream's state (key and nonce), to continue it elsewhere. The
    /// caller must not push on this stream afterwards, or both ends would
    /// reuse nonces.
    pub fn export_state(&self) -> [u8; STATE_BYTES] {
        let mut out = [0u8; STATE_BYTES];
        out[..32].copy_from_slice(&self.state.k);
        out[32..44].copy_from_slice(&self.state.nonce);
        out[44..].copy_from_slice(&self.state._pad);
        out
    }

    /// A stream continued from [`PushStream::export_state`].
    pub fn import_state(bytes: &[u8; STATE_BYTES]) -> PushStream {
        let mut state = zeroed_state();
        state.k.copy_from_slice(&bytes[..32]);
        state.nonce.copy_from_slice(&bytes[32..44]);
        state._pad.copy_from_slice(&bytes[44..]);
        PushStream { state }
    }
}

/// The receiving half of a stream.
pub struct PullStream {
    state: Box<StreamState>,
}

impl fmt::Debug for PullStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PullStream(***)")
    }
}

impl Drop for PullStream {
    fn drop(&mut self) {
        wipe_state(&mut self.state);
    }
}

impl PullStream {
    /// Starts receiving a stream with the session's `rx` key and the header
    /// the peer sent.
    pub fn new(keys: &SessionKeys, header: &[u8; HEADER_BYTES]) -> Result<PullStream, CryptError> {
        must_init();
        let mut state = zeroed_state();
        // SAFETY: state is valid and exclusive; header is HEADERBYTES long and
        // the key 32 bytes, both readable for the call.
        let rc = unsafe {
            sodium::crypto_secretstream_xchacha20poly1305_init_pull(
                &mut *state,
                header.as_ptr(),
                keys.rx.0.as_ptr(),
            )
        };
        if rc == 0 {
            Ok(PullStream { state })
        } else {
            Err(CryptError::BadHeader)
        }
    }

    /// Decrypts in place and returns the message length `m`: on success the
    /// message is `buf[1..1 + m]`. On a MAC failure the stream is unchanged;
    /// on [`CryptError::Tag`] it has advanced past the message. Either way the
    /// connection should be closed.
    pub fn pull_in_place(&mut self, buf: &mut [u8]) -> Result<usize, CryptError> {
        if buf.len() < ABYTES {
            return Err(CryptError::Length);
        }
        let mlen = buf.len() - ABYTES;
        let mut tag = 0u8;
        let inp = buf.as_mut_ptr();
        // SAFETY: `inp` is valid for reads and writes of buf.len() bytes. The
        // plaintext is written to inp + 1, exactly over its ciphertext:
        // libsodium authenticates the whole input first and only then XORs the
        // ciphertext into the message buffer (c == m is supported by the
        // stream cipher). The state is valid and exclusively borrowed.
        let rc = unsafe {
            sodium::crypto_secretstream_xchacha20poly1305_pull(
                &mut *self.state,
                inp.add(1),
                std::ptr::null_mut(),
                &mut tag,
                inp,
                buf.len() as u64,
                std::ptr::null(),
                0,
            )
        };
        if rc != 0 {
            return Err(CryptError::Decrypt);
        }
        if u32::from(tag) != sodium::crypto_secretstream_xchacha20poly1305_TAG_MESSAGE {
            return Err(CryptError::Tag);
        }
        Ok(mlen)
    }
}

/// How much work a password hash costs: `Min` for test and benchmark
/// accounts, `Interactive` for real ones (libsodium's recommendation for
/// online logins: 64 MiB, about 0.1 s here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PwhashCost {
    /// `OPSLIMIT_MIN`, `MEMLIMIT_MIN`: microseconds; for bots only.
    Min,
    /// `OPSLIMIT_INTERACTIVE`, `MEMLIMIT_INTERACTIVE`.
    Interactive,
}

/// Hashes a password with Argon2id into libsodium's self-describing string
/// (`crypto_pwhash_str`), which records the cost it was made with.
pub fn pwhash_str(password: &str, cost: PwhashCost) -> Result<String, CryptError> {
    must_init();
    let (ops, mem) = match cost {
        PwhashCost::Min => (
            sodium::crypto_pwhash_OPSLIMIT_MIN,
            sodium::crypto_pwhash_MEMLIMIT_MIN,
        ),
        PwhashCost::Interactive => (
            sodium::crypto_pwhash_OPSLIMIT_INTERACTIVE,
            sodium::crypto_pwhash_MEMLIMIT_INTERACTIVE,
        ),
    };
    let mut out = [0u8; sodium::crypto_pwhash_STRBYTES as usize];
    // SAFETY: `out` is STRBYTES long, the size crypto_pwhash_str writes
    // (including the NUL); the password pointer and length describe `password`.
    let rc = unsafe {
        sodium::crypto_pwhash_str(
            out.as_mut_ptr().cast(),
            password.as_ptr().cast(),
            password.len() as u64,
            u64::from(ops),
            mem as usize,
        )
    };
    if rc != 0 {
        return Err(CryptError::Pwhash);
    }
    let text = CStr::from_bytes_until_nul(&out).map_err(|_| CryptError::Pwhash)?;
    Ok(text.to_str().map_err(|_| CryptError::Pwhash)?.to_string())
}

/// True if `password` matches a hash made by [`pwhash_str`]. A malformed hash
/// never matches.
pub fn pwhash_str_verify(hash: &str, password: &str) -> bool {
    must_init();
    let Ok(hash) = CString::new(hash) else {
        return false;
    };
    if hash.as_bytes().len() >= sodium::crypto_pwhash_STRBYTES as usize {
        return false;
    }
    // SAFETY: `hash` is a NUL-terminated string shorter than STRBYTES, which is
    // what crypto_pwhash_str_verify reads; the password pointer and length
    // describe `password`.
    let rc = unsafe {
        sodium::crypto_pwhash_str_verify(
            hash.as_ptr(),
            password.as_ptr().cast(),
            password.len() as u64,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair of streams: (client push, server pull), (server push, client pull).
    fn channel_pair() -> ((PushStream, PullStream), (PushStream, PullStream)) {
        let client = KeyPair::generate();
        let server = KeyPair::generate();
        let ck = kx_client(&client, &server.public()).unwrap();
        let sk = kx_server(&server, &client.public()).unwrap();
        let (c_push, c_header) = PushStream::new(&ck);
        let (s_push, s_header) = PushStream::new(&sk);
        let s_pull = PullStream::new(&sk, &c_header).unwrap();
        let c_pull = PullStream::new(&ck, &s_header).unwrap();
        ((c_push, s_pull), (s_push, c_pull))
    }

    fn seal(push: &mut PushStream, msg: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; msg.len() + ABYTES];
        buf[1..1 + msg.len()].copy_from_slice(msg);
        push.push_in_place(&mut buf).unwrap();
        buf
    }

    fn open(pull: &mut PullStream, ct: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut buf = ct.to_vec();
        let n = pull.pull_in_place(&mut buf)?;
        Ok(buf[1..1 + n].to_vec())
    }

    #[test]
    fn round_trip_both_directions_all_sizes() {
        let ((mut c_push, mut s_pull), (mut s_push, mut c_pull)) = channel_pair();
        for len in [0, 1, 16, 17, 100, 1024, 65535] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            assert_eq!(open(&mut s_pull, &seal(&mut c_push, &msg)).unwrap(), msg);
            assert_eq!(open(&mut c_pull, &seal(&mut s_push, &msg)).unwrap(), msg);
        }
    }

    #[test]
    fn in_place_matches_libsodium_out_of_place() {
        let keys = kx_client(&KeyPair::generate(), &KeyPair::generate().public()).unwrap();
        let (mut a, _) = PushStream::new(&keys);
        let mut b = PushStream::import_state(&a.export_state());
        let msg = b"the same message, encrypted twice";
        let in_place = seal(&mut a, msg);
        let mut out = vec![0u8; msg.len() + ABYTES];
        // SAFETY: test only: out has room for mlen + ABYTES, msg is readable,
        // the buffers do not overlap, and b's state is valid.
        let rc = unsafe {
            sodium::crypto_secretstream_xchacha20poly1305_push(
                &mut *b.state,
                out.as_mut_ptr(),
                std::ptr::null_mut(),
                msg.as_ptr(),
                msg.len() as u64,
                std::ptr::null(),
                0,
                0,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(in_place, out);
    }

    #[test]
    fn tampered_truncated_reordered_replayed_and_wrong_key_are_rejected() {
        let ((mut push, mut pull), _) = channel_pair();
        let first = seal(&mut push, b"first");
        let second = seal(&mut push, b"second");
        // Tampered: every single-bit flip is caught, and leaves the stream usable.
        for i in 0..first.len() {
            let mut bad = first.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open(&mut pull, &bad),
                Err(CryptError::Decrypt),
                "flip at byte {i}"
            );
        }
        // Truncated.
        assert_eq!(
            open(&mut pull, &first[..first.len() - 1]),
            Err(CryptError::Decrypt)
        );
        assert_eq!(open(&mut pull, &first[..5]), Err(CryptError::Length));
        // Reordered: the second message cannot come first.
        assert_eq!(open(&mut pull, &second), Err(CryptError::Decrypt));
        // In order, both open.
        assert_eq!(open(&mut pull, &first).unwrap(), b"first");
        // Replayed.
        assert_eq!(open(&mut pull, &first), Err(CryptError::Decrypt));
        assert_eq!(open(&mut pull, &second).unwrap(), b"second");

        // A stream from another key exchange.
        let ((mut other_push, _), _) = channel_pair();
        assert_eq!(
            open(&mut pull, &seal(&mut other_push, b"x")),
            Err(CryptError::Decrypt)
        );
    }

    #[test]
    fn a_wrong_server_key_gives_keys_that_do_not_match() {
        let client = KeyPair::generate();
        let server = KeyPair::generate();
        let impostor = KeyPair::generate();
        // The client believes it talks to `server`, but `impostor` answers.
        let ck = kx_client(&client, &server.public()).unwrap();
        let ik = kx_server(&impostor, &client.public()).unwrap();
        let (mut push, header) = PushStream::new(&ck);
        let mut pull = PullStream::new(&ik, &header).unwrap();
        assert_eq!(
            open(&mut pull, &seal(&mut push, b"secret")),
            Err(CryptError::Decrypt)
        );
        // A low-order point is refused outright.
        assert_eq!(
            kx_client(&client, &PublicKey([0; 32])).unwrap_err(),
            CryptError::BadPublicKey
        );
    }

    #[test]
    fn an_exported_push_state_continues_the_stream() {
        let ((mut push, mut pull), _) = channel_pair();
        assert_eq!(
            open(&mut pull, &seal(&mut push, b"from the proxy")).unwrap(),
            b"from the proxy"
        );
        let mut moved = PushStream::import_state(&push.export_state());
        drop(push);
        assert_eq!(
            open(&mut pull, &seal(&mut moved, b"from the shard")).unwrap(),
            b"from the shard"
        );
    }

    #[test]
    fn helpers() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        random_bytes(&mut a);
        random_bytes(&mut b);
        assert_ne!(a, b);
        assert!(memcmp_ct(&a, &a.clone()));
        assert!(!memcmp_ct(&a, &b));
        assert!(!memcmp_ct(&a, &a[..63]));
        let key = KeyPair::from_seed(&[7; 32]).public();
        assert_eq!(key, KeyPair::from_seed(&[7; 32]).public());
        assert_eq!(PublicKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(PublicKey::from_hex("zz"), None);
        let hash = pwhash_str("hunter2", PwhashCost::Min).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(pwhash_str_verify(&hash, "hunter2"));
        assert!(!pwhash_str_verify(&hash, "hunter3"));
        assert!(!pwhash_str_verify("garbage", "hunter2"));
    }
}
