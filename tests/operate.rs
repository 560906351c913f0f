//! Operating the relay: the `health` and `check-config` subcommands of the compiled binary,
//! and the deployment files under `deploy/` (their configurations pass `check-config`, their
//! variables are ones the binary reads, their stop timeouts outlast a graceful shutdown).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory as _;
use common::process::{BIN, free_port, read, run_to_exit, spawn, spawn_program};
use common::{WAIT, bad_check_digit, device, valid_mpan, write_registry};
use outage_relay::cli::Cli;
use outage_relay::config::{Config, DEFAULT_SHUTDOWN_GRACE};
use tokio::time::Instant;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Graceful shutdown takes at most this many `shutdown_grace` bounds in a row: open gRPC
/// calls, then the pipeline tasks, then the commit stage draining (`server::run`).
const GRACE_STEPS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_0_only_while_the_relay_is_serving() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let listen = format!("127.0.0.1:{}", free_port().await);
    let metrics_listen = format!("127.0.0.1:{}", free_port().await);
    let target = format!("http://{listen}");

    // Nothing listens yet.
    let (status, out, err) =
        run_to_exit(&["health", "--target", &target], dir.path(), "before").await;
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    let mut relay = spawn(
        &[
            "serve",
            "--listen",
            &listen,
            "--metrics-listen",
            &metrics_listen,
        ],
        dir.path(),
        "serve",
    );
    // What a container's health check does: ask until the answer is SERVING.
    let deadline = Instant::now() + WAIT;
    let out = loop {
        let (status, out, _) =
            run_to_exit(&["health", "--target", &target], dir.path(), "health").await;
        if status.success() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy: {}",
            read(dir.path(), "serve.err")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        out,
        format!("outage-relay health: {target} service \"\": SERVING\n")
    );

    let (status, out, _) = run_to_exit(
        &[
            "health",
            "--target",
            &target,
            "--service",
            "outage_relay.v1.Ingest",
        ],
        dir.path(),
        "ingest",
    )
    .await;
    assert!(status.success(), "{out}");
    let (status, _, err) = run_to_exit(
        &[
            "health",
            "--target",
            &target,
            "--service",
            "no.such.Service",
        ],
        dir.path(),
        "unknown",
    )
    .await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("NOT_FOUND"), "{err}");

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &relay.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    assert!(relay.exit().await.success());
    let (status, _, err) = run_to_exit(&["health", "--target", &target], dir.path(), "after").await;
    assert_eq!(status.code(), Some(1), "{err}");
}

/// Runs `check-config` with `args` and extra environment: exit code, stdout, stderr.
async fn check_config(
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> (Option<i32>, String, String) {
    let mut argv = vec!["check-config"];
    argv.extend_from_slice(args);
    let mut running = spawn_program(BIN, &argv, env, dir, "check");
    let status = running.exit().await;
    (
        status.code(),
        read(dir, "check.out"),
        read(dir, "check.err"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_prints_the_effective_configuration_and_the_registry_size() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let registry = write_registry(
        dir.path(),
        "registry.csv",
        &[
            (&device(1), &valid_mpan(12, 1), "_C"),
            (&device(2), &valid_mpan(16, 2), "_G"),
        ],
    );
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "debounce = \"90s\"\npoa_sla = \"45s\"\n").expect("write the config");
    let registry = registry.to_str().expect("utf-8");
    // Precedence as for serve: the flag beats the variable, which beats the file.
    let (code, out, err) = check_config(
        &[
            "--config",
            file.to_str().expect("utf-8"),
            "--registry",
            registry,
            "--shards",
            "3",
        ],
        &[
            ("OUTAGE_RELAY_POA_SLA", "30s"),
            ("OUTAGE_RELAY_SHARDS", "5"),
        ],
        dir.path(),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("# registry {registry}: 2 devices")),
        "{out}"
    );
    let config = Config::from_toml(&out).expect("the output is a configuration file");
    assert_eq!(
        config,
        Config {
            debounce: Duration::from_secs(90),
            poa_sla: Duration::from_secs(30),
            shards: 3,
            registry: Some(PathBuf::from(registry)),
            ..Config::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_what_serve_refuses_with_exit_code_64_and_the_same_message() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("relay.toml");
    let file = file.to_str().expect("utf-8");
    for (text, expected) in [
        ("debounce = \"0s\"\n", "debounce must be greater than zero"),
        ("debounce = \"3m\"\ndebunce = \"3m\"\n", "line 2"),
    ] {
        std::fs::write(file, text).expect("write the config");
        let (code, out, err) = check_config(&["--config", file], &[], dir.path()).await;
        assert_eq!(code, Some(64), "{err}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains(expected), "{err}");
        let (status, _, serve_err) = run_to_exit(
            &[
                "serve",
                "--config",
                file,
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            dir.path(),
            "serve",
        )
        .await;
        assert_eq!(status.code(), Some(64), "{serve_err}");
        assert_eq!(serve_err.lines().last(), err.lines().last());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_the_bad_lines_of_a_registry() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let registry = write_registry(
        dir.path(),
        "registry.csv",
        &[
            (&device(1), &valid_mpan(12, 1), "_C"),
            (&device(2), &bad_check_digit(&valid_mpan(12, 2)), "_C"),
        ],
    );
    let (code, out, err) = check_config(
        &["--registry", registry.to_str().expect("utf-8")],
        &[],
        dir.path(),
    )
    .await;
    assert!(code.is_some_and(|code| code != 0), "{out}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("check digit"), "{err}");
}

/// The `OUTAGE_RELAY_*` variables a deployment target sets for the relay: the image's `ENV`
/// and compose's `environment` for compose, the pod's `env` for Kubernetes. The paths they
/// name are the container's; the flags `check-config` is given here win over them.
fn deployed_env(target: &str) -> Vec<(String, String)> {
    let read = |path: &str| std::fs::read_to_string(deploy().join(path)).expect("read");
    let lines = |text: String| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    let mut env = Vec::new();
    if target == "compose" {
        for line in lines(read("container/Dockerfile")) {
            let line = line.trim_start_matches("ENV ").trim_end_matches(" \\");
            if let Some((name, value)) = line.split_once('=')
                && name.starts_with("OUTAGE_RELAY_")
            {
                env.push((name.to_owned(), value.to_owned()));
            }
        }
        for line in lines(read("compose/compose.yaml")) {
            if let Some((name, value)) = line.split_once(": ")
                && name.starts_with("OUTAGE_RELAY_")
            {
                env.push((name.to_owned(), value.to_owned()));
            }
        }
    } else {
        let pod = lines(read("kubernetes/statefulset.yaml"));
        for pair in pod.windows(2) {
            if let (Some(name), Some(value)) = (
                pair[0].strip_prefix("- name: OUTAGE_RELAY_"),
                pair[1].strip_prefix("value: "),
            ) {
                env.push((format!("OUTAGE_RELAY_{name}"), value.to_owned()));
            }
        }
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployed_configurations_pass_check_config() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // Kubernetes mounts its TLS files from a Secret; stand in test-made ones (check-config
    // reads them as serve would).
    let pki = common::pki::Pki::new(dir.path(), "deploy");
    let server = pki.server("relay");
    let utf8 = |path: &Path| path.to_str().expect("utf-8").to_owned();
    let (cert, key, ca) = (utf8(&server.cert), utf8(&server.key), utf8(&pki.ca));
    for target in ["compose", "kubernetes"] {
        let config = deploy().join(target).join("outage-relay.toml");
        let registry = deploy().join(target).join("registry.csv");
        // Both listen on every interface: the rules for gRPC and /metrics beyond loopback
        // hold for what they deploy.
        let env = deployed_env(target);
        let listens = ["OUTAGE_RELAY_LISTEN", "OUTAGE_RELAY_METRICS_LISTEN"];
        for name in listens {
            assert!(
                env.iter()
                    .any(|(n, v)| n == name && v.starts_with("0.0.0.0:")),
                "{target}: {env:?}"
            );
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        // The files name their in-container registry path; point it at the file beside them.
        let (code, out, err) = check_config(
            &[
                "--config",
                config.to_str().expect("utf-8"),
                "--registry",
                registry.to_str().expect("utf-8"),
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &ca,
            ],
            &env,
            dir.path(),
        )
        .await;
        assert_eq!(code, Some(0), "{target}: {err}");
        assert!(out.contains(": 1 devices"), "{target}: {out}");
        // The target waits longer for a graceful stop than this configuration can take.
        let text = std::fs::read_to_string(&config).expect("read the config");
        let grace = Config::from_toml(&text).expect("parses").shutdown_grace;
        let (_, timeout) = stop_timeouts()
            .into_iter()
            .find(|(name, _)| *name == target)
            .expect("a stop timeout for the target");
        assert!(
            grace * GRACE_STEPS < timeout,
            "{target}: {grace:?} x {GRACE_STEPS} >= {timeout:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_environment_file_passes_check_config() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let text = std::fs::read_to_string(deploy().join("systemd/outage-relay.env"))
        .expect("read the environment file");
    let env: Vec<(&str, &str)> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    assert!(env.len() >= 5, "{env:?}");
    let (code, out, err) = check_config(&[], &env, dir.path()).await;
    assert_eq!(code, Some(0), "{err}");
    let config = Config::from_toml(&out).expect("the output is a configuration file");
    assert_eq!(config.data_dir, Path::new("/var/lib/outage-relay"));
    // The unit lets the service write there and nowhere else.
    let unit = std::fs::read_to_string(deploy().join("systemd/outage-relay.service"))
        .expect("read the unit");
    assert!(unit.contains("ProtectSystem=strict"), "{unit}");
    assert!(
        unit.contains(&format!("ReadWritePaths={}", config.data_dir.display())),
        "{unit}"
    );
}

/// Every text file under `deploy/` (not the pictures of `deploy/docs/`).
fn deploy_files() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![deploy()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a deploy directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                // Python's bytecode cache, left by running the Python client from here.
                if path.file_name().is_none_or(|name| name != "__pycache__") {
                    pending.push(path);
                }
            } else if path.extension().is_none_or(|ext| ext != "png") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_outage_relay_variable_in_deploy_is_one_the_binary_reads() {
    let mut known: BTreeSet<String> = BTreeSet::from(["OUTAGE_RELAY_LOG".to_owned()]);
    let cli = Cli::command();
    for command in cli.get_subcommands() {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                known.insert(env.to_string_lossy().into_owned());
            }
        }
    }
    assert!(known.contains("OUTAGE_RELAY_DATA_DIR"), "{known:?}");
    let mut seen = 0;
    for path in deploy_files() {
        let text = std::fs::read_to_string(&path).expect("read a deploy file");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("OUTAGE_RELAY_") {
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..len];
            rest = &tail[len..];
            if name == "OUTAGE_RELAY_" {
                continue; // prose: "OUTAGE_RELAY_* variables"
            }
            assert!(
                known.contains(name),
                "{} sets {name}, which outage-relay does not read",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen > 0, "no OUTAGE_RELAY_* variable in deploy/");
}

/// How long each deployment target waits for a graceful stop before killing the relay.
fn stop_timeouts() -> Vec<(&'static str, Duration)> {
    let read = |path: &str| std::fs::read_to_string(deploy().join(path)).expect("read");
    let seconds = |text: &str, key: &str, suffix: &str| -> Duration {
        let value = text
            .lines()
            .find_map(|line| line.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"));
        let value = value.trim().trim_end_matches(suffix);
        Duration::from_secs(value.parse().unwrap_or_else(|_| panic!("{key} {value}")))
    };
    vec![
        (
            "kubernetes",
            seconds(
                &read("kubernetes/statefulset.yaml"),
                "terminationGracePeriodSeconds:",
                "",
            ),
        ),
        (
            "systemd",
            seconds(&read("systemd/outage-relay.service"), "TimeoutStopSec=", ""),
        ),
        (
            "compose",
            seconds(&read("compose/compose.yaml"), "stop_grace_period:", "s"),
        ),
    ]
}

#[test]
fn stop_timeouts_outlast_the_longest_graceful_shutdown() {
    for (target, timeout) in stop_timeouts() {
        assert!(
            timeout > DEFAULT_SHUTDOWN_GRACE * GRACE_STEPS,
            "{target}: {timeout:?} is not longer than {GRACE_STEPS} x {DEFAULT_SHUTDOWN_GRACE:?}"
        );
    }
}
