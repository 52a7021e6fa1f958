//! The CLI behaves the way a user of the `nats` CLI expects: `-s` before or after the
//! subcommand, `NATS_URL`, nats contexts (named and selected), shell completions, and a
//! daemon log without colour codes or warnings for ordinary operations.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use super::cluster::{Cluster, billing_listener, vm_event};
use super::support::nats::NatsServer;

/// A CLI command with no server from the harness: only what the test gives reaches it.
/// Contexts are looked for under `config` (as `XDG_CONFIG_HOME`), never the user's own.
fn bare(cluster: &Cluster, config: &Path, args: &[&str]) -> Command {
    let mut command = cluster.command(args);
    command
        .env_remove("SANDBUS_NATS_URL")
        .env("XDG_CONFIG_HOME", config);
    command
}

/// The host ids `sandbus hosts --json` printed, or the failure.
fn hosts(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts: Value = serde_json::from_slice(&out.stdout).unwrap();
    hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Writes the nats context `name` under `config`, as `nats context save` lays it out.
fn save_context(config: &Path, name: &str, context: &Value) {
    let dir = config.join("nats").join("context");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.json")), context.to_string()).unwrap();
}

#[test]
fn the_cli_reaches_the_server_by_s_before_or_after_the_subcommand_and_by_nats_url() {
    let mut cluster = Cluster::new();
    cluster.start_daemon("h1");
    let url = cluster.nats.url();
    let config = tempfile::tempdir().unwrap();
    for args in [
        &["-s", &url, "hosts", "--json"][..],
        &["hosts", "--json", "-s", &url],
        &["--server", &url, "hosts", "--json"],
        &["hosts", "--json", "--nats", &url],
    ] {
        let out = bare(&cluster, config.path(), args).output().unwrap();
        assert_eq!(hosts(&out), ["h1"], "{args:?}");
    }
    let out = bare(&cluster, config.path(), &["hosts", "--json"])
        .env("NATS_URL", &url)
        .output()
        .unwrap();
    assert_eq!(hosts(&out), ["h1"], "by NATS_URL");
    // The flag is over the variable: a dead NATS_URL does not matter.
    let out = bare(&cluster, config.path(), &["-s", &url, "hosts", "--json"])
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(hosts(&out), ["h1"], "-s over NATS_URL");
}

#[test]
fn a_nats_context_with_a_user_and_password_reaches_a_server_that_requires_them() {
    let server = NatsServer::start_with(&["--user", "lab", "--pass", "s3cret"]);
    let auth = ["--user", "lab", "--password", "s3cret"].map(String::from);
    let mut cluster = Cluster::with_server(server, auth.to_vec());
    cluster.start_daemon("h1");
    let config = tempfile::tempdir().unwrap();
    save_context(
        config.path(),
        "lab",
        &serde_json::json!({
            "description": "the lab", "url": cluster.nats.url(), "user": "lab",
            "password": "s3cret", "token": "", "creds": "", "nkey": "", "cert": "", "key": "",
            "ca": "", "nsc": "", "socks_proxy": "", "tls_first": false,
            "windows_ca_certs_match": null
        }),
    );

    let mut named = bare(
        &cluster,
        config.path(),
        &["--context", "lab", "hosts", "--json"],
    );
    assert_eq!(hosts(&named.output().unwrap()), ["h1"], "--context lab");

    // Nothing named: the server needs the credentials, which only the context has.
    let nothing = bare(&cluster, config.path(), &["hosts", "--json"])
        .env("NATS_URL", cluster.nats.url())
        .output()
        .unwrap();
    assert_eq!(nothing.status.code(), Some(5), "no context selected yet");

    std::fs::write(config.path().join("nats").join("context.txt"), "lab\n").unwrap();
    let mut selected = bare(&cluster, config.path(), &["hosts", "--json"]);
    assert_eq!(
        hosts(&selected.output().unwrap()),
        ["h1"],
        "the selected one"
    );

    // Found through HOME when XDG_CONFIG_HOME is unset (~/.config/nats/...).
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".config")).unwrap();
    std::fs::rename(
        config.path().join("nats"),
        home.path().join(".config").join("nats"),
    )
    .unwrap();
    let by_home = cluster
        .command(&["hosts", "--json"])
        .env_remove("SANDBUS_NATS_URL")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(hosts(&by_home), ["h1"], "under HOME");
}

#[test]
fn a_missing_nats_context_is_a_usage_error_naming_the_file_and_how_to_list_them() {
    let cluster = Cluster::new();
    let config = tempfile::tempdir().unwrap();
    let out = bare(&cluster, config.path(), &["--context", "staging", "hosts"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let path = config.path().join("nats/context/staging.json");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("nats context ls"), "{stderr}");

    // A context sandbus cannot honour is refused by name, not half used.
    save_context(
        config.path(),
        "proxied",
        &serde_json::json!({"url": cluster.nats.url(), "socks_proxy": "socks5://p:1080"}),
    );
    let out = bare(&cluster, config.path(), &["--context", "proxied", "hosts"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("socks_proxy"), "{stderr}");
}

#[test]
fn completions_print_a_script_naming_the_subcommands_and_flags() {
    let cache = tempfile::tempdir().unwrap();
    let bash = super::sandbus(&["completions", "bash"], cache.path());
    assert!(bash.status.success(), "{}", super::stderr(&bash));
    let script = super::stdout(&bash);
    for word in [
        "sandbus",
        "subscribe",
        "unsubscribe",
        "completions",
        "--server",
    ] {
        assert!(script.contains(word), "no `{word}` in the bash script");
    }
    for shell in ["zsh", "fish"] {
        let out = super::sandbus(&["completions", shell], cache.path());
        assert!(out.status.success(), "{shell}: {}", super::stderr(&out));
        assert!(super::stdout(&out).contains("unsubscribe"), "{shell}");
    }
    let unknown = super::sandbus(&["completions", "cmd.exe"], cache.path());
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn a_daemon_log_in_a_file_has_no_colour_codes_and_unsubscribing_warns_nothing() {
    let mut cluster = Cluster::new();
    cluster.start_daemon_with("h1", &["--idle-after", "1s"]);
    // A listener unsubscribed while it is busy with hundreds of events...
    billing_listener(&cluster, "busy");
    let events: Vec<Value> = (0..400)
        .map(|i| vm_event("started", "acme", &format!("i-{i}"), 1_800_000_000 + i))
        .collect();
    cluster.publish_events(&events);
    let before = cluster.daemon_log("h1").len();
    cluster.cli_ok(&["unsubscribe", "busy"]);
    // ... and one unsubscribed while idle (no consumer until its next event).
    billing_listener(&cluster, "idle");
    cluster.wait("the idle listener to rest", |c| {
        c.daemon_log("h1").contains("idle: its consumer is deleted")
    });
    cluster.cli_ok(&["unsubscribe", "idle"]);
    cluster.wait("both to be unsubscribed", |c| {
        c.cli_json(&["status"]).as_array().unwrap().is_empty()
    });
    // Time for the busy listener's dispatcher to see its consumer gone and stop.
    cluster.wait("the busy listener's dispatcher to stop", |c| {
        c.daemon_log("h1")
            .contains(r#"dispatcher stopped listener="busy""#)
    });

    let log = cluster.daemon_log("h1");
    assert!(log.contains(" INFO "), "the log has lines: {log}");
    assert!(!log.contains("\x1b["), "ANSI codes in a log file:\n{log}");
    let warnings: Vec<&str> = log[before..]
        .lines()
        .filter(|l| l.contains(" WARN "))
        .collect();
    assert!(warnings.is_empty(), "warnings:\n{}", warnings.join("\n"));
}
