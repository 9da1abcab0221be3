//! SPEC §1: `check` and `run` exit codes and the messages an operator needs (file, line, key,
//! address).

use crate::support::*;

fn write_config(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn check_good_config_prints_ok() {
    bounded("check_good_config_prints_ok", async {
        let dir = unique_temp_dir("cli-good");
        let toml = ConfigBuilder::new()
            .versions(&[13, 8, 7])
            .limit("idle_timeout", "\"5m\"")
            .upstream("chat", &[refused_addr()])
            .route(Route::new("/ws").sub("chat.v2", "chat").fallback("chat"))
            .build();
        let path = write_config(&dir, "good.toml", &toml);
        let (code, out, err) = run_cli(&["check", "--config", &path]).await;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            code, 0,
            "check of a valid config; stdout {out:?} stderr {err:?}"
        );
        assert!(
            out.lines().any(|l| l.trim() == "ok"),
            "check did not print `ok`: {out:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn check_unknown_key_names_file_line_and_key() {
    bounded("check_unknown_key_names_file_line_and_key", async {
        let dir = unique_temp_dir("cli-unknown");
        let upstream = refused_addr();
        // The unknown key is on line 6.
        let toml = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[limits]\nidle_timeout = \"5m\"\nfrobnicate = 3\n\n\
             [upstreams.chat]\nservers = [\"{upstream}\"]\n\n[[route]]\npath = \"/ws\"\nfallback = \"chat\"\n"
        );
        let path = write_config(&dir, "unknown-key.toml", &toml);
        let (code, out, err) = run_cli(&["check", "--config", &path]).await;
        let _ = std::fs::remove_dir_all(&dir);
        let all = format!("{out}\n{err}");
        assert_eq!(code, 2, "check of a config with an unknown key; output {all:?}");
        assert!(all.contains("unknown-key.toml"), "message does not name the file: {all:?}");
        assert!(
            all.contains(":6") || all.contains("line 6"),
            "message does not name line 6: {all:?}"
        );
        assert!(all.contains("frobnicate"), "message does not name the key: {all:?}");
    })
    .await;
}

#[tokio::test]
async fn run_missing_config_exits_2_naming_it() {
    bounded("run_missing_config_exits_2_naming_it", async {
        let dir = unique_temp_dir("cli-missing");
        let path = dir
            .join("does-not-exist.toml")
            .to_string_lossy()
            .into_owned();
        let (code, out, err) = run_cli(&["run", "--config", &path]).await;
        let _ = std::fs::remove_dir_all(&dir);
        let all = format!("{out}\n{err}");
        assert_eq!(code, 2, "run with a missing config file; output {all:?}");
        assert!(
            all.contains("does-not-exist.toml"),
            "message does not name the file: {all:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn run_on_a_port_in_use_exits_1_naming_it() {
    bounded("run_on_a_port_in_use_exits_1_naming_it", async {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("local_addr").to_string();
        let dir = unique_temp_dir("cli-inuse");
        let toml = format!(
            "[[listener]]\nbind = \"{addr}\"\n\n[upstreams.chat]\nservers = [\"{}\"]\n\n\
             [[route]]\npath = \"/ws\"\nfallback = \"chat\"\n",
            refused_addr()
        );
        let path = write_config(&dir, "in-use.toml", &toml);
        let (code, out, err) = run_cli(&["run", "--config", &path]).await;
        let _ = std::fs::remove_dir_all(&dir);
        drop(taken);
        let all = format!("{out}\n{err}");
        assert_eq!(code, 1, "run on a port in use; output {all:?}");
        assert!(all.contains(&addr), "message does not name {addr}: {all:?}");
    })
    .await;
}

#[tokio::test]
async fn unknown_subcommand_exits_2() {
    bounded("unknown_subcommand_exits_2", async {
        let (code, out, err) = run_cli(&["frobnicate"]).await;
        assert_eq!(code, 2, "unknown subcommand; stdout {out:?} stderr {err:?}");
        assert!(
            !err.trim().is_empty(),
            "no message for an unknown subcommand"
        );
    })
    .await;
}

/// SPEC §1: `bench` refuses any target outside 127.0.0.0/8 and ::1, as a usage error, before
/// connecting anywhere; a loopback target that is not a `ws://` URL is refused the same way.
#[tokio::test]
async fn bench_refuses_targets_off_loopback() {
    bounded("bench_refuses_targets_off_loopback", async {
        for (args, says) in [
            (
                &["bench", "echo", "--target", "ws://10.1.2.3:80/ws"][..],
                "127.0.0.0/8",
            ),
            (
                &["bench", "handshakes", "--target", "ws://[2001:db8::1]:80/"][..],
                "127.0.0.0/8",
            ),
            (
                &["bench", "upstream", "--listen", "0.0.0.0:9000"][..],
                "127.0.0.0/8",
            ),
            (
                &["bench", "bulk", "--target", "http://127.0.0.1:80/"][..],
                "ws://HOST:PORT/PATH",
            ),
            (
                &["bench", "idle", "--target", "ws://127.0.0.1:9/"][..],
                "--pid",
            ),
        ] {
            let (code, _out, err) = run_cli(args).await;
            assert_eq!(code, 2, "{args:?}: stderr {err:?}");
            assert!(err.contains(says), "{args:?}: stderr {err:?}");
        }
    })
    .await;
}

/// A config with one route `/ws` (fallback `app`) carrying `keys` (TOML lines).
fn route_keys_config(keys: &str) -> String {
    let upstream = refused_addr();
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[upstreams.app]\nservers = [\"{upstream}\"]\n\n\
         [[route]]\npath = \"/ws\"\nfallback = \"app\"\n{keys}\n"
    )
}

/// SPEC §2 `check` rules of §9, through the real binary: each bad route key exits 2 with
/// `FILE:LINE: route[0].KEY: problem` (the first key is on line 10); the same keys valid pass.
#[tokio::test]
async fn check_inspect_and_lifetime_keys() {
    bounded("check_inspect_and_lifetime_keys", async {
        let dir = unique_temp_dir("cli-inspect");
        #[rustfmt::skip]
        let bad: &[(&str, &str, &str, &str)] = &[
            // (keys, the key named, its line, what the problem says)
            ("max_message_bytes = 1000", "max_message_bytes", ":10:", "inspect = true"),
            ("inspect = false\nmax_frame_bytes = 1000", "max_frame_bytes", ":11:", "inspect = true"),
            ("ping_interval = \"5s\"", "ping_interval", ":10:", "inspect = true"),
            ("ping_timeout = \"5s\"", "ping_timeout", ":10:", "inspect = true"),
            ("close_code = 1001", "close_code", ":10:", "inspect = true"),
            ("inspect = true\nclose_code = 1006", "close_code", ":11:", "1006"),
            ("inspect = true\nclose_code = 5000", "close_code", ":11:", "1000-4999"),
            ("inspect = true\nping_interval = 30", "ping_interval", ":11:", "integer `30`"),
            ("max_lifetime = \"10 fortnights\"", "max_lifetime", ":10:", "\"10 fortnights\""),
            ("max_lifetime = \"1m\"\nmax_lifetime_jitter = \"2m\"", "max_lifetime_jitter", ":11:", "shorter than max_lifetime"),
        ];
        for (i, (keys, key, line, says)) in bad.iter().enumerate() {
            let path = write_config(&dir, &format!("bad{i}.toml"), &route_keys_config(keys));
            let (code, out, err) = run_cli(&["check", "--config", &path]).await;
            let all = format!("{out}{err}");
            assert_eq!(code, 2, "{keys:?}: exit {code}, output {all:?}");
            let prefix = format!("{path}{line} route[0].{key}: ");
            assert!(all.contains(&prefix), "{keys:?}: expected {prefix:?} in {all:?}");
            assert!(all.contains(says), "{keys:?}: expected {says:?} in {all:?}");
        }
        for keys in [
            "inspect = true\nmax_message_bytes = 1048576\nmax_frame_bytes = 0\nping_interval = \"30s\"\nping_timeout = \"10s\"\nclose_code = 1012\nmax_lifetime = \"1h\"\nmax_lifetime_jitter = \"5m\"",
            "max_lifetime = \"10m\"\nmax_lifetime_jitter = \"1m\"",
        ] {
            let path = write_config(&dir, "good.toml", &route_keys_config(keys));
            let (code, out, err) = run_cli(&["check", "--config", &path]).await;
            assert_eq!(code, 0, "{keys:?}: stdout {out:?} stderr {err:?}");
            assert!(out.lines().any(|l| l.trim() == "ok"), "{keys:?}: {out:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
