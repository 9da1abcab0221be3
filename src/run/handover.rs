//! The SIGUSR2 binary hand-over (SPEC §11), both halves.
//!
//! The old process ([`start`]) runs the binary now at the path it was itself started from, with
//! the same arguments, every listening socket (`Listeners::sockets`) mapped to fds 3… and
//! `LISTEN_FDS` set, then waits, bounded by [`READY_TIMEOUT`], for the new one to report ready or
//! to exit ([`Pending::outcome`]).
//!
//! sd_listen_fds(3) wants `LISTEN_PID` = the new process's pid in its environment, which the
//! parent cannot know before the fork, and a `pre_exec` of ours would need `unsafe`. So the new
//! process first replaces itself (exec keeps the pid) with the same binary and `LISTEN_PID` set
//! ([`set_listen_pid`], the first thing `main` does); this needs no shell, which the container
//! image does not have.
//!
//! The ready report is one byte over a pipe that is the new process's stdin: stdin is the one
//! inherited descriptor that safe code can both write to and close (by putting `/dev/null` in
//! its place, [`report_ready`]). A pipe at any other number would stay open, unowned, for the
//! life of the new process and leak into the next hand-over's child. `SWITCHYARD_HANDOVER_FROM`
//! (the old pid) tells the new process that its stdin is that pipe.

use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::activation::FIRST_FD;
use super::listeners::BoundSocket;

/// How long the old process waits for the new one to report ready before it kills it and
/// carries on. Start-up is loading the config and certificates and opening upstream pools; a
/// new process that takes longer is stuck.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Set by the old process for the new one: the old process's pid; stdin is the ready pipe.
const FROM_VAR: &str = "SWITCHYARD_HANDOVER_FROM";

/// What the new process writes to the ready pipe once every listener accepts.
const READY_BYTE: u8 = b'1';

/// How long a new process that did not report ready in time may take to die once killed.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// How this process was started, recorded at start: on Linux [`std::env::current_exe`] reads
/// `/path (deleted)` once the binary was replaced, and a hand-over must run the replacement.
#[derive(Debug, Clone)]
pub(super) struct Program {
    exe: PathBuf,
    argv0: OsString,
    args: Vec<OsString>,
}

impl Program {
    /// This process's binary path and arguments; `None` (logged) when the path is unknown,
    /// which leaves SIGUSR2 without effect.
    pub(super) fn current() -> Option<Program> {
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_default();
        match std::env::current_exe() {
            Ok(exe) => Some(Program {
                exe,
                argv0,
                args: args.collect(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "the binary's path is unknown: SIGUSR2 cannot hand over");
                None
            }
        }
    }
}

/// Why a hand-over did not happen; the old process logs it and carries on.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("the binary's path is unknown")]
    NoProgram,
    #[error("cannot duplicate the listening sockets: {0}")]
    Sockets(io::Error),
    #[error("cannot start {exe}: {source}")]
    Spawn { exe: String, source: io::Error },
    #[error("the new process exited without reporting ready ({0})")]
    Exited(ExitStatus),
    #[error("no ready report from the new process within {0:?}: killed")]
    TimedOut(Duration),
    #[error("cannot wait for the new process: {0}")]
    Wait(io::Error),
    #[error("a drain began before the new process reported ready: killed")]
    Abandoned,
}

impl Failure {
    /// The `status` field of the `hand-over failed` event: the exit code when there is one
    /// (2: the new config is invalid), else what happened.
    pub(super) fn status(&self) -> String {
        match self {
            Failure::Exited(status) => status
                .code()
                .map_or_else(|| status.to_string(), |code| code.to_string()),
            Failure::NoProgram | Failure::Sockets(_) | Failure::Spawn { .. } => {
                "not started".to_string()
            }
            Failure::TimedOut(_) => "timed out".to_string(),
            Failure::Wait(_) => "unknown".to_string(),
            Failure::Abandoned => "abandoned".to_string(),
        }
    }
}

/// A new process started, not yet ready. Dropped unfinished (a drain began), it kills the new
/// process: two gateways must not outlive an abandoned hand-over.
#[derive(Debug)]
pub(super) struct Pending {
    pid: u32,
    /// `None` once the outcome is known: reaped, or left to run as the successor.
    child: Option<Child>,
    ready: pipe::Receiver,
    deadline: Instant,
}

/// Starts the new process with `sockets` as its fds 3…, and logs the `hand-over` event.
pub(super) fn start(
    program: Option<&Program>,
    sockets: Vec<BoundSocket>,
) -> Result<Pending, Failure> {
    let program = program.ok_or(Failure::NoProgram)?;
    let spawn_error = |source: io::Error| Failure::Spawn {
        exe: program.exe.display().to_string(),
        source,
    };
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| spawn_error(e.into()))?;
    let ready = pipe::Receiver::from_owned_fd(read).map_err(spawn_error)?;
    let count = sockets.len();
    let mappings = sockets
        .into_iter()
        .zip(FIRST_FD as RawFd..)
        .map(|(socket, child_fd)| {
            tracing::debug!(fd = child_fd, addr = %socket.addr, kind = socket.kind.as_str(), "passing a listening socket");
            FdMapping {
                parent_fd: socket.fd,
                child_fd,
            }
        })
        .collect();
    let mut command = Command::new(&program.exe);
    command
        .arg0(&program.argv0)
        .args(&program.args)
        // Ours were for this process; the new one gets its own (`set_listen_pid`). A
        // `WATCHDOG_PID` naming this process would stop the new one's watchdog pings.
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("WATCHDOG_PID")
        .env("LISTEN_FDS", count.to_string())
        .env(FROM_VAR, std::process::id().to_string())
        .stdin(Stdio::from(write));
    command
        .fd_mappings(mappings)
        .map_err(|e| spawn_error(io::Error::other(e)))?;
    let child = command.spawn().map_err(spawn_error)?;
    // Closes this process's copies of the pipe's write end (so that the read sees EOF once
    // the new process is gone) and of the socket duplicates.
    drop(command);
    let pid = child.id().unwrap_or_default();
    tracing::info!(
        event = "hand_over",
        old_pid = std::process::id(),
        new_pid = pid,
        sockets = count,
        "hand-over"
    );
    Ok(Pending {
        pid,
        child: Some(child),
        ready,
        deadline: Instant::now() + READY_TIMEOUT,
    })
}

impl Pending {
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the new process reported ready (`Ok`: it runs on as the successor), exited,
    /// or ran out of time (killed). Cancel safe: the `select!` of the run loop polls it among
    /// the signals, and calling it again resumes the wait.
    pub(super) async fn outcome(&mut self) -> Result<(), Failure> {
        let Some(child) = self.child.as_mut() else {
            return std::future::pending().await;
        };
        let mut byte = [0u8; 1];
        let result = tokio::select! {
            biased;
            read = self.ready.read(&mut byte) => match read {
                Ok(1) if byte[0] == READY_BYTE => Ok(()),
                // EOF: the new process is gone (or going) without a report; its status says why.
                _ => match tokio::time::timeout_at(self.deadline, child.wait()).await {
                    Ok(Ok(status)) => Err(Failure::Exited(status)),
                    Ok(Err(e)) => Err(Failure::Wait(e)),
                    Err(_) => Err(Failure::TimedOut(READY_TIMEOUT)),
                },
            },
            status = child.wait() => match status {
                Ok(status) => Err(Failure::Exited(status)),
                Err(e) => Err(Failure::Wait(e)),
            },
            () = tokio::time::sleep_until(self.deadline) => Err(Failure::TimedOut(READY_TIMEOUT)),
        };
        if let (Err(Failure::TimedOut(_)), Some(child)) = (&result, self.child.as_mut()) {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REAP_TIMEOUT, child.wait()).await;
        }
        // Ready: dropped without a kill, it runs on. Otherwise reaped above.
        self.child = None;
        result
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // tokio reaps a dropped child in the background.
            let _ = child.start_kill();
        }
    }
}

/// In the new process of a hand-over, before anything else (a single thread, nothing opened):
/// when the old process set `LISTEN_FDS` but (as it must) no `LISTEN_PID`, replaces this process
/// (same pid, same binary, same arguments and descriptors) with one whose environment has
/// `LISTEN_PID` = its pid. Returns `Ok` when there is nothing to do, and the error when the exec
/// failed.
pub fn set_listen_pid() -> io::Result<()> {
    let ours = std::env::var_os(FROM_VAR).is_some()
        && std::env::var_os("LISTEN_FDS").is_some()
        && std::env::var_os("LISTEN_PID").is_none();
    if !ours {
        return Ok(());
    }
    // The path the old process started, as the kernel resolved it. Not `/proc/self/exe`
    // itself: the process would be named `exe` (comm) in ps, pgrep and journal lines.
    let exe = std::env::current_exe()?;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    Err(std::process::Command::new(exe)
        .arg0(argv0)
        .args(args)
        .env("LISTEN_PID", std::process::id().to_string())
        .exec())
}

/// The old process's pid when this process is a hand-over's new one: `SWITCHYARD_HANDOVER_FROM`
/// is set and stdin is a pipe (the ready pipe).
pub(super) fn started_by() -> Option<u32> {
    let old_pid = std::env::var(FROM_VAR).ok()?.trim().parse().ok()?;
    let stdin = std::fs::metadata("/proc/self/fd/0").ok()?;
    stdin.file_type().is_fifo().then_some(old_pid)
}

/// Every listener accepts: tells the old process (one byte on the ready pipe), puts `/dev/null`
/// on stdin in the pipe's place, and logs the `hand-over` event. A report that cannot be sent
/// (the old process is gone) is logged; this process serves on regardless.
pub(super) fn report_ready(old_pid: u32) {
    let new_pid = std::process::id();
    match rustix::io::write(rustix::stdio::stdin(), &[READY_BYTE]) {
        Ok(1) => tracing::info!(event = "hand_over", old_pid, new_pid, "hand-over"),
        Ok(_) => tracing::warn!(old_pid, "ready report to the old process not written"),
        Err(e) => {
            tracing::warn!(old_pid, error = %e, "cannot report ready to the old process")
        }
    }
    let closed = std::fs::File::open("/dev/null")
        .and_then(|null| rustix::stdio::dup2_stdin(&null).map_err(io::Error::from));
    if let Err(e) = closed {
        tracing::warn!(error = %e, "the ready pipe stays open on stdin");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the new process: `sh -c script`.
    fn shell(script: &str) -> Program {
        Program {
            exe: "/bin/sh".into(),
            argv0: "sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    /// Whether `pid` runs (exists and is no zombie).
    fn running(pid: u32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        !matches!(state, None | Some("Z" | "X"))
    }

    /// Whether `pid` stops running within 5 s of real time (the tokio clock may be paused).
    fn dies(pid: u32) -> bool {
        for _ in 0..500 {
            if !running(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[tokio::test]
    async fn one_byte_on_stdin_is_the_ready_report() {
        let program = shell("printf 1 >&0; exec sleep 600");
        let mut pending = start(Some(&program), Vec::new()).unwrap();
        let pid = pending.pid();
        let outcome = tokio::time::timeout(Duration::from_secs(5), pending.outcome()).await;
        assert!(matches!(outcome, Ok(Ok(()))), "{outcome:?}");
        drop(pending);
        // The successor runs on after its report, also once the `Pending` is gone.
        std::thread::sleep(Duration::from_millis(100));
        assert!(running(pid), "the ready new process was killed");
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }

    #[tokio::test]
    async fn an_exit_before_the_report_is_a_failure_with_its_status() {
        let mut pending = start(Some(&shell("exit 2")), Vec::new()).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), pending.outcome()).await;
        match outcome {
            Ok(Err(failure @ Failure::Exited(_))) => assert_eq!(failure.status(), "2"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_process_that_never_reports_is_killed_at_the_deadline() {
        let mut pending = start(Some(&shell("exec sleep 600")), Vec::new()).unwrap();
        let pid = pending.pid();
        let before = Instant::now();
        let outcome = pending.outcome().await;
        assert!(matches!(outcome, Err(Failure::TimedOut(_))), "{outcome:?}");
        assert!(before.elapsed() >= READY_TIMEOUT);
        assert!(dies(pid), "the new process {pid} was not killed");
    }

    #[tokio::test]
    async fn an_abandoned_hand_over_kills_the_new_process() {
        let pending = start(Some(&shell("exec sleep 600")), Vec::new()).unwrap();
        let pid = pending.pid();
        drop(pending);
        assert!(dies(pid), "the new process {pid} outlived its `Pending`");
    }

    #[test]
    fn the_failed_event_status_is_the_exit_code_when_there_is_one() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(Failure::Exited(ExitStatus::from_raw(2 << 8)).status(), "2");
        assert_eq!(
            Failure::Exited(ExitStatus::from_raw(9)).status(),
            "signal: 9 (SIGKILL)"
        );
        assert_eq!(Failure::TimedOut(READY_TIMEOUT).status(), "timed out");
    }
}
