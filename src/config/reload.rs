//! What a reload of `proxy.cfg` changes (no thesis section: the thesis reads
//! its files once; a port decision for SIGHUP, `docs/configuration.md`
//! "Reloading"). Each key's [`Reload`] policy decides: a changed
//! [`Reload::Live`] key takes its new value; a changed [`Reload::Restart`]
//! key keeps the running one, and is reported.
//!
//! The comparison is on the values' text as the files write them
//! ([`KeyValues`]), a key left out standing for its default, so `4096` and a
//! key left at its default of 4096 are the same. The configuration that runs
//! after the reload is the new file with every restart-only key put back to
//! its running value, read again by the same reader, so the cross-key checks
//! of [`Config::validate`] hold for exactly what will run.

use std::path::Path;

use super::schema::{KEYS, Key, Reload};
use super::{Config, ConfigErrors, KeyValues};

/// A reload, worked out.
#[derive(Clone, Debug)]
pub struct ReloadPlan {
    /// The configuration to run from now on.
    pub config: Config,
    /// Its values' text (the next reload compares against these).
    pub values: KeyValues,
    /// Live keys that change.
    pub changed: Vec<&'static str>,
    /// Restart-only keys the new file changes, which keep their running
    /// value until a restart.
    pub kept: Vec<&'static str>,
}

/// A key's value text in `values`, or its default's.
fn value_of(values: &KeyValues, key: &Key) -> Option<String> {
    values.get(key.name).cloned().or_else(|| key.default_text())
}

/// Works out the reload from the running values to the new file's.
/// `file` names the new `proxy.cfg` in error messages.
pub fn plan(file: &Path, running: &KeyValues, new: &KeyValues) -> Result<ReloadPlan, ConfigErrors> {
    let mut changed = Vec::new();
    let mut kept = Vec::new();
    let mut text = String::new();
    let mut values = KeyValues::new();
    for key in KEYS.iter() {
        let old = value_of(running, key);
        let mut value = value_of(new, key);
        if old != value {
            match key.reload {
                Reload::Live => changed.push(key.name),
                Reload::Restart => {
                    kept.push(key.name);
                    value = old;
                }
            }
        }
        if let Some(value) = value {
            text += &format!("{} = {value}\n", key.name);
            values.insert(key.name, value);
        }
    }
    let config = Config::parse(file, &text).map_err(|errors| {
        // Lines of the text made here mean nothing to the operator.
        let mut errors = errors;
        for e in &mut errors.0 {
            e.line = None;
            e.message = format!("with the restart-only keys kept as they run: {}", e.message);
        }
        errors
    })?;
    Ok(ReloadPlan {
        config,
        values,
        changed,
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> KeyValues {
        Config::parse_values(Path::new("proxy.cfg"), text)
            .unwrap()
            .1
    }

    const BASE: &str = "[shard]\npassword = \"pw\"\n";

    #[test]
    fn live_keys_change_and_restart_keys_are_kept_and_named() {
        let running = values(&format!(
            "{BASE}[client]\nmax_clients = 100\nidle_timeout_ms = 5000\n"
        ));
        let new = values(&format!(
            "{BASE}[client]\nmax_clients = 200\nidle_timeout_ms = 9000\nmax_conns_per_addr = 3\n"
        ));
        let plan = plan(Path::new("proxy.cfg"), &running, &new).unwrap();
        assert_eq!(
            plan.changed,
            ["client.idle_timeout_ms", "client.max_conns_per_addr"]
        );
        assert_eq!(plan.kept, ["client.max_clients"]);
        assert_eq!(plan.config.client.max_clients, 100, "kept as it runs");
        assert_eq!(plan.config.client.idle_timeout_ms, 9000);
        assert_eq!(plan.config.client.max_conns_per_addr, 3);
        // The next reload compares against what runs.
        assert_eq!(
            plan.values.get("client.max_clients").map(String::as_str),
            Some("100")
        );
    }

    #[test]
    fn a_key_written_at_its_default_is_no_change() {
        let running = values(BASE);
        let new = values(&format!("{BASE}[client]\nmax_clients = 1024\n"));
        let plan = plan(Path::new("proxy.cfg"), &running, &new).unwrap();
        assert!(plan.changed.is_empty() && plan.kept.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_cross_key_problem_with_the_kept_keys_refuses_the_reload() {
        // path_out_buf_size takes a restart; unacked_bytes_max is live but
        // must fit the running path output with room to spare.
        let running = values(&format!("{BASE}[otc]\npath_out_buf_size = 524288\n"));
        let new = values(&format!(
            "{BASE}[otc]\npath_out_buf_size = 4194304\nunacked_bytes_max = 1048576\n"
        ));
        let err = plan(Path::new("proxy.cfg"), &running, &new).unwrap_err();
        let text = err
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains("restart-only keys kept"), "{text}");
        assert!(text.contains("unacked_bytes_max"), "{text}");
    }
}
