//! Reading a proxy link (thesis §3.6: "reading client messages moved to the
//! proxy module"; the messages are the thesis's proxy–shard protocol,
//! §3.8.2): the shard is the acceptor of the cryptchan handshake, then
//! expects `FPROXY_MSG_LOGIN` with its password (`on_proxy_login`), then the
//! proxy's messages about its players, one function each:
//!
//! - `FPROXY_MSG_OPENED_SOCKET_RESULT` (`on_opened_socket_result`): the proxy
//!   reserved a slot (the socket's `SocketOpened`, with the proxy's address
//!   and key) or refused;
//! - `FPROXY_MSG_PLAYER_CRYPTCHAN` (`on_player_cryptchan`): the player
//!   authenticated; the shard takes over its push stream;
//! - `FPROXY_MSG_PLAYER_PACKET` (`on_player_packet`): the player's messages,
//!   checked again by size ("just in case");
//! - `FPROXY_MSG_CLOSE_SOCKET` (`on_close_socket`): the player or its
//!   reservation is gone.
//!
//! Each message is applied as soon as it is decoded, so its effects (and the
//! [`ProxyEvent`]s) keep the order of the wire: the read's input buffer is
//! out of the slot meanwhile, so nothing has to wait for the read to end. If
//! a later message of the same read breaks the protocol, the link is dropped;
//! what came before it stays applied, and the drop ends every socket of the
//! link (`proxy_gone`). A message about a socket that is not the link's own,
//! or that comes out of order, is dropped and counted (`stats.foreign`): a
//! proxy may speak only for its own players.

use std::net::SocketAddr;
use std::time::Instant;

use log::{debug, info, warn};

use crate::com::ConnRef;
use crate::conn::{DisconnectReason, Pool};
use crate::cryptchan::{PushStream, STATE_BYTES, memcmp_ct};
use crate::proto::client::filter_client_frame;
use crate::proto::frame::{Frames, PeerError, Unit};
use crate::proto::messages;
use crate::proto::proxy_shard::{
    FProxyMsg, LOGIN_RESULT_BAD_PASSWORD, LOGIN_RESULT_OK, OPENED_SOCKET_OK, TProxyMsg,
};

use super::{
    Carrier, ProxyEvent, ProxyLinkState, ProxyModule, ProxySessions, SocketOpened, SocketState,
    find_slot,
};

impl ProxyModule {
    /// Handles `EVENT_READ_CLIENT` for a connection on the proxy listener: the
    /// handshake, `FPROXY_MSG_LOGIN`, and the proxy's messages, applied in the
    /// order they arrived. Whole frames are decrypted in place in `data`; a
    /// link that breaks the protocol is disconnected.
    pub fn proxy_read<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        proxy: ConnRef,
        data: &mut [u8],
        now: Instant,
    ) {
        let Some(mut in_buf) = pool.begin_read(proxy, data.len(), now) else {
            return;
        };
        // The input buffer leaves the slot while its frames are handled, so
        // the handlers can reach the whole pool (a direct player's
        // connection, another proxy's link) and the module.
        let mut frames = Frames::new(&mut in_buf, data, self.cfg.in_buf_size);
        let result = self.link_units(pool, proxy, &mut frames);
        drop(frames);
        pool.end_read(proxy, in_buf);
        if let Err(err) = result {
            let why = match err {
                PeerError::TooLarge => "frame larger than the pool's in_buf_size".to_string(),
                e => e.to_string(),
            };
            warn!("proxy link {proxy}: {why}");
            pool.disconnect(proxy, DisconnectReason::Protocol(why));
        }
    }

    /// The units of one read: the handshake's end, then frames, each message
    /// to [`ProxyModule::link_msg`].
    fn link_units<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        proxy: ConnRef,
        frames: &mut Frames<'_>,
    ) -> Result<(), PeerError> {
        loop {
            let Some(slot) = pool.get_mut(proxy) else {
                return Ok(()); // dropped meanwhile (its output full)
            };
            let (session, out) = slot.session_and_out();
            let Some(link) = session.proxy_link() else {
                return Ok(());
            };
            match frames.next(&mut link.chan, out)? {
                None => return Ok(()),
                Some(Unit::Opened) => link.state = ProxyLinkState::AwaitLogin,
                Some(Unit::Frame(frame)) => {
                    for msg in messages::<FProxyMsg<'_>>(frame) {
                        self.link_msg(pool, proxy, msg?)?;
                    }
                }
            }
        }
    }

    /// One message of a proxy, in the order the link allows:
    /// `FPROXY_MSG_LOGIN` first and once, then the rest.
    fn link_msg<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        proxy: ConnRef,
        msg: FProxyMsg<'_>,
    ) -> Result<(), PeerError> {
        let state = pool
            .get_mut(proxy)
            .and_then(|s| s.session.proxy_link())
            .map(|link| link.state);
        match (msg, state) {
            (_, None) => Ok(()), // dropped meanwhile
            (
                FProxyMsg::Login {
                    password,
                    public_address,
                    capacity,
                },
                Some(ProxyLinkState::AwaitLogin),
            ) => self.on_proxy_login(pool, proxy, password, public_address, capacity),
            (_, Some(ProxyLinkState::Handshake | ProxyLinkState::AwaitLogin)) => {
                Err(PeerError::Refused("message before FPROXY_MSG_LOGIN"))
            }
            (FProxyMsg::Login { .. }, Some(ProxyLinkState::Ready)) => {
                Err(PeerError::Refused("a second FPROXY_MSG_LOGIN"))
            }
            (FProxyMsg::OpenedSocketResult { socket_id, result }, _) => {
                self.on_opened_socket_result(pool, proxy, socket_id, result);
                Ok(())
            }
            (
                FProxyMsg::PlayerCryptchan {
                    socket_id,
                    addr,
                    state,
                },
                _,
            ) => {
                self.on_player_cryptchan(proxy, socket_id, addr, state);
                Ok(())
            }
            (FProxyMsg::PlayerPacket { socket_id, data }, _) => {
                self.on_player_packet(pool, proxy, socket_id, data);
                Ok(())
            }
            (FProxyMsg::CloseSocket { socket_id, .. }, _) => {
                self.on_close_socket(pool, proxy, socket_id);
                Ok(())
            }
            (FProxyMsg::Ping { seq }, _) => on_ping(pool, proxy, seq),
        }
    }

    /// `FPROXY_MSG_LOGIN`: the password (in constant time), answered with
    /// `TPROXY_MSG_LOGIN_RESULT` either way; a proxy that knows it tells its
    /// public address and capacity and may be given players.
    fn on_proxy_login<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        proxy: ConnRef,
        password: &[u8],
        public_address: &str,
        capacity: u32,
    ) -> Result<(), PeerError> {
        let ok = memcmp_ct(password, self.cfg.password.expose().as_bytes());
        let Some(slot) = pool.get_mut(proxy) else {
            return Ok(());
        };
        let addr = slot.addr();
        let (session, out) = slot.session_and_out();
        let Some(link) = session.proxy_link() else {
            return Ok(());
        };
        let result = if ok {
            LOGIN_RESULT_OK
        } else {
            LOGIN_RESULT_BAD_PASSWORD
        };
        let shard_name = &self.cfg.shard_name;
        link.send(out, &TProxyMsg::LoginResult { result, shard_name })?;
        if !ok {
            // The answer still goes out: the disconnect writes it last.
            return Err(PeerError::Refused("wrong password"));
        }
        link.public_address = public_address.to_string();
        link.capacity = capacity;
        link.state = ProxyLinkState::Ready;
        info!("proxy {addr} logged in: players will connect to {public_address}");
        self.proxies.push(proxy);
        Ok(())
    }

    /// The index of `socket` if it is one of `proxy`'s; anything else is
    /// dropped and counted.
    fn own_socket(&mut self, proxy: ConnRef, socket: u32) -> Option<u32> {
        let own = find_slot(&mut self.sockets, socket)
            .filter(|(_, s)| s.carrier == Carrier::Proxy(proxy))
            .map(|(index, _)| index);
        if own.is_none() {
            self.stats.foreign += 1;
            debug!(
                "proxy link {}: message about socket {socket:#x}, not one of its own",
                proxy.index
            );
        }
        own
    }

    /// A message about one of the link's sockets in a state it does not fit
    /// (a second hand-over, a packet before it): dropped and counted.
    fn out_of_order(&mut self, proxy: ConnRef, socket: u32) {
        self.stats.foreign += 1;
        debug!(
            "proxy link {}: message out of order for socket {socket:#x}",
            proxy.index
        );
    }

    /// `FPROXY_MSG_OPENED_SOCKET_RESULT`: the proxy's answer to
    /// `TPROXY_MSG_OPENED_SOCKET`. Reserved, the socket waits for its player
    /// and the host learns where to send them; refused, it ends.
    fn on_opened_socket_result<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        proxy: ConnRef,
        socket: u32,
        result: u8,
    ) {
        let Some(index) = self.own_socket(proxy, socket) else {
            return;
        };
        if !matches!(self.sockets[index as usize].state, SocketState::Opening) {
            return self.out_of_order(proxy, socket);
        }
        if result != OPENED_SOCKET_OK {
            return self.close(pool, index, false, "refused by the proxy");
        }
        self.sockets[index as usize].state = SocketState::Reserved(None);
        let link = pool.get_mut(proxy).and_then(|c| c.session.proxy_link());
        let opened = SocketOpened {
            socket,
            proxy_address: link.as_ref().map(|l| l.public_address.clone()),
            proxy_key: link.and_then(|l| l.public_key()),
        };
        self.events.list.push(ProxyEvent::SocketOpened(opened));
    }

    /// `FPROXY_MSG_PLAYER_CRYPTCHAN`: the player passed the proxy's auth
    /// proof; the proxy hands over the push half of the player's stream, with
    /// which the shard encrypts everything it sends the player from now on.
    fn on_player_cryptchan(
        &mut self,
        proxy: ConnRef,
        socket: u32,
        addr: SocketAddr,
        state: &[u8; STATE_BYTES],
    ) {
        let Some(index) = self.own_socket(proxy, socket) else {
            return;
        };
        let slot = &mut self.sockets[index as usize];
        if !matches!(slot.state, SocketState::Reserved(None)) {
            return self.out_of_order(proxy, socket);
        }
        slot.state = SocketState::Connected {
            push: PushStream::import_state(state),
        };
        self.events
            .list
            .push(ProxyEvent::PlayerConnected { socket, addr });
    }

    /// `FPROXY_MSG_PLAYER_PACKET`: a player's messages, through the same size
    /// checks as at the proxy (thesis: "just in case"); they fail, and the
    /// player is dropped and the proxy told. The bytes are copied into the
    /// events' buffer, which keeps its capacity between reads.
    fn on_player_packet<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        proxy: ConnRef,
        socket: u32,
        data: &[u8],
    ) {
        // Checked before the socket, as the counters have always been kept:
        // `msgs_in` and `filtered` count what proxies sent.
        let checked = filter_client_frame(data);
        match checked {
            Ok(n) => self.stats.msgs_in += n as u64,
            Err(e) => {
                warn!("proxy socket {socket:#x}: packet refused by the size checks: {e}");
                self.stats.filtered += 1;
            }
        }
        let Some(index) = self.own_socket(proxy, socket) else {
            return;
        };
        if checked.is_err() {
            return self.close(pool, index, true, "its messages failed the size checks");
        }
        if !matches!(
            self.sockets[index as usize].state,
            SocketState::Connected { .. }
        ) {
            return self.out_of_order(proxy, socket);
        }
        let bytes = &mut self.events.bytes;
        let start = bytes.len();
        bytes.extend_from_slice(data);
        let end = bytes.len();
        self.events
            .list
            .push(ProxyEvent::PlayerPacket { socket, start, end });
    }

    /// `FPROXY_MSG_CLOSE_SOCKET`: the player left the proxy, or its
    /// reservation expired there. The proxy knows; it is not told back.
    fn on_close_socket<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        proxy: ConnRef,
        socket: u32,
    ) {
        if let Some(index) = self.own_socket(proxy, socket) {
            self.close(pool, index, false, "closed by the proxy");
        }
    }
}

/// `FPROXY_MSG_PING`: answered at once with `TPROXY_MSG_PONG`, the same
/// number (the proxy measures the link's round trip from it).
fn on_ping<S: ProxySessions>(
    pool: &mut Pool<S>,
    proxy: ConnRef,
    seq: u32,
) -> Result<(), PeerError> {
    let Some(slot) = pool.get_mut(proxy) else {
        return Ok(());
    };
    let (session, out) = slot.session_and_out();
    let Some(link) = session.proxy_link() else {
        return Ok(());
    };
    link.send(out, &TProxyMsg::Pong { seq })?;
    Ok(())
}
