//! Players behind a real HAProxy forwarder (seed 002's deployment): the proxy
//! on `client.proxy_protocol = "required"` takes each player's address from
//! the PROXY protocol header, v2 (`send-proxy-v2`) and v1 (`send-proxy`), and
//! the shard sees each player's own address. Each player has its own
//! address in 127.0.0.0/8, for the login server and for HAProxy alike.

mod util;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use muta_proxy::bot::client::{self, Conn};
use muta_proxy::config::{Cidr, Networks, ProxyProtocol};
use muta_proxy::proto::client::ServerMsg;
use util::haproxy::Haproxy;
use util::loopback;
use util::play::echo;
use util::system::{login_until_from, start_login, start_proxy, start_shard};

const T: Duration = Duration::from_secs(10);
const PLAYERS_PER_MODE: u8 = 4;

/// Player `i`'s own address.
fn player_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 20 + i))
}

/// Enters from `ip` through `front` and returns the connection and the
/// address the shard's welcome says it saw.
fn play_from(ip: IpAddr, front: &str, ticket: &client::Ticket, account: &str) -> (Conn, String) {
    let mut conn = client::enter_from(Some(ip), front, ticket, account, "shard-1", T)
        .unwrap_or_else(|e| panic!("{account} from {ip}: {e}"));
    let frame = conn.recv_frame(T).unwrap();
    match ServerMsg::decode(&frame) {
        Ok(Some((ServerMsg::Welcome { name, addr, .. }, _))) => {
            assert_eq!(name, account);
            (conn, addr.to_string())
        }
        other => panic!("{account}: expected SVMSG_WELCOME, got {other:?}"),
    }
}

#[test]
fn players_behind_haproxy_v2_and_v1_are_seen_by_the_shard_from_their_own_addresses() {
    for (mode, send) in [(0u8, "send-proxy-v2"), (1, "send-proxy")] {
        let shard = start_shard("shard-1", loopback(0), loopback(0));
        let login = start_login(&[shard.login_addr]);
        // HAProxy's port is the proxy's public address, and the proxy's port
        // is on HAProxy's server line: HAProxy's is picked first.
        let front_port = util::free_port();
        let proxy = start_proxy(&[shard.proxy_addr], 0, |cfg| {
            cfg.proxy.public_address = loopback(front_port).to_string();
            cfg.client.proxy_protocol = ProxyProtocol::Required;
            cfg.client.trusted_forwarders = Networks(vec![Cidr::parse("127.0.0.1/32").unwrap()]);
        });
        let haproxy = Haproxy::start_at(loopback(front_port), proxy.addr, send);
        let front = haproxy.front.to_string();
        let mut players = Vec::new();
        for i in 0..PLAYERS_PER_MODE {
            let ip = player_ip(mode * PLAYERS_PER_MODE + i);
            let account = format!("fwd-{i}");
            let ticket = login_until_from(Some(ip), login.addr, &account, "shard-1", T)
                .unwrap_or_else(|e| panic!("login of {account}: {e}"));
            assert_eq!(ticket.proxy_address, front, "players are sent to HAProxy");
            let (mut conn, seen) = play_from(ip, &front, &ticket, &account);
            assert_eq!(seen, conn.local_addr().to_string(), "{send}: {account}");
            echo(&mut conn, 1);
            players.push(conn);
        }
        // Past the forwarder, straight to the proxy, from a player's own
        // address: refused before anything is read.
        let ip = player_ip(0);
        let ticket = login_until_from(Some(ip), login.addr, "direct", "shard-1", T).unwrap();
        let proxy_addr = proxy.addr.to_string();
        let closed =
            match client::enter_from(Some(ip), &proxy_addr, &ticket, "direct", "shard-1", T) {
                Err(_) => true,
                Ok(mut conn) => conn.closed_within(T),
            };
        assert!(
            closed,
            "{send}: a connection from outside trusted_forwarders was served"
        );
        // The players behind the forwarder played on.
        for conn in &mut players {
            echo(conn, 2);
        }
    }
}
