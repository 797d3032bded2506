//! The systemd units in `dist/` (issue "Run it as operators do"): each one
//! passes `systemd-analyze verify` with no warning at all (an unknown key or
//! a bad value is only a warning there, so the test reads its output too),
//! with the shipped `/usr/local/bin` paths pointed at the binaries just
//! built. `make test` installs Debian's `systemd` package if
//! `systemd-analyze` is missing; run alone without it, the test says so and
//! checks only what needs no systemd.

use std::path::Path;
use std::process::Command;

const UNITS: [(&str, &str); 3] = [
    ("muta-proxy", env!("CARGO_BIN_EXE_muta-proxy")),
    ("muta-shard", env!("CARGO_BIN_EXE_muta-shard")),
    ("muta-login", env!("CARGO_BIN_EXE_muta-login")),
];

fn unit_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(format!("{name}.service"));
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_units_ask_for_what_the_daemons_do() {
    for (name, _) in UNITS {
        let unit = unit_text(name);
        for line in [
            "Type=notify",
            "Restart=on-failure",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "User=muta-proxy",
            "ExecReload=/bin/kill -HUP $MAINPID",
        ] {
            assert!(unit.lines().any(|l| l == line), "{name}: no `{line}`");
        }
        assert!(unit.contains("LimitNOFILE="), "{name}");
        // No port under 1024 is shipped: no capability is kept.
        assert!(
            unit.lines().any(|l| l == "CapabilityBoundingSet="),
            "{name}"
        );
    }
    let proxy = unit_text("muta-proxy");
    assert!(proxy.contains("ExecStartPre=/usr/local/bin/muta-proxy --check-config"));
    assert!(proxy.contains("/etc/muta-proxy/proxy.cfg"));
}

#[test]
fn systemd_analyze_verify_passes_on_every_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed (make test installs it): not verified");
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dist-units");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bin) in UNITS {
        let unit = unit_text(name).replace(&format!("/usr/local/bin/{name}"), bin);
        let path = dir.join(format!("{name}.service"));
        std::fs::write(&path, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {said}");
        assert!(
            said.trim().is_empty(),
            "{name}: systemd-analyze warned: {said}"
        );
    }
}
