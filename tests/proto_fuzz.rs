//! Seeded random inputs for every decoder (the stable stand-in for the
//! cargo-fuzz targets in `fuzz/`): hundreds of thousands of byte strings —
//! random, and valid messages with bits flipped, bytes cut, inserted or
//! length fields rewritten — must never panic a decoder. Whatever a decoder
//! accepts must re-encode to exactly the bytes it consumed, and "need more
//! bytes" must only be said of a proper prefix of something valid. Random valid
//! messages of every type round-trip. The seed is printed on failure; set
//! `PROTO_FUZZ_SEED` to replay one, `PROTO_FUZZ_ROUNDS` for a longer run.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use muta_proxy::config::{Config, parse_shards_cfg};
use muta_proxy::cryptchan::{KeyPair, PublicKey};
use muta_proxy::proto::client::{
    AuthProof, ClientMsg, ServerMsg, check_client_msg, filter_client_frame,
};
use muta_proxy::proto::frame::{Channel, Frames, Step, Unit};
use muta_proxy::proto::login::{FromLogin, FromShard, ProxyTicket, ToLogin, ToShard};
use muta_proxy::proto::otc::OtcFrame;
use muta_proxy::proto::proxy_protocol::{self, ProxyHeader, encode_v2};
use muta_proxy::proto::proxy_shard::{FProxyMsg, TProxyMsg};

/// xorshift64*: small, seeded, good enough to explore byte strings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    fn text(&mut self, max: usize) -> String {
        let n = 1 + self.below(max);
        (0..n)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.iter_mut().for_each(|b| *b = self.byte());
        a
    }
    fn ip(&mut self) -> IpAddr {
        if self.below(2) == 0 {
            IpAddr::from(self.array::<4>())
        } else {
            IpAddr::from(self.array::<16>())
        }
    }
}

fn seed() -> u64 {
    std::env::var("PROTO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_1234_ABCD_0001)
}

fn rounds() -> usize {
    std::env::var("PROTO_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25_000)
}

/// Random valid messages of every type, encoded.
fn valid_messages(rng: &mut Rng) -> Vec<Vec<u8>> {
    let token: [u8; 64] = rng.array();
    let state: [u8; 52] = rng.array();
    let name = rng.text(32);
    let shard = rng.text(32);
    let addr = rng.text(60);
    let data_len = rng.below(300);
    let data = rng.bytes(data_len);
    let key = PublicKey(rng.array());
    let mut out = Vec::new();
    let mut push = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = Vec::new();
        f(&mut b);
        out.push(b);
    };
    let (ip, n32, n64) = (rng.ip(), rng.next() as u32, rng.next());
    let sockaddr = std::net::SocketAddr::new(ip, n32 as u16);
    push(&|b| {
        TProxyMsg::LoginResult {
            result: n32 as u8,
            shard_name: &shard,
        }
        .encode(b)
    });
    push(&|b| {
        TProxyMsg::OpenedSocket {
            socket_id: n32,
            account_id: n64,
            login_session_id: n32,
            ip,
            account_name: &name,
            token: &token,
        }
        .encode(b)
    });
    push(&|b| TProxyMsg::ClosedSocket { socket_id: n32 }.encode(b));
    push(&|b| TProxyMsg::Pong { seq: n32 }.encode(b));
    push(&|b| FProxyMsg::Ping { seq: n32 }.encode(b));
    push(&|b| {
        TProxyMsg::PlayerPacket {
            socket_id: n32,
            data: &data,
        }
        .encode(b)
    });
    push(&|b| {
        FProxyMsg::Login {
            password: name.as_bytes(),
            public_address: &addr,
            capacity: n32,
        }
        .encode(b)
    });
    push(&|b| {
        FProxyMsg::OpenedSocketResult {
            socket_id: n32,
            result: n32 as u8,
        }
        .encode(b)
    });
    push(&|b| {
        FProxyMsg::PlayerCryptchan {
            socket_id: n32,
            addr: sockaddr,
            state: &state,
        }
        .encode(b)
    });
    push(&|b| {
        FProxyMsg::PlayerPacket {
            socket_id: n32,
            data: &data,
        }
        .encode(b)
    });
    push(&|b| {
        FProxyMsg::CloseSocket {
            socket_id: n32,
            reason: n32 as u8,
        }
        .encode(b)
    });
    push(&|b| {
        ToLogin::Login {
            account_name: &name,
            password: shard.as_bytes(),
        }
        .encode(b)
    });
    push(&|b| ToLogin::SelectShard { shard_name: &shard }.encode(b));
    push(&|b| {
        FromLogin::LoginResult {
            result: n32 as u8,
            account_id: n64,
        }
        .encode(b)
    });
    push(&|b| {
        FromLogin::ShardResult {
            result: 0,
            ticket: Some((
                ProxyTicket {
                    address: &addr,
                    key,
                },
                &token,
            )),
        }
        .encode(b)
    });
    push(&|b| {
        ToShard::Login {
            password: name.as_bytes(),
        }
        .encode(b)
    });
    push(&|b| {
        ToShard::Player {
            request_id: n32,
            account_id: n64,
            login_session_id: n32,
            ip,
            account_name: &name,
            token: &token,
        }
        .encode(b)
    });
    push(&|b| {
        ToShard::Cancel {
            account_id: n64,
            login_session_id: n32,
        }
        .encode(b)
    });
    push(&|b| {
        FromShard::LoginResult {
            result: 0,
            shard_name: &shard,
        }
        .encode(b)
    });
    push(&|b| {
        FromShard::PlayerResult {
            request_id: n32,
            result: 0,
            ticket: Some(ProxyTicket {
                address: &addr,
                key,
            }),
        }
        .encode(b)
    });
    let small = &data[..data.len().min(200)];
    push(&|b| ClientMsg::Ping { time: n64 }.encode(b));
    push(&|b| {
        ClientMsg::Echo {
            seq: n32,
            time_us: n64,
            data: small,
        }
        .encode(b)
    });
    push(&|b| ClientMsg::Chat { text: small }.encode(b));
    push(&|b| {
        ClientMsg::Move {
            x: n32 as i32,
            y: -(n32 as i32),
            z: n32 as u8,
        }
        .encode(b)
    });
    push(&|b| {
        ClientMsg::Emote {
            target: &small[..small.len().min(32)],
            text: small,
        }
        .encode(b)
    });
    push(&|b| {
        ServerMsg::Welcome {
            player_id: n32,
            name: &name,
            addr: sockaddr,
        }
        .encode(b)
    });
    push(&|b| {
        ServerMsg::Chat {
            from: n32,
            text: small,
        }
        .encode(b)
    });
    push(&|b| {
        AuthProof {
            account_name: &name,
            shard_name: &shard,
            token: &token,
        }
        .encode(b)
    });
    // PROXY protocol headers, v2 (with TLVs) and v1.
    let (v4a, v4b) = (
        SocketAddr::from((rng.array::<4>(), n32 as u16)),
        SocketAddr::from((rng.array::<4>(), n64 as u16)),
    );
    let (v6a, v6b) = (
        SocketAddr::from((rng.array::<16>(), n32 as u16)),
        SocketAddr::from((rng.array::<16>(), n64 as u16)),
    );
    let tlv_len = rng.below(40);
    let tlv_value = rng.bytes(tlv_len);
    let mut tlvs = vec![0x05, 0, tlv_len as u8];
    tlvs.extend_from_slice(&tlv_value);
    for (src, dst) in [(v4a, v4b), (v6a, v6b)] {
        let header = ProxyHeader::Proxy { src, dst };
        push(&|b| encode_v2(&header, &tlvs, b));
        let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        push(&|b| {
            let line = format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            );
            b.extend_from_slice(line.as_bytes())
        });
    }
    push(&|b| encode_v2(&ProxyHeader::Local, &tlvs, b));
    // OTC frames (seed 002's client): a ping, a pong, an open, an end, and
    // a data frame with a whole Tibia packet.
    let mut packet = (data.len() as u16).max(1).to_le_bytes().to_vec();
    packet.extend_from_slice(&data);
    packet.resize(
        2 + usize::from(u16::from_le_bytes([packet[0], packet[1]])),
        0,
    );
    let session = n32.max(1);
    let frames = [
        OtcFrame::Ping {
            uid: n32,
            last_ping_ms: Some(n32 >> 3),
        },
        OtcFrame::Ping {
            uid: 0,
            last_ping_ms: None,
        },
        OtcFrame::Open {
            session,
            port: n32 as u16,
        },
        OtcFrame::End { session },
        OtcFrame::Data {
            session,
            packet_id: (n32 >> 1).clamp(1, u32::MAX - 1),
            ack: n32,
            packet: &packet,
        },
    ];
    for frame in frames {
        push(&|b| frame.encode(b));
    }
    out
}

/// A byte string to throw at the decoders.
fn hostile(rng: &mut Rng, valid: &[Vec<u8>]) -> Vec<u8> {
    let base = &valid[rng.below(valid.len())];
    match rng.below(6) {
        0 => {
            let n = rng.below(200);
            rng.bytes(n)
        }
        1 => {
            let mut b = base.clone();
            for _ in 0..1 + rng.below(3) {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
            }
            b
        }
        2 => base[..rng.below(base.len() + 1)].to_vec(),
        3 => {
            let mut b = base.clone();
            let i = rng.below(b.len() + 1);
            b.insert(i, rng.byte());
            b
        }
        4 => {
            // Rewrite a byte that may be a length field to an extreme value.
            let mut b = base.clone();
            if b.len() > 1 {
                let i = 1 + rng.below(b.len() - 1);
                b[i] = [0, 1, 0x7F, 0x80, 0xFF][rng.below(5)];
            }
            b
        }
        _ => {
            let mut b = base.clone();
            b[0] = rng.byte();
            b
        }
    }
}

/// Runs one decoder over an input, checks what it says, and counts the
/// verdict in `$seen` (accepted, need more, malformed).
macro_rules! check {
    ($seen:expr, $input:expr, $decode:expr, $encode:expr) => {{
        let input: &[u8] = $input;
        match $decode(input) {
            Ok(Some((msg, used))) => {
                assert!(used <= input.len());
                let mut again = Vec::new();
                $encode(&msg, &mut again);
                assert_eq!(
                    &again[..],
                    &input[..used],
                    "decode then encode is not the identity"
                );
                $seen[0] += 1;
            }
            Ok(None) => $seen[1] += 1,
            Err(_) => $seen[2] += 1,
        }
    }};
}

#[test]
fn every_decoder_survives_hostile_bytes_and_accepts_only_what_it_can_re_encode() {
    let seed = seed();
    let mut rng = Rng(seed);
    eprintln!("PROTO_FUZZ_SEED={seed}");
    // Per decoder: how often it accepted, wanted more, refused.
    let names = [
        "TProxyMsg",
        "FProxyMsg",
        "ToLogin",
        "FromLogin",
        "ToShard",
        "FromShard",
        "ClientMsg",
        "ServerMsg",
        "check_client_msg",
        "filter_client_frame",
        "AuthProof",
        "proxy_protocol",
        "OtcFrame",
    ];
    let mut seen = [[0u64; 3]; 13];
    for _ in 0..rounds() {
        let valid = valid_messages(&mut rng);
        let input = hostile(&mut rng, &valid);
        check!(seen[0], &input, TProxyMsg::decode, TProxyMsg::encode);
        check!(seen[1], &input, FProxyMsg::decode, FProxyMsg::encode);
        check!(seen[2], &input, ToLogin::decode, ToLogin::encode);
        check!(seen[3], &input, FromLogin::decode, FromLogin::encode);
        check!(seen[4], &input, ToShard::decode, ToShard::encode);
        check!(seen[5], &input, FromShard::decode, FromShard::encode);
        check!(seen[6], &input, ClientMsg::decode, ClientMsg::encode);
        check!(seen[7], &input, ServerMsg::decode, ServerMsg::encode);
        // The filter and the typed decoder must agree on what is a message.
        match (check_client_msg(&input), ClientMsg::decode(&input)) {
            (Ok(Some((_, a))), Ok(Some((_, b)))) => {
                assert_eq!(a, b);
                seen[8][0] += 1;
            }
            (Ok(None), Ok(None)) => seen[8][1] += 1,
            (Err(_), Err(_)) => seen[8][2] += 1,
            (x, y) => panic!("filter {x:?} and decoder {y:?} disagree on {input:?}"),
        }
        match filter_client_frame(&input) {
            Ok(n) => {
                assert!(n >= 1);
                seen[9][0] += 1;
            }
            Err(_) => seen[9][2] += 1,
        }
        match AuthProof::decode_frame(&input) {
            Ok(proof) => {
                let mut again = Vec::new();
                proof.encode(&mut again);
                assert_eq!(again, input);
                seen[10][0] += 1;
            }
            Err(_) => seen[10][2] += 1,
        }
        // A PROXY header loses its TLVs when decoded, so instead of a
        // re-encoding: the header alone decodes the same, within the bound,
        // and each of its proper prefixes asks for more.
        match proxy_protocol::decode(&input) {
            Ok(Some((header, used))) => {
                assert!(used <= input.len() && used <= proxy_protocol::HEADER_MAX);
                assert_eq!(
                    proxy_protocol::decode(&input[..used]),
                    Ok(Some((header, used)))
                );
                for cut in [0, used / 2, used - 1] {
                    assert_eq!(proxy_protocol::decode(&input[..cut]), Ok(None));
                }
                seen[11][0] += 1;
            }
            Ok(None) => seen[11][1] += 1,
            Err(_) => seen[11][2] += 1,
        }
        check!(seen[12], &input, OtcFrame::decode, OtcFrame::encode);
    }
    let total: u64 = seen.iter().flatten().sum();
    eprintln!("{total} decoder inputs");
    for (name, [accepted, more, refused]) in names.iter().zip(seen) {
        eprintln!("{name:>20}: {accepted} accepted, {more} need more, {refused} refused");
        // Inputs that never reach a decoder's accepting or refusing paths
        // would make this test pass without testing anything.
        assert!(accepted > 0, "{name} accepted nothing: the inputs miss it");
        assert!(refused > 0, "{name} refused nothing");
    }
    // Every streaming decoder (all but the whole-frame checks) must also have
    // been handed proper prefixes.
    for (name, s) in names
        .iter()
        .zip(seen)
        .take(9)
        .chain(names.iter().zip(seen).skip(11))
    {
        assert!(s[1] > 0, "{name} never asked for more bytes");
    }
}

#[test]
fn random_valid_messages_round_trip() {
    let mut rng = Rng(seed() ^ 0xFFFF);
    for _ in 0..2_000 {
        for msg in valid_messages(&mut rng) {
            let decoded = [
                TProxyMsg::decode(&msg).map(|o| o.map(|(_, n)| n)),
                FProxyMsg::decode(&msg).map(|o| o.map(|(_, n)| n)),
                ToLogin::decode(&msg).map(|o| o.map(|(_, n)| n)),
                FromLogin::decode(&msg).map(|o| o.map(|(_, n)| n)),
                ToShard::decode(&msg).map(|o| o.map(|(_, n)| n)),
                FromShard::decode(&msg).map(|o| o.map(|(_, n)| n)),
                ClientMsg::decode(&msg).map(|o| o.map(|(_, n)| n)),
                ServerMsg::decode(&msg).map(|o| o.map(|(_, n)| n)),
                proxy_protocol::decode(&msg).map(|o| o.map(|(_, n)| n)),
                OtcFrame::decode(&msg).map(|o| o.map(|(_, n)| n)),
            ];
            let whole =
                decoded.contains(&Ok(Some(msg.len()))) || AuthProof::decode_frame(&msg).is_ok();
            assert!(whole, "no decoder takes back {msg:?}");
        }
    }
}

#[test]
fn a_channel_survives_hostile_bytes_in_every_state() {
    let mut rng = Rng(seed() ^ 0xC4A7);
    for round in 0..3_000 {
        let mut out = Vec::new();
        let keys = Arc::new(KeyPair::generate());
        let mut chan = if round % 2 == 0 {
            Channel::acceptor(keys)
        } else {
            Channel::initiator(keys, None, &mut out)
        };
        chan.set_frame_max(1 + rng.below(70_000));
        // Sometimes a well-formed start (a key and a header), then noise.
        let mut input = Vec::new();
        if rng.below(2) == 0 {
            input.push(1);
            input.extend_from_slice(&KeyPair::generate().public().0);
            input.push(2);
            input.extend_from_slice(&rng.array::<24>());
        }
        let n = rng.below(300);
        input.extend(rng.bytes(n));
        let mut pos = 0;
        while pos < input.len() {
            match chan.next(&mut input[pos..], &mut out) {
                Ok(Step::NeedMore) | Err(_) => break,
                Ok(Step::Handshake { consumed })
                | Ok(Step::Opened { consumed })
                | Ok(Step::Frame { consumed, .. }) => {
                    assert!(consumed > 0);
                    pos += consumed;
                }
            }
        }
    }
}

/// Drives a channel over `bytes` until it needs more, as a reader does.
fn drain(chan: &mut Channel, bytes: &mut [u8], reply: &mut Vec<u8>) -> usize {
    let mut pos = 0;
    loop {
        match chan.next(&mut bytes[pos..], reply).unwrap() {
            Step::NeedMore => return pos,
            Step::Handshake { consumed } | Step::Opened { consumed } => pos += consumed,
            Step::Frame { .. } => panic!("a frame during the handshake"),
        }
    }
}

#[test]
fn valid_frames_cut_at_random_points_arrive_whole_and_in_order() {
    let mut rng = Rng(seed() ^ 0x5717);
    for _ in 0..200 {
        // Open a pair of channels.
        let mut to_acc = Vec::new();
        let mut to_ini = Vec::new();
        let mut ini = Channel::initiator(Arc::new(KeyPair::generate()), None, &mut to_acc);
        let mut acc = Channel::acceptor(Arc::new(KeyPair::generate()));
        let used = drain(&mut acc, &mut to_acc, &mut to_ini);
        to_acc.drain(..used);
        let used = drain(&mut ini, &mut to_ini, &mut to_acc);
        to_ini.drain(..used);
        assert!(ini.is_open());

        // The initiator's handshake tail, then frames of random batches.
        let mut sent: Vec<Vec<u8>> = Vec::new();
        for _ in 0..1 + rng.below(40) {
            let mut frame = Vec::new();
            for _ in 0..1 + rng.below(8) {
                let n = 1 + rng.below(400);
                let msg = rng.bytes(n);
                ini.send(&mut to_acc, &msg).unwrap();
                frame.extend_from_slice(&msg);
            }
            ini.seal(&mut to_acc).unwrap();
            sent.push(frame);
        }

        // Deliver it in reads cut at random points, through the frame driver.
        let in_buf_max = 4096;
        let mut in_buf = Vec::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut reply = Vec::new();
        let mut pos = 0;
        while pos < to_acc.len() {
            let n = (1 + rng.below(700)).min(to_acc.len() - pos);
            let mut read = to_acc[pos..pos + n].to_vec();
            pos += n;
            let mut frames = Frames::new(&mut in_buf, &mut read, in_buf_max);
            while let Some(unit) = frames.next(&mut acc, &mut reply).unwrap() {
                match unit {
                    Unit::Frame(plaintext) => got.push(plaintext.to_vec()),
                    Unit::Opened => {}
                }
            }
            drop(frames);
            assert!(in_buf.len() <= in_buf_max);
        }
        assert!(acc.is_open());
        assert!(in_buf.is_empty(), "bytes left over after the last frame");
        assert_eq!(got, sent, "frames lost, changed or reordered");
    }
}

#[test]
fn the_config_parsers_survive_hostile_text() {
    let mut rng = Rng(seed() ^ 0xCF6);
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.cfg")).unwrap();
    let pieces = [
        "shard = ",
        "127.0.0.1",
        ":",
        "[",
        "]",
        "::1",
        "key=",
        "#",
        "\n",
        " ",
        "=",
        "99999",
        "a.b",
        "-",
        "\"",
        "[client]",
        "max_clients",
        "{",
        "}",
        "0x",
        "1e3",
        "true",
        "'''",
    ];
    for round in 0..20_000 {
        let mut text = String::new();
        for _ in 0..rng.below(20) {
            text += pieces[rng.below(pieces.len())];
        }
        let _ = parse_shards_cfg(Path::new("fuzz"), &text);
        let _ = Config::parse(Path::new("fuzz"), &text);
        if round % 20 != 0 {
            continue;
        }
        // The shipped file with a line cut or duplicated.
        let mut lines: Vec<&str> = shipped.lines().collect();
        let i = rng.below(lines.len());
        if rng.below(2) == 0 {
            lines.remove(i);
        } else {
            lines.insert(i, lines[i]);
        }
        let _ = Config::parse(Path::new("fuzz"), &lines.join("\n"));
    }
}
