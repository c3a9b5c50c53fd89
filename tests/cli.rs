//! What the `pusher` command prints when it is given something wrong, or something unusual:
//! each message names what the operator typed (the flag, the variable, the key, the directory),
//! and the exit code says the kind of error (2: usage or configuration, 1: run time).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;

/// A scratch directory for one test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("pusher-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `pusher <args>` with no `PUSHER_*` variable but `env`, and a free port, to its exit.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pusher"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PUSHER_") || name == "ENCRYPTION_SECRET" || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env("PUSHER_ENCRYPTION_SECRET", TEST_ENCRYPTION_SECRET)
        .envs(env.iter().copied())
        .output()
        .expect("run pusher")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The one line a start error prints.
fn one_line(output: &Output) -> String {
    let text = stderr(output);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, not:\n{text}");
    lines[0].to_string()
}

#[test]
fn a_bad_value_from_the_environment_names_the_variable() {
    let output = run(&["budget"], &[("PUSHER_WORKERS", "many")]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let line = one_line(&output);
    assert!(
        line.contains("invalid value \"many\" in the variable PUSHER_WORKERS"),
        "{line}"
    );
}

#[test]
fn a_bad_value_on_the_command_line_names_the_flag() {
    // The flag wins over the variable; the message is about the flag.
    let output = run(&["budget", "--workers", "many"], &[("PUSHER_WORKERS", "2")]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = stderr(&output);
    assert!(text.contains("--workers"), "{text}");
    assert!(!text.contains("PUSHER_WORKERS"), "{text}");
}

#[test]
fn a_negative_number_is_an_invalid_value_not_an_unexpected_argument() {
    let output = run(&["budget", "--drain-grace-ms", "-5"], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = stderr(&output);
    assert!(text.contains("invalid value '-5'"), "{text}");
    assert!(text.contains("--drain-grace-ms"), "{text}");
    assert!(!text.contains("unexpected argument"), "{text}");
}

#[test]
fn a_misspelt_config_key_gets_a_suggestion() {
    let scratch = Scratch::new("key");
    let file = scratch.0.join("pusher.toml");
    std::fs::write(&file, "idle_timout_ms = 5000\n").unwrap();
    let output = run(&["budget", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let line = one_line(&output);
    assert!(line.contains("unknown key `idle_timout_ms`"), "{line}");
    assert!(line.contains("did you mean `idle_timeout_ms`?"), "{line}");
    assert!(line.contains(file.to_str().unwrap()), "{line}");
    assert!(!line.contains("default."), "{line}");
    assert!(line.len() < 300, "{} characters: {line}", line.len());
}

#[test]
fn a_data_dir_that_cannot_be_created_is_a_configuration_error() {
    let scratch = Scratch::new("data-dir");
    let file = scratch.0.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let data_dir = file.join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["serve", "--listen", &listen, "--data-dir"];
    let output = run(&[&args[..], &[data_dir.to_str().unwrap()]].concat(), &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let line = one_line(&output);
    let expected = format!("cannot create the data directory {}", data_dir.display());
    assert!(line.contains(&expected), "{line}");
    assert!(!line.contains("store"), "{line}");
}

#[test]
fn spill_inspect_help_lists_only_its_own_options() {
    let output = run(&["spill", "inspect", "--help"], &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--data-dir"), "{help}");
    assert!(help.contains("--config"), "{help}");
    for serve_only in ["--message-bytes-max", "--listen", "--workers", "--store"] {
        assert!(!help.contains(serve_only), "{serve_only} in:\n{help}");
    }
}

on_both_drivers!(more_workers_than_cpus_is_warned_and_the_budget_line_is_short);

async fn more_workers_than_cpus_is_warned_and_the_budget_line_is_short(driver: &str) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = (cpus + 1).to_string();
    let server = Server::start(driver, &["--workers", &workers, "--pin", "off"]).await;
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("more workers than the CPUs")),
        "{log}"
    );
    let budget = log
        .lines()
        .find(|l| l.contains("memory budget"))
        .expect("a budget line");
    assert!(budget.len() < 400, "{} characters: {budget}", budget.len());
    assert!(budget.contains("pusher budget"), "{budget}");
}

#[tokio::test]
async fn the_public_development_secret_is_warned_about() {
    let dev_secret = [(
        "PUSHER_ENCRYPTION_SECRET",
        pusher::upload::crypto::DEV_ONLY_SECRET,
    )];
    let server = Server::start_with_env("auto", &["--workers", "1"], &dev_secret).await;
    let log = server.log();
    let warning = log
        .lines()
        .find(|l| l.contains("public development secret"))
        .unwrap_or_else(|| panic!("no warning about the secret:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
}

/// The slots per worker `pusher budget` reports ("memory budget: 1 workers x N session slots").
fn budget_slots(output: &Output) -> String {
    assert!(output.status.success(), "{}", stderr(output));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let first = text.lines().next().unwrap_or_default().to_string();
    first
        .split(" x ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no slot count in {first:?}"))
        .to_string()
}

#[test]
fn renamed_options_keep_their_old_names_as_flag_variable_and_key() {
    let scratch = Scratch::new("renamed");
    let file = scratch.0.join("pusher.toml");
    std::fs::write(&file, "max_sessions_per_core = 33\n").expect("write the config file");
    let file = file.to_str().expect("a UTF-8 path");
    let current = run(
        &["budget", "--workers", "1", "--sessions-per-core-max", "31"],
        &[],
    );
    assert_eq!(budget_slots(&current), "31");
    let old_flag = run(
        &["budget", "--workers", "1", "--max-sessions-per-core", "32"],
        &[],
    );
    assert_eq!(budget_slots(&old_flag), "32");
    let old_key = run(&["budget", "--workers", "1", "--config", file], &[]);
    assert_eq!(budget_slots(&old_key), "33");
    let old_variable = run(
        &["budget", "--workers", "1", "--config", file],
        &[("PUSHER_MAX_SESSIONS_PER_CORE", "34")],
    );
    assert_eq!(
        budget_slots(&old_variable),
        "34",
        "a variable beats the file"
    );
    // The old names stay out of --help: one name per option there.
    let help = run(&["serve", "--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--sessions-per-core-max"), "{help}");
    assert!(!help.contains("--max-sessions-per-core"), "{help}");
}

#[test]
fn both_names_of_one_option_are_refused() {
    let output = run(
        &[
            "budget",
            "--spill-max-bytes",
            "1000000000",
            "--spill-bytes-max",
            "2000000000",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        one_line(&output).contains("`spill_max_bytes` is the old name of `spill_bytes_max`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn spill_commands_refuse_a_data_dir_without_a_log_and_create_nothing() {
    let scratch = Scratch::new("no-log");
    let data_dir = scratch.0.join("typo");
    let data_dir_arg = data_dir.to_str().expect("a UTF-8 path");
    for command in ["inspect", "drain"] {
        let output = run(&["spill", command, "--data-dir", data_dir_arg], &[]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{command}: {}",
            stderr(&output)
        );
        let line = one_line(&output);
        assert!(
            line.contains(&format!("no spill log at {data_dir_arg}/spill")),
            "{command}: {line}"
        );
        assert!(
            line.contains("set it with --data-dir or PUSHER_DATA_DIR)"),
            "{command}: {line}"
        );
        assert!(
            !data_dir.exists(),
            "{command} created {}",
            data_dir.display()
        );
    }
    // An existing log (even an empty one) is inspected as before.
    std::fs::create_dir_all(data_dir.join("spill")).expect("create the log directory");
    let output = run(&["spill", "inspect", "--data-dir", data_dir_arg], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("segments: 0"));
}
