//! The `switchyard` command: parse arguments, set up logging, load the config, run.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: measured on the handshake path (BENCHMARKS.md), where glibc
/// spent about a tenth of the gateway's CPU in malloc/free and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A reverse-proxy upgrade gateway for WebSockets.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or tracing filter directive (else RUST_LOG, else info).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file: print `ok`, or every error with file, line and key (exit 2).
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Zero-setup demo: the gateway in front of in-process echo.v1 and chat.v1 upstreams and a
    /// page to try them, on 127.0.0.1:8080 (ws), :8443 (wss, h2) and admin :9090.
    Demo {
        /// Plain listener (page over HTTP/1.1, ws://).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// TLS listener with the dev certificate (page over h2, wss://).
        #[arg(long, default_value = "127.0.0.1:8443")]
        https: SocketAddr,
        /// Admin listener (/healthz, /readyz, /metrics).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    /// Load generator for WebSocket proxies on this machine (loopback targets only): the echo
    /// upstream, handshakes, echo, bulk and idle modes behind BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        mode: switchyard::bench::BenchMode,
    },
    /// Write a dev CA and a server certificate signed by it.
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Names for the server certificate (repeatable); default localhost, 127.0.0.1, ::1.
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

/// Exit codes of SPEC §1.
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // The new process of a SIGUSR2 hand-over first re-executes itself, same pid, with
    // `LISTEN_PID` set; a no-op otherwise.
    if let Err(e) = switchyard::run::set_listen_pid() {
        eprintln!("switchyard: hand-over: cannot re-execute with LISTEN_PID set: {e}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("switchyard: --log-level: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match cli.command {
        Command::Check { config } => match switchyard::config::load(&config) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config } => match switchyard::config::load(&config) {
            // Inherited sockets are taken here, before the runtime's threads exist (the
            // LISTEN_* variables are unset); one that no listener names is exit 2 like a config
            // error.
            Ok(config) => match switchyard::run::Inherited::from_env(&config) {
                Ok(inherited) => serve(switchyard::run::run_with(config, inherited)),
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Demo { http, https, admin } => {
            serve(switchyard::demo::run(switchyard::demo::DemoAddrs {
                http,
                https,
                admin,
            }))
        }
        Command::Bench { mode } => match switchyard::bench::check(&mode) {
            Ok(()) => serve(switchyard::bench::run(mode)),
            Err(e) => {
                eprintln!("switchyard: bench: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        // An empty `names` means the default names (`certs::DEFAULT_NAMES`).
        Command::Certs { out, names } => match switchyard::certs::write_dev_certs(&out, &names) {
            Ok(()) => {
                println!(
                    "wrote ca.pem, ca-key.pem, server.pem, server-key.pem to {}",
                    out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
    }
}

/// Runs `main` on a multi-threaded runtime until it returns; failing to start or keep running is
/// exit code 1 with the reason on stderr (and in the log).
fn serve<E: std::fmt::Display>(main: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            eprintln!("switchyard: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// `--log-level` wins over `RUST_LOG`, which wins over `info`. JSON puts the event's fields at
/// the top level next to `timestamp`, `level`, `target` and `message` (SPEC §1). ANSI colours
/// only on a terminal: a file or pipe gets plain text, and the access log skips the escapes.
///
/// Lines are written straight to stderr from the thread that logs. A log thread
/// (tracing-appender's non-blocking writer) was measured and cost more CPU per handshake on two
/// cores than it saved: every line wakes that thread (futex, context switch) before its write.
fn init_logging(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| format!("{l:?}: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}
