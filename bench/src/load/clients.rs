//! Client processes of a scenario that holds more sessions than one process may (a session is
//! one descriptor, and a process may hold at most its open-files limit): `idle` and `storm` start
//! children of this executable (a hidden subcommand each) and talk to them in lines, a command
//! on a child's stdin and one answer line on its stdout. A child exits when its stdin ends, so
//! children end with the tool however it ends; one dropped early is killed (`kill_on_drop`).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::Target;

/// Descriptors a client process needs besides its sessions (stdio, the runtime, the binary).
pub const CLIENT_FD_RESERVE: u64 = 64;
/// Time the clients have to close their sessions and exit once their stdin ends.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// Client `index`'s share of `total` sessions over `clients`: equal shares, the first
/// `total % clients` one more. A client's share never shrinks as `total` grows.
pub fn share(total: usize, clients: usize, index: usize) -> usize {
    total / clients + usize::from(index < total % clients)
}

/// Index of client `index`'s first session when `total` sessions are shared out: the sum of the
/// shares before it.
pub fn first_of(total: usize, clients: usize, index: usize) -> usize {
    (0..index).map(|i| share(total, clients, i)).sum()
}

/// Checks that `total` sessions over `clients` processes fit each one's `open_files_limit`
/// (less [`CLIENT_FD_RESERVE`]); the error says how many clients would do.
pub fn check_fits(total: usize, clients: usize, open_files_limit: u64) -> Result<(), String> {
    if clients == 0 {
        return Err("--clients must be at least 1".to_owned());
    }
    let per_client = share(total, clients, 0) as u64;
    let room = open_files_limit.saturating_sub(CLIENT_FD_RESERVE);
    if per_client > room {
        return Err(format!(
            "{total} sessions over --clients {clients} is {per_client} per process, \
             but a process may hold {open_files_limit} open files ({CLIENT_FD_RESERVE} kept for \
             other uses): raise --clients to at least {}",
            (total as u64).div_ceil(room.max(1))
        ));
    }
    Ok(())
}

/// The options of `target` a client process needs to reach and name the server: its address,
/// pid, sample rate, connect timeout and source IPs (the result file and labels stay with the
/// parent).
pub fn target_args(target: &Target) -> Vec<String> {
    let mut args: Vec<String> = [
        "--target".to_owned(),
        target.addr.to_string(),
        "--pid".to_owned(),
        target.pid.to_string(),
        "--sample-rate".to_owned(),
        target.sample_rate.to_string(),
        "--connect-timeout-s".to_owned(),
        target.connect_timeout_s.to_string(),
    ]
    .into();
    if !target.source_ips.is_empty() {
        let ips: Vec<String> = target.source_ips.iter().map(|ip| ip.to_string()).collect();
        args.extend(["--source-ips".to_owned(), ips.join(",")]);
    }
    args
}

/// A client process's answer line as JSON; every error names the line.
pub struct Answer<'a> {
    line: &'a str,
    pub value: serde_json::Value,
}

impl<'a> Answer<'a> {
    pub fn parse(line: &'a str) -> Result<Answer<'a>, String> {
        let value = serde_json::from_str(line).map_err(|e| format!("answer {line:?}: {e}"))?;
        Ok(Answer { line, value })
    }

    /// The count at `key`.
    pub fn count(&self, key: &str) -> Result<u64, String> {
        self.value[key]
            .as_u64()
            .ok_or_else(|| self.error(&format!("no count \"{key}\"")))
    }

    /// An error about this answer.
    pub fn error(&self, what: &str) -> String {
        format!("answer {:?}: {what}", self.line)
    }
}

/// One client process and its command pipes.
struct Client {
    index: usize,
    process: Child,
    commands: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
}

/// The client processes of a run.
pub struct Clients {
    clients: Vec<Client>,
}

impl Clients {
    /// Starts `count` processes of this executable, client `i` with the arguments `args(i)`
    /// (a subcommand first). Each is killed when dropped.
    pub fn spawn(count: usize, args: impl Fn(usize) -> Vec<String>) -> Result<Clients, String> {
        let exe = std::env::current_exe().map_err(|e| format!("this executable's path: {e}"))?;
        let mut clients = Vec::with_capacity(count);
        for index in 0..count {
            let mut command = Command::new(&exe);
            command
                .args(args(index))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut process = command
                .spawn()
                .map_err(|e| format!("starting client process {index} ({}): {e}", exe.display()))?;
            let (Some(commands), Some(answers)) = (process.stdin.take(), process.stdout.take())
            else {
                return Err(format!("client process {index}: no stdin or stdout pipe"));
            };
            clients.push(Client {
                index,
                process,
                commands,
                answers: BufReader::new(answers).lines(),
            });
        }
        Ok(Clients { clients })
    }

    /// Writes the line `command(i)` (a newline is added) to client `i`'s stdin, to every client
    /// in turn.
    pub async fn send(&mut self, command: impl Fn(usize) -> String) -> Result<(), String> {
        for client in &mut self.clients {
            let line = command(client.index) + "\n";
            let sent = async {
                client.commands.write_all(line.as_bytes()).await?;
                client.commands.flush().await
            };
            sent.await
                .map_err(|e| format!("client process {}: command: {e}", client.index))?;
        }
        Ok(())
    }

    /// Reads one answer line from every client, all within `wait`.
    pub async fn answers(&mut self, wait: Duration) -> Result<Vec<String>, String> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut answers = Vec::with_capacity(self.clients.len());
        for client in &mut self.clients {
            let line = tokio::time::timeout_at(deadline, client.answers.next_line())
                .await
                .map_err(|_| {
                    format!(
                        "client process {}: no answer within {}s",
                        client.index,
                        wait.as_secs()
                    )
                })?
                .map_err(|e| format!("client process {}: answer: {e}", client.index))?
                .ok_or_else(|| {
                    format!(
                        "client process {} exited (its messages are above)",
                        client.index
                    )
                })?;
            answers.push(line);
        }
        Ok(answers)
    }

    /// Ends every client's stdin (each then closes its sessions and exits), waits for them
    /// within [`EXIT_WAIT`], and kills those still running.
    pub async fn shutdown(self) -> Result<(), String> {
        let mut processes = Vec::with_capacity(self.clients.len());
        for client in self.clients {
            drop(client.commands);
            processes.push((client.index, client.process));
        }
        let deadline = tokio::time::Instant::now() + EXIT_WAIT;
        let mut problems = Vec::new();
        for (index, mut process) in processes {
            match tokio::time::timeout_at(deadline, process.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => problems.push(format!("client process {index}: {status}")),
                Ok(Err(e)) => problems.push(format!("client process {index}: wait: {e}")),
                Err(_) => {
                    // Kills and reaps it; an error means it exited meanwhile.
                    let _ = process.kill().await;
                    problems.push(format!(
                        "client process {index}: killed, still running {}s after its stdin ended",
                        EXIT_WAIT.as_secs()
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_equal_and_never_shrink() {
        assert_eq!(
            (0..3).map(|i| share(18_000, 3, i)).collect::<Vec<_>>(),
            [6000; 3]
        );
        assert_eq!(
            (0..3).map(|i| share(1000, 3, i)).collect::<Vec<_>>(),
            [334, 333, 333]
        );
        assert_eq!((0..4).map(|i| share(2, 4, i)).sum::<usize>(), 2);
        for clients in 1..6 {
            for total in 0..50 {
                let sum: usize = (0..clients).map(|i| share(total, clients, i)).sum();
                assert_eq!(sum, total);
                for i in 0..clients {
                    assert!(share(total + 1, clients, i) >= share(total, clients, i));
                }
            }
        }
    }

    #[test]
    fn first_indices_follow_the_shares_without_gaps() {
        assert_eq!(
            (0..4).map(|i| first_of(10, 4, i)).collect::<Vec<_>>(),
            [0, 3, 6, 8]
        );
        for clients in 1..6 {
            for total in 0..30 {
                let last = clients - 1;
                assert_eq!(
                    first_of(total, clients, last) + share(total, clients, last),
                    total
                );
            }
        }
    }

    #[derive(clap::Parser)]
    struct TargetCli {
        #[command(flatten)]
        target: Target,
    }

    fn parse(args: &[String]) -> Target {
        <TargetCli as clap::Parser>::try_parse_from(
            std::iter::once("pusher-bench").chain(args.iter().map(String::as_str)),
        )
        .unwrap()
        .target
    }

    #[test]
    fn a_client_gets_the_target_as_the_parent_parsed_it() {
        let parent = parse(
            &[
                "--target",
                "ws://127.0.0.1:18765",
                "--pid",
                "42",
                "--sample-rate",
                "8000",
                "--connect-timeout-s",
                "3",
                "--source-ips",
                "127.0.0.2,127.0.0.3",
                "--label",
                "commit=abc",
                "--result-file",
                "/tmp/x.json",
            ]
            .map(str::to_owned),
        );
        let client = parse(&target_args(&parent));
        assert_eq!(client.addr, parent.addr);
        assert_eq!(client.pid, 42);
        assert_eq!(client.sample_rate, 8000);
        assert_eq!(client.connect_timeout_s, 3);
        assert_eq!(client.source_ips, parent.source_ips);
        assert!(client.labels.is_empty(), "labels stay with the parent");
        assert!(client.result_file.is_none(), "so does the result file");
        let no_ips = parse(&["--target", "127.0.0.1:1", "--pid", "1"].map(str::to_owned));
        assert!(!target_args(&no_ips).contains(&"--source-ips".to_owned()));
    }

    #[test]
    fn sessions_must_fit_each_clients_open_files_limit() {
        check_fits(18_000, 3, 20_000).unwrap();
        check_fits(10_000, 1, 20_000).unwrap();
        assert!(check_fits(10, 0, 20_000).is_err());
        let crowded = check_fits(30_000, 1, 20_000).unwrap_err();
        assert!(
            crowded.contains("raise --clients to at least 2"),
            "{crowded}"
        );
        let crowded = check_fits(18_000, 3, 1024).unwrap_err();
        assert!(crowded.contains("6000 per process"), "{crowded}");
        assert!(crowded.contains("at least 19"), "{crowded}");
    }
}
