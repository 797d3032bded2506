//! The reference game of `muta-shard` (port decision: MUTA's game logic is not
//! public). Small on purpose, but with an MMO's traffic shape: a player's
//! echo comes back to them alone (the latency probe), while chat, movement and
//! emotes are broadcast to every player of the sender's area, so one client
//! message becomes many server messages. Areas hold `area_players` players
//! each (a newcomer joins the first area with room), as an MMO sends a
//! player what happens within its view; with 0 the whole world is one area.
//!
//! The game sees players only through proxy-socket handles and writes to them
//! with `proxy_forward_msg` (here [`ProxyModule::proxy_send`]); it never
//! touches a socket, as the thesis's converted shard (§3.6).

use std::collections::HashMap;
use std::net::SocketAddr;

use log::debug;

use crate::proto::client::{ClientMsg, ServerMsg};
use crate::proto::messages;
use crate::shard_server::proxy::ProxyModule;

/// One player in the world.
#[derive(Debug)]
struct Player {
    id: u32,
    name: String,
    area: usize,
    x: i32,
    y: i32,
    z: u8,
}

/// Counters, read once a second for the stats line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GameStats {
    /// Game messages handled.
    pub msgs_in: u64,
    /// Game messages queued to players.
    pub msgs_out: u64,
}

/// The world: the players, by proxy socket.
#[derive(Debug, Default)]
pub struct Game {
    players: HashMap<u32, Player>,
    /// The sockets of each area's players.
    areas: Vec<Vec<u32>>,
    /// Players per area (0: unbounded, one area).
    area_players: usize,
    next_player_id: u32,
    /// Reused to encode a message once before it is copied to each player.
    scratch: Vec<u8>,
    stats: GameStats,
}

impl Game {
    /// An empty world with areas of `area_players` players (0: one area).
    pub fn new(area_players: usize) -> Game {
        Game {
            area_players,
            ..Game::default()
        }
    }

    /// Players in the world.
    pub fn n_players(&self) -> usize {
        self.players.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> GameStats {
        self.stats
    }

    /// A player authenticated at a proxy (or directly) from `addr`: welcome
    /// them, telling them the address the shard saw.
    pub fn player_connected(
        &mut self,
        module: &mut ProxyModule,
        socket: u32,
        name: &str,
        addr: SocketAddr,
    ) {
        self.next_player_id += 1;
        let id = self.next_player_id;
        let cap = if self.area_players == 0 {
            usize::MAX
        } else {
            self.area_players
        };
        let area = match self.areas.iter().position(|a| a.len() < cap) {
            Some(area) => area,
            None => {
                self.areas.push(Vec::new());
                self.areas.len() - 1
            }
        };
        self.areas[area].push(socket);
        self.players.insert(
            socket,
            Player {
                id,
                name: name.to_string(),
                area,
                x: 0,
                y: 0,
                z: 0,
            },
        );
        self.scratch.clear();
        ServerMsg::Welcome {
            player_id: id,
            name,
            addr,
        }
        .encode(&mut self.scratch);
        if module.proxy_send(socket, &self.scratch) {
            self.stats.msgs_out += 1;
        }
        debug!("player {id} ({name}) joined from {addr} on socket {socket:#x}");
    }

    /// A player left.
    pub fn player_disconnected(&mut self, socket: u32) {
        if let Some(p) = self.players.remove(&socket) {
            let members = &mut self.areas[p.area];
            if let Some(i) = members.iter().position(|&s| s == socket) {
                members.swap_remove(i);
            }
            debug!("player {} ({}) left", p.id, p.name);
        }
    }

    /// Messages from a player, already checked against the message table.
    /// Returns false if they could not be decoded (the caller drops the player).
    pub fn player_packet(&mut self, module: &mut ProxyModule, socket: u32, bytes: &[u8]) -> bool {
        if !self.players.contains_key(&socket) {
            return true; // left in the meantime
        }
        for msg in messages::<ClientMsg<'_>>(bytes) {
            let Ok(msg) = msg else {
                return false;
            };
            self.stats.msgs_in += 1;
            self.player_msg(module, socket, msg);
        }
        true
    }

    /// One message of a player: its echo and pong go back to it alone; chat,
    /// moves and emotes to its area.
    fn player_msg(&mut self, module: &mut ProxyModule, socket: u32, msg: ClientMsg<'_>) {
        let Some(player) = self.players.get_mut(&socket) else {
            return;
        };
        let (from, area) = (player.id, player.area);
        self.scratch.clear();
        match msg {
            ClientMsg::Ping { time } => {
                ServerMsg::Pong { time }.encode(&mut self.scratch);
                self.send_to(module, socket);
            }
            ClientMsg::Echo { seq, time_us, data } => {
                ServerMsg::Echo { seq, time_us, data }.encode(&mut self.scratch);
                self.send_to(module, socket);
            }
            ClientMsg::Chat { text } => {
                ServerMsg::Chat { from, text }.encode(&mut self.scratch);
                self.broadcast(module, area);
            }
            ClientMsg::Move { x, y, z } => {
                (player.x, player.y, player.z) = (x, y, z);
                ServerMsg::Moved {
                    player_id: from,
                    x,
                    y,
                    z,
                }
                .encode(&mut self.scratch);
                self.broadcast(module, area);
            }
            ClientMsg::Emote { target, text } => {
                ServerMsg::Emote { from, target, text }.encode(&mut self.scratch);
                self.broadcast(module, area);
            }
        }
    }

    fn send_to(&mut self, module: &mut ProxyModule, socket: u32) {
        if module.proxy_send(socket, &self.scratch) {
            self.stats.msgs_out += 1;
        }
    }

    fn broadcast(&mut self, module: &mut ProxyModule, area: usize) {
        for &socket in &self.areas[area] {
            if module.proxy_send(socket, &self.scratch) {
                self.stats.msgs_out += 1;
            }
        }
    }
}
