//! Operating the running proxy (no thesis section: the thesis's proxy reads
//! its files once and stops on a signal; port decisions, in
//! `docs/configuration.md` "Reloading" and ARCHITECTURE.md): the drain on
//! SIGTERM and the reload on SIGHUP, both on the main thread, which owns
//! every table they change.
//!
//! **Drain.** The runtime closes the listeners; here every player and every
//! OTC path is disconnected with a lingering close (the shard is told at
//! once with `FPROXY_MSG_CLOSE_SOCKET`, what is queued for the player is
//! still written), every OTC session is ended (its paths get the session
//! end) and new reservations are refused. The drain is over when no
//! lingering close is left and the shard links' output is written, or after
//! `proxy.drain_timeout_ms`.
//!
//! **Reload.** The files are read on a thread of their own (a [`Job`]); the
//! main thread gets the result as `EVENT_JOB_DONE`. A file with a problem
//! is refused whole, each problem logged as `FILE:LINE: ...`, and the running
//! configuration stays. Otherwise [`config::reload_plan`] decides key by key
//! (live keys change, restart-only keys stay and are named), the settings
//! every table reads are replaced, shards added to `shards.cfg` are
//! connected and shards removed are drained: their players are disconnected
//! with a lingering close, the shard told of each, and the link closed once
//! they are gone.

use std::any::Any;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::{Outbound, Proxy, ProxySettings, otc::OtcSettings};
use crate::com::ConnRef;
use crate::config::{self, Config, KeyValues, Loaded, ShardEntry};
use crate::conn::DisconnectReason;
use crate::notify;
use crate::runtime::{IoTuning, Job};

/// Where the proxy's files are, and what runs now (set by `muta-proxy`;
/// a proxy without it, in tests, has nothing to reload).
#[derive(Clone, Debug)]
pub struct Running {
    /// `--config`.
    pub config_path: PathBuf,
    /// `--shards`.
    pub shards_path: PathBuf,
    /// The configuration in force.
    pub config: Config,
    /// Its values' text, which the next reload compares against.
    pub values: KeyValues,
    /// Reloads applied so far (0: as started).
    pub generation: u64,
}

/// A shard link being removed: its players go with a lingering close, and
/// the link is closed once none is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Removing {
    link: ConnRef,
    until: Instant,
}

/// How long a removed shard's players are given to take what is queued for
/// them before the link goes anyway.
const REMOVED_SHARD_LINGER: Duration = Duration::from_secs(10);

impl Proxy {
    /// Gives the proxy its files, for SIGHUP.
    pub fn set_running(&mut self, running: Running) {
        self.running = Some(running);
    }

    /// Reloads applied so far.
    pub fn config_generation(&self) -> u64 {
        self.running.as_ref().map_or(0, |r| r.generation)
    }

    /// SIGTERM: see the module docs. Returns the time the runtime waits.
    pub(super) fn proxy_drain(&mut self, now: Instant) -> Duration {
        let allowed = self.drain_timeout;
        if allowed.is_zero() {
            return allowed;
        }
        self.draining = true;
        let until = now + allowed;
        let sessions: Vec<u32> = self.otc.session_ids().collect();
        for session in sessions {
            self.otc_end_session(session, "the proxy is stopping", now);
        }
        let live: Vec<ConnRef> = self.clients.iter_live().map(|(c, _)| c).collect();
        for &client in &live {
            self.clients
                .disconnect_lingering(client, DisconnectReason::Shutdown, until);
        }
        info!(
            "drain: {} connection(s) closing after their output; OTC sessions ended; \
             new logins refused",
            live.len()
        );
        allowed
    }

    /// True once the drain has nothing left to wait for.
    pub(super) fn proxy_drained(&self) -> bool {
        self.clients.n_lingering() == 0
            && self.clients.n_live() == 0
            && self.shards.out_queued() == 0
    }

    /// SIGHUP: the job that reads both files, off the main thread.
    pub(super) fn proxy_hangup(&mut self) -> Option<Job> {
        let Some(running) = &self.running else {
            info!("SIGHUP received: no configuration files to reload");
            return None;
        };
        info!(
            "SIGHUP received: reloading {} and {}",
            running.config_path.display(),
            running.shards_path.display()
        );
        notify::reloading();
        let (config_path, shards_path) = (running.config_path.clone(), running.shards_path.clone());
        Some(Box::new(move || {
            Box::new(config::load_values(&config_path, &shards_path)) as Box<dyn Any + Send>
        }))
    }

    /// `EVENT_JOB_DONE`: the files as read; applied, or refused whole.
    pub(super) fn proxy_reloaded(&mut self, result: Box<dyn Any + Send>, now: Instant) {
        let Ok(result) = result.downcast::<Result<Loaded, config::ConfigErrors>>() else {
            error!("reload: an unexpected job result (bug)");
            notify::ready("running; the last reload failed (see the log)");
            return;
        };
        match *result {
            Ok(loaded) => self.apply_reload(loaded, now),
            Err(errors) => self.refuse_reload(&errors),
        }
    }

    fn refuse_reload(&mut self, errors: &config::ConfigErrors) {
        for e in errors {
            error!("reload refused: {e}");
        }
        error!("reload refused: the running configuration is kept");
        notify::ready("running; the last reload was refused (see the log)");
    }

    fn apply_reload(&mut self, loaded: Loaded, now: Instant) {
        let Some(running) = self.running.as_ref() else {
            return;
        };
        let plan = match config::reload_plan(&running.config_path, &running.values, &loaded.values)
        {
            Ok(plan) => plan,
            Err(errors) => return self.refuse_reload(&errors),
        };
        if let Err(why) = self.check_shard_room(&loaded.shards, &plan.config) {
            error!("reload refused: {}: {why}", running.shards_path.display());
            error!("reload refused: the running configuration is kept");
            notify::ready("running; the last reload was refused (see the log)");
            return;
        }
        for key in &plan.kept {
            warn!("reload: {key} changed, but it takes a restart; it keeps its running value");
        }
        self.apply_settings(&plan.config);
        let (added, removed) = self.apply_shards(&loaded.shards, now);
        let running = self.running.as_mut().expect("checked above");
        running.generation += 1;
        running.config = plan.config;
        running.values = plan.values;
        info!(
            "reload {} applied: {} key(s) changed{}{}; shards: {added} added, {removed} removed",
            running.generation,
            plan.changed.len(),
            if plan.changed.is_empty() { "" } else { " (" },
            if plan.changed.is_empty() {
                String::new()
            } else {
                format!("{})", plan.changed.join(", "))
            },
        );
        notify::ready(&format!("running; configuration {}", running.generation));
    }

    /// A reload may list no more shards than the link slots hold, counting
    /// links still being removed; and cannot add MUTA shards to a proxy that
    /// started without its MUTA listener.
    fn check_shard_room(&self, shards: &[ShardEntry], cfg: &Config) -> Result<(), String> {
        if self.muta_listener().is_none() && !shards.is_empty() {
            return Err(
                "the proxy started with no shard, so its MUTA listener is not open; \
                        adding shards takes a restart"
                    .to_string(),
            );
        }
        let max = cfg.shard.max_shards as usize;
        // Links this reload removes hold their slots until they close too.
        let removed_now = self
            .links
            .entries()
            .filter(|old| !shards.iter().any(|new| new.same_shard(old)))
            .count();
        let removing = self.links.n_removing() + removed_now;
        if shards.len() + removing > max {
            return Err(format!(
                "{} shard(s) listed and {removing} being removed; shard.max_shards is {max}",
                shards.len()
            ));
        }
        if shards.is_empty() && cfg.otc.listen.is_none() {
            return Err(config::NO_SHARDS.to_string());
        }
        Ok(())
    }

    /// Every table's settings from `cfg` (its live keys; the restart-only
    /// ones are the running values, so nothing they size changes).
    fn apply_settings(&mut self, cfg: &Config) {
        self.settings = ProxySettings::from_config(cfg);
        self.otc.set_settings(OtcSettings::from_config(cfg));
        self.addrs.set_limits(self.settings.addr_limits);
        self.links.set_retry(self.settings.connect_retry);
        self.drain_timeout = Duration::from_millis(cfg.proxy.drain_timeout_ms);
        let connect_timeout = Duration::from_millis(cfg.shard.connect_timeout_ms);
        self.clients.set_timeouts(
            Some(Duration::from_millis(cfg.client.idle_timeout_ms)),
            connect_timeout,
        );
        self.shards.set_timeouts(None, connect_timeout);
        if let Some(muta) = self.muta_listener() {
            self.clients
                .set_listener_limits(muta, cfg.client.out_buf_size, cfg.client.max_clients);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            log::set_max_level(cfg.proxy.log_level);
        }
        self.io_tuning = Some(IoTuning {
            client: (cfg.client.reads_per_wakeup, cfg.client.accepts_per_wakeup),
            shard: Some((cfg.shard.reads_per_wakeup, 0)),
        });
    }

    /// Connects shards the new `shards.cfg` adds and drains those it
    /// removes; returns how many of each.
    fn apply_shards(&mut self, shards: &[ShardEntry], now: Instant) -> (usize, usize) {
        let running: Vec<ShardEntry> = self.links.entries().cloned().collect();
        let removed: Vec<&ShardEntry> = running
            .iter()
            .filter(|old| !shards.iter().any(|new| new.same_shard(old)))
            .collect();
        let added: Vec<&ShardEntry> = shards
            .iter()
            .filter(|new| !running.iter().any(|old| old.same_shard(new)))
            .collect();
        for entry in &removed {
            if let Some(link) = self.links.remove(entry) {
                self.drain_shard(link, now);
            }
        }
        for entry in &added {
            self.links.add(entry, now);
        }
        (added.len(), removed.len())
    }

    /// A removed shard's link: its players go with a lingering close (the
    /// shard told of each by `settle`), the link once none is left.
    fn drain_shard(&mut self, link: ConnRef, now: Instant) {
        let players: Vec<ConnRef> = self
            .shards
            .get(link)
            .and_then(|s| s.session.link())
            .map(|l| l.players.values().copied().collect())
            .unwrap_or_default();
        let until = now + REMOVED_SHARD_LINGER;
        // Its logins not yet connected will never be: refused from now.
        self.reservations.release_link(link);
        info!(
            "shard {}: removed from shards.cfg; closing its {} player(s) after their output",
            self.links.addr(link),
            players.len()
        );
        for client in players {
            self.clients.disconnect_lingering(
                client,
                DisconnectReason::Closed("its shard was removed from shards.cfg"),
                until,
            );
        }
        self.removing.push(Removing { link, until });
    }

    /// At the tick: a removed shard's link is closed once its players are
    /// gone and its output is written (or its time is up).
    pub(super) fn close_removed_links(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.removing.len() {
            let Removing { link, until } = self.removing[i];
            let done = match self.shards.get(link) {
                None => true, // gone already
                Some(slot) => {
                    let empty = match &slot.session {
                        Outbound::Link(l) => l.players.is_empty(),
                        Outbound::Connecting | Outbound::Game(_) => true,
                    };
                    (empty && slot.out_len() == 0) || now >= until
                }
            };
            if done {
                self.shards
                    .disconnect(link, DisconnectReason::Closed("removed from shards.cfg"));
                self.removing.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}
