//! `idle`: the server's memory per open, idle session, at growing session counts.
//!
//! A process here may hold at most 20,000 open files and each session is one descriptor, so the
//! sessions are held by `--clients` child processes of this tool (the hidden `idle-client`
//! subcommand), each over the `--source-ips` in turn. This process measures the server's RSS
//! before any session, then for each step tells the clients to open their share of the step's
//! total (each session sends one 103, then a 100 heartbeat every 20 s, as the real client does
//! between utterances), waits for the sessions to settle, measures, holds them while they
//! heartbeat, and measures again: (RSS after the hold − RSS before any session) / sessions open
//! is the step's KiB per session, and the largest step's is the result's `kib_per_session`.
//! Sessions the server closes during the run are counted as lost.
//!
//! Parent and client talk in lines: the parent writes `open N` to a client's stdin (`open 0`
//! asks for its counts only) and the client answers one JSON line on stdout ([`ClientReport`]).
//! A client exits when its stdin ends, so a parent that dies for any reason takes its clients
//! with it; a parent that returns early kills them (`kill_on_drop`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;

use super::clients::{Answer, Clients, check_fits, share, target_args};
use super::conn::{Conn, SharedPings};
use super::{
    Failures, Session, Target, open_sessions, print_result, raise_open_files_limit, round,
};
use crate::frames;
use crate::proc_stats::Process;

/// Most steps in one run (each step is two commands to every client).
const STEPS_MAX: usize = 64;
/// Most commands a client answers: two per step.
const CLIENT_COMMANDS_MAX: usize = 2 * STEPS_MAX;
/// Time a client has to answer `open 0` (its counts only).
const STATUS_WAIT: Duration = Duration::from_secs(10);
/// Time allowed beyond the connect timeouts for a client to answer `open N`.
const OPEN_WAIT_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Sessions open in total at each step, ascending
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "N,...",
        default_value = "1000,10000,18000"
    )]
    steps: Vec<usize>,
    /// Client processes holding the sessions, each an equal share (one descriptor per session,
    /// and a process may hold at most its open-files limit)
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Seconds to hold the sessions (heartbeating) between the second and third measurement of
    /// a step
    #[arg(long, default_value_t = 30, value_name = "S")]
    hold_s: u64,
    /// Seconds from a step's last 103 to its second measurement
    #[arg(long, default_value_t = 5, value_name = "S")]
    settle_s: u64,
    /// Sessions being opened at once, over all clients
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Seconds between a session's heartbeats (100)
    #[arg(long, default_value_t = 20, value_name = "S")]
    heartbeat_s: u64,
}

/// The hidden `idle-client` subcommand: one client process of `idle`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    #[command(flatten)]
    target: Target,
    /// Uids of this client's sessions are `<prefix>-<command>-<i>`
    #[arg(long, value_name = "PREFIX")]
    uid_prefix: String,
    /// Sessions being opened at once
    #[arg(long)]
    concurrency: usize,
    /// Seconds between a session's heartbeats (100)
    #[arg(long, value_name = "S")]
    heartbeat_s: u64,
}

/// What the holding tasks count.
#[derive(Default)]
struct HoldStats {
    heartbeats: AtomicU64,
    /// Server pings answered with a pong, and keepalive pings sent.
    pings: SharedPings,
    /// Sessions that ended (server close, reset or write error) while being held.
    lost: AtomicUsize,
}

/// A client's answer to `open N`.
#[derive(Debug, Default)]
struct ClientReport {
    /// Sessions this command opened.
    opened: usize,
    /// Sessions of this command that failed to open, by reason.
    failures: Failures,
    /// Sessions held now (every session opened so far, less the lost ones).
    open: usize,
    /// Sessions lost so far.
    lost: usize,
    /// Heartbeats sent so far.
    heartbeats: u64,
    /// Server pings answered so far, and keepalive pings sent.
    pongs: u64,
    pings: u64,
}

impl ClientReport {
    fn to_line(&self) -> String {
        json!({
            "opened": self.opened,
            "failures": self.failures.to_json(),
            "open": self.open,
            "lost": self.lost,
            "heartbeats": self.heartbeats,
            "pongs": self.pongs,
            "pings": self.pings,
        })
        .to_string()
    }

    fn parse(line: &str) -> Result<ClientReport, String> {
        let answer = Answer::parse(line)?;
        let count = |key: &str| answer.count(key);
        let mut failures = Failures::default();
        let reasons = answer.value["failures"]
            .as_object()
            .ok_or_else(|| answer.error("\"failures\" is not an object"))?;
        for (reason, times) in reasons {
            let times = times
                .as_u64()
                .ok_or_else(|| answer.error(&format!("failure count of {reason:?}")))?;
            failures.add_count(reason.clone(), times as usize);
        }
        Ok(ClientReport {
            opened: count("opened")? as usize,
            failures,
            open: count("open")? as usize,
            lost: count("lost")? as usize,
            heartbeats: count("heartbeats")?,
            pongs: count("pongs")?,
            pings: count("pings")?,
        })
    }
}

/// The sessions a command asks for: `open N`.
fn parse_command(line: &str) -> Result<usize, String> {
    line.strip_prefix("open ")
        .and_then(|count| count.parse().ok())
        .ok_or_else(|| format!("idle-client: expected \"open N\" on stdin, got {line:?}"))
}

/// Checks `--steps` and `--clients`, and that the largest share fits in a client's
/// `open_files_limit`.
fn check_steps(steps: &[usize], clients: usize, open_files_limit: u64) -> Result<(), String> {
    if clients == 0 {
        return Err("--clients must be at least 1".to_owned());
    }
    if steps.is_empty() || steps.len() > STEPS_MAX {
        return Err(format!("--steps takes 1 to {STEPS_MAX} session counts"));
    }
    if steps[0] == 0 || steps.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(format!(
            "--steps must be ascending session counts above 0, got {steps:?}"
        ));
    }
    check_fits(steps[steps.len() - 1], clients, open_files_limit)
}

/// Longest a client may take to open `count` sessions, `concurrency` at a time, each within
/// `connect_timeout_s`.
fn open_wait(count: usize, concurrency: usize, connect_timeout_s: u64) -> Duration {
    let rounds = count.div_ceil(concurrency.max(1)) as u64;
    Duration::from_secs(rounds * connect_timeout_s) + OPEN_WAIT_MARGIN
}

/// Starts `count` `idle-client`s, `concurrency` session openings at a time each.
fn spawn_clients(
    target: &Target,
    count: usize,
    concurrency: usize,
    heartbeat_s: u64,
) -> Result<Clients, String> {
    Clients::spawn(count, |index| {
        let mut args = vec!["idle-client".to_owned()];
        args.extend(target_args(target));
        args.extend(
            [
                "--uid-prefix",
                &format!("idle-{index}"),
                "--concurrency",
                &concurrency.to_string(),
                "--heartbeat-s",
                &heartbeat_s.to_string(),
            ]
            .map(str::to_owned),
        );
        args
    })
}

/// Sends `open counts[i]` to client `i`, then reads every client's answer within `wait`.
async fn open(
    clients: &mut Clients,
    counts: &[usize],
    wait: Duration,
) -> Result<Vec<ClientReport>, String> {
    clients
        .send(|index| format!("open {}", counts[index]))
        .await?;
    clients
        .answers(wait)
        .await?
        .iter()
        .enumerate()
        .map(|(index, line)| {
            ClientReport::parse(line).map_err(|e| format!("client process {index}: {e}"))
        })
        .collect()
}

/// The sums of the clients' answers.
#[derive(Debug, Default, PartialEq)]
struct Totals {
    opened: usize,
    open: usize,
    lost: usize,
    heartbeats: u64,
    pongs: u64,
    pings: u64,
}

fn totals(reports: &[ClientReport]) -> Totals {
    reports
        .iter()
        .fold(Totals::default(), |sum, report| Totals {
            opened: sum.opened + report.opened,
            open: sum.open + report.open,
            lost: sum.lost + report.lost,
            heartbeats: sum.heartbeats + report.heartbeats,
            pongs: sum.pongs + report.pongs,
            pings: sum.pings + report.pings,
        })
}

/// KiB of RSS growth from `from_kib` to `to_kib` per session.
fn kib_per(from_kib: u64, to_kib: u64, sessions: usize) -> f64 {
    (to_kib as f64 - from_kib as f64) / sessions as f64
}

pub async fn run(args: Args) -> Result<(), String> {
    let open_files_limit =
        raise_open_files_limit().map_err(|e| format!("open-files limit: {e}"))?;
    check_steps(&args.steps, args.clients, open_files_limit)?;
    let server = Process::new(args.target.pid);
    let per_client_concurrency = args.concurrency.div_ceil(args.clients).max(1);
    let rss_before_kib = server.rss_kib().map_err(|e| e.to_string())?;
    let mut clients = spawn_clients(
        &args.target,
        args.clients,
        per_client_concurrency,
        args.heartbeat_s,
    )?;
    eprintln!(
        "idle: {} client processes, {} sessions opened at a time each, source IPs {}; server RSS \
         {:.1} MiB before any session",
        args.clients,
        per_client_concurrency,
        if args.target.source_ips.is_empty() {
            "chosen by the kernel".to_owned()
        } else {
            format!("{:?}", args.target.source_ips)
        },
        rss_before_kib as f64 / 1024.0
    );

    let mut requested = vec![0; args.clients];
    let mut failures = Failures::default();
    let mut steps = Vec::with_capacity(args.steps.len());
    let mut human = Vec::with_capacity(args.steps.len());
    // (sessions, RSS after the hold) of the previous step: the base of the marginal figure.
    let mut previous = (0, rss_before_kib);
    let mut open_s_total = 0.0;
    // The largest step's figures: the result's headline.
    let mut last = (Totals::default(), rss_before_kib, rss_before_kib, 0.0);
    for &step in &args.steps {
        let shares: Vec<usize> = (0..args.clients)
            .map(|index| share(step, args.clients, index))
            .collect();
        let counts: Vec<usize> = shares.iter().zip(&requested).map(|(s, r)| s - r).collect();
        let wait = open_wait(
            counts.iter().copied().max().unwrap_or(0),
            per_client_concurrency,
            args.target.connect_timeout_s,
        );
        eprintln!(
            "idle: step {step}: opening {} more sessions to {}",
            counts.iter().sum::<usize>(),
            args.target.addr
        );
        let started = Instant::now();
        let reports = open(&mut clients, &counts, wait).await?;
        let open_s = started.elapsed().as_secs_f64();
        open_s_total += open_s;
        requested = shares;
        let opened = totals(&reports);
        let mut step_failures = Failures::default();
        for report in reports {
            step_failures.merge(report.failures);
        }
        eprintln!(
            "idle: step {step}: {} open, {} failed in {open_s:.1}s; settling {}s",
            opened.open,
            step_failures.total(),
            args.settle_s
        );
        tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
        let rss_settled_kib = server.rss_kib().map_err(|e| e.to_string())?;
        let cpu_before_s = server.cpu_s().map_err(|e| e.to_string())?;
        let hold_started = Instant::now();
        eprintln!("idle: step {step}: holding {}s", args.hold_s);
        tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
        let rss_after_kib = server.rss_kib().map_err(|e| e.to_string())?;
        let cpu_pct_hold = (server.cpu_s().map_err(|e| e.to_string())? - cpu_before_s)
            / hold_started.elapsed().as_secs_f64().max(1e-3)
            * 100.0;
        let held = totals(&open(&mut clients, &vec![0; args.clients], STATUS_WAIT).await?);
        if held.open == 0 {
            return Err(format!(
                "step {step}: no session open ({} failed to open: {}; {} lost)",
                step_failures.total(),
                step_failures.to_json(),
                held.lost
            ));
        }
        let kib_per_session = kib_per(rss_before_kib, rss_after_kib, held.open);
        let marginal = (held.open > previous.0)
            .then(|| kib_per(previous.1, rss_after_kib, held.open - previous.0));
        human.push(format!(
            "  {step:>6}: {} open ({} failed to open, {} lost so far); RSS {:.1} MiB settled, \
             {:.1} MiB after {}s = {kib_per_session:.2} KiB/session ({} KiB/session since the \
             previous step); server CPU {cpu_pct_hold:.1} % of a core while held",
            held.open,
            step_failures.total(),
            held.lost,
            rss_settled_kib as f64 / 1024.0,
            rss_after_kib as f64 / 1024.0,
            args.hold_s,
            marginal.map_or("n/a".to_owned(), |kib| format!("{kib:.2}")),
        ));
        steps.push(json!({
            "sessions_requested": step,
            "sessions": held.open,
            "opened": opened.opened,
            "failures": step_failures.total(),
            "failure_reasons": step_failures.to_json(),
            "sessions_lost": held.lost,
            "open_s": round(open_s, 2),
            "rss_settled_kib": rss_settled_kib,
            "rss_after_kib": rss_after_kib,
            "kib_per_session_settled": round(kib_per(rss_before_kib, rss_settled_kib, held.open), 2),
            "kib_per_session": round(kib_per_session, 2),
            "marginal_kib_per_session": marginal.map(|kib| round(kib, 2)),
            "server_cpu_pct_hold": round(cpu_pct_hold, 1),
            "heartbeats_sent": held.heartbeats,
            "server_pings_answered": held.pongs,
            "client_pings_sent": held.pings,
        }));
        failures.merge(step_failures);
        previous = (held.open, rss_after_kib);
        last = (held, rss_settled_kib, rss_after_kib, kib_per_session);
    }
    clients.shutdown().await?;

    let (held, rss_settled_kib, rss_after_kib, kib_per_session) = last;
    let largest = args.steps[args.steps.len() - 1];
    let human = format!(
        "idle: RSS {:.1} MiB before any session; {} client processes; per step:\n{}\n  \
         at {largest} sessions: {kib_per_session:.2} KiB/session (goal <= 2)",
        rss_before_kib as f64 / 1024.0,
        args.clients,
        human.join("\n"),
    );
    let source_ips: Vec<String> = args
        .target
        .source_ips
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    print_result(
        "idle",
        &args.target,
        json!({
            "sessions_requested": largest,
            "sessions": held.open,
            "failures": failures.total(),
            "failure_reasons": failures.to_json(),
            "sessions_lost": held.lost,
            "clients": args.clients,
            "source_ips": source_ips,
            "open_s": round(open_s_total, 2),
            "settle_s": args.settle_s,
            "hold_s": args.hold_s,
            "heartbeats_sent": held.heartbeats,
            "server_pings_answered": held.pongs,
            "client_pings_sent": held.pings,
            "rss_before_kib": rss_before_kib,
            "rss_settled_kib": rss_settled_kib,
            "rss_after_kib": rss_after_kib,
            "kib_per_session": round(kib_per_session, 2),
            "steps": steps,
        }),
        &human,
    )
}

/// One client process: opens sessions on command, holds them (heartbeating) and answers with
/// its counts, until its stdin ends.
pub async fn run_client(args: ClientArgs) -> Result<(), String> {
    let stats = Arc::new(HoldStats::default());
    let heartbeat: Arc<[u8]> =
        frames::binary_frame(&frames::message(frames::HEARTBEAT, &[])).into();
    let every = Duration::from_secs(args.heartbeat_s.max(1));
    let mut holders = JoinSet::new();
    let mut opened_total = 0;
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    let mut answers = tokio::io::stdout();
    for command in 0..CLIENT_COMMANDS_MAX {
        let Some(line) = commands
            .next_line()
            .await
            .map_err(|e| format!("idle-client: stdin: {e}"))?
        else {
            // The parent is done (or gone): the sessions close as the process exits.
            return Ok(());
        };
        let count = parse_command(&line)?;
        let mut report = ClientReport::default();
        if count > 0 {
            let prefix = format!("{}-{command}", args.uid_prefix);
            let opened = tokio::select! {
                opened = open_sessions(&args.target, &prefix, count, args.concurrency) => opened,
                // The parent writes nothing while it waits for the answer.
                _ = commands.next_line() => {
                    return Err("idle-client: stdin ended or spoke while opening".to_owned());
                }
            };
            report.opened = opened.sessions.len();
            opened_total += report.opened;
            report.failures = opened.failures;
            for session in opened.sessions {
                holders.spawn(hold(
                    session,
                    every,
                    Arc::clone(&heartbeat),
                    Arc::clone(&stats),
                ));
            }
        }
        report.lost = stats.lost.load(Ordering::Relaxed);
        report.open = opened_total - report.lost.min(opened_total);
        report.heartbeats = stats.heartbeats.load(Ordering::Relaxed);
        let pings = stats.pings.get();
        report.pongs = pings.answered;
        report.pings = pings.sent;
        let line = report.to_line() + "\n";
        let answered = async {
            answers.write_all(line.as_bytes()).await?;
            answers.flush().await
        };
        answered
            .await
            .map_err(|e| format!("idle-client: stdout: {e}"))?;
    }
    Err(format!(
        "idle-client: more than {CLIENT_COMMANDS_MAX} commands"
    ))
}

/// Keeps one session open: a heartbeat every `every` (the first one `every` after the 103),
/// pings answered and keepalive pings sent as the listen service does ([`Conn`]), until aborted
/// or lost. The server sends an idle session nothing else but a Close (idle timeout, drain), so
/// a message, a Close or the end of the stream ends it: counted as lost.
async fn hold(session: Session, every: Duration, heartbeat: Arc<[u8]>, stats: Arc<HoldStats>) {
    let mut next = session.opened_at + every;
    let mut conn = Conn::new(session.stream);
    let mut message = false;
    loop {
        let before = conn.pings();
        let waited = conn.wait_until(next, &mut |_| message = true).await;
        stats.pings.add(conn.pings().since(before));
        if waited.is_err() || message {
            break;
        }
        if conn.send(&heartbeat).await.is_err() {
            break;
        }
        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        next += every;
    }
    if message {
        // The session is lost either way; a failed close changes nothing.
        let _ = conn.close(Duration::from_secs(2), &mut |_| {}).await;
    }
    stats.lost.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_must_ascend_and_fit_the_open_files_limit() {
        check_steps(&[1000, 10_000, 18_000], 3, 20_000).unwrap();
        check_steps(&[18_000], 1, 20_000).unwrap();
        assert!(check_steps(&[], 3, 20_000).is_err());
        assert!(check_steps(&[0, 10], 1, 20_000).is_err());
        assert!(check_steps(&[10, 10], 1, 20_000).is_err());
        assert!(check_steps(&[10_000, 1000], 1, 20_000).is_err());
        assert!(check_steps(&[10], 0, 20_000).is_err());
        assert!(check_steps(&vec![1; STEPS_MAX + 1], 1, 20_000).is_err());
        let crowded = check_steps(&[1000, 30_000], 1, 20_000).unwrap_err();
        assert!(
            crowded.contains("raise --clients to at least 2"),
            "{crowded}"
        );
        let crowded = check_steps(&[18_000], 3, 1024).unwrap_err();
        assert!(crowded.contains("6000 per process"), "{crowded}");
        assert!(crowded.contains("at least 19"), "{crowded}");
    }

    #[test]
    fn commands_are_open_and_a_count() {
        assert_eq!(parse_command("open 6000"), Ok(6000));
        assert_eq!(parse_command("open 0"), Ok(0));
        for bad in ["open", "open -1", "open x", "close 3", ""] {
            let error = parse_command(bad).unwrap_err();
            assert!(error.contains("expected \"open N\""), "{error}");
        }
    }

    #[test]
    fn a_report_survives_its_line() {
        let mut failures = Failures::default();
        failures.add_count(
            "upgrade refused: HTTP/1.1 503 Service Unavailable".to_owned(),
            7,
        );
        failures.add("connect: refused".to_owned());
        let report = ClientReport {
            opened: 5993,
            failures,
            open: 5990,
            lost: 3,
            heartbeats: 12_000,
            pongs: 6_000,
            pings: 3_000,
        };
        let line = report.to_line();
        assert!(!line.contains('\n'));
        let parsed = ClientReport::parse(&line).unwrap();
        assert_eq!(parsed.opened, 5993);
        assert_eq!(parsed.open, 5990);
        assert_eq!(parsed.lost, 3);
        assert_eq!(parsed.heartbeats, 12_000);
        assert_eq!((parsed.pongs, parsed.pings), (6_000, 3_000));
        assert_eq!(parsed.failures.total(), 8);
        assert_eq!(parsed.failures.to_json(), report.failures.to_json());
        assert!(ClientReport::parse("not json").is_err());
        let missing = ClientReport::parse(r#"{"opened": 1, "failures": {}}"#).unwrap_err();
        assert!(missing.contains("\"open\""), "{missing}");
        let bad_failures = ClientReport::parse(
            r#"{"opened":1,"failures":{"x":"y"},"open":1,"lost":0,"heartbeats":0,"pongs":0,"pings":0}"#,
        )
        .unwrap_err();
        assert!(bad_failures.contains("failure count"), "{bad_failures}");
    }

    #[test]
    fn totals_sum_the_clients() {
        let report = |opened, open, lost, heartbeats| ClientReport {
            opened,
            open,
            lost,
            heartbeats,
            ..ClientReport::default()
        };
        assert_eq!(
            totals(&[report(10, 9, 1, 4), report(20, 20, 0, 6)]),
            Totals {
                opened: 30,
                open: 29,
                lost: 1,
                heartbeats: 10,
                ..Totals::default()
            }
        );
        assert_eq!(totals(&[]), Totals::default());
    }

    #[test]
    fn the_open_wait_covers_every_round_of_connect_timeouts() {
        assert_eq!(open_wait(0, 67, 10), OPEN_WAIT_MARGIN);
        assert_eq!(
            open_wait(6000, 67, 10),
            Duration::from_secs(90 * 10) + OPEN_WAIT_MARGIN
        );
        assert_eq!(
            open_wait(1, 0, 10),
            Duration::from_secs(10) + OPEN_WAIT_MARGIN
        );
    }

    #[test]
    fn kib_per_session_is_growth_over_sessions() {
        assert_eq!(kib_per(10_000, 24_000, 10_000), 1.4);
        assert_eq!(kib_per(10_000, 9_000, 1000), -1.0);
    }
}
