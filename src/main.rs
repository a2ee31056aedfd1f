//! The `pollgate` command: run the gateway, validate a config, or run the demo.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use pollgate::config::Config;
use pollgate::demo;
use pollgate::logging::{self, LogFormat};
use pollgate::server::{self, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// jemalloc rather than the system allocator: a held poll's allocations then cost 7.4 KiB of
/// RSS instead of 8.5, and a fan-out's answers spend about a fifth less user time (measured
/// side by side in docs/benchmarks.md, scenario 3).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "pollgate",
    version,
    about = "Answers legacy HTTP pollers from a cache fed by upstream WebSocket subscriptions"
)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(
        short = 'c',
        long = "conf",
        default_value = "/etc/pollgate/pollgate.yaml",
        global = true
    )]
    conf: PathBuf,
    /// Validate the configuration, print every problem, and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (pingora daemon mode).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Graceful upgrade: take over the listening sockets of the running instance via `upgrade_sock`.
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Log format.
    #[arg(long = "log-format", value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway in front of the built-in sample backend.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value = "127.0.0.1:9091")]
        metrics_listen: String,
        #[arg(long, default_value = "127.0.0.1:9000")]
        backend_listen: String,
    },
    /// Print the JSON Schema of the config file (also at docs/pollgate.schema.json).
    Schema,
    /// Run only the sample backend (for benchmarks and experiments).
    SampleBackend {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// Topics to publish a tick on every `--period-ms` (none: publish only on POST).
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        period_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Some(Command::Demo {
            listen,
            metrics_listen,
            backend_listen,
        }) => {
            let addrs = demo::DemoAddrs {
                listen,
                metrics_listen,
                backend_listen,
            };
            for (addr, flag) in [
                (&addrs.listen, "--listen"),
                (&addrs.metrics_listen, "--metrics-listen"),
            ] {
                match addr.parse::<std::net::SocketAddr>() {
                    Err(_) => {
                        eprintln!("pollgate demo: {flag} {addr}: not an ip:port address");
                        return ExitCode::from(2);
                    }
                    Ok(a) if a.port() != 0 && *addr == addrs.backend_listen => {
                        eprintln!(
                            "pollgate demo: {flag} and --backend-listen are both {addr}; give them different ports"
                        );
                        return ExitCode::from(2);
                    }
                    Ok(_) => {}
                }
            }
            let config = match demo::demo_config(&addrs) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pollgate demo: the addresses given make an invalid configuration:");
                    for p in e.problems() {
                        eprintln!("  {p}");
                    }
                    return ExitCode::from(2);
                }
            };
            let mut busy = Vec::new();
            if let Err(e) = demo::start_backend(
                &addrs.backend_listen,
                &["btc", "eth", "sol"],
                Duration::from_secs(1),
            ) {
                busy.push(demo::bind_failure(
                    &addrs.backend_listen,
                    "--backend-listen",
                    "the sample backend",
                    &e,
                ));
            }
            // pingora binds the gateway's and the admin listener only once the server runs, and
            // retries a busy port there for 30 s, then panics that service's thread while the
            // process lives on: so both are tried here first (after the backend, so that the
            // same address given twice is caught too), and every busy port is named at once
            // with the flag that moves it.
            for (addr, flag, what) in [
                (&addrs.listen, "--listen", "the gateway"),
                (
                    &addrs.metrics_listen,
                    "--metrics-listen",
                    "metrics and the status page",
                ),
            ] {
                if let Err(e) = std::net::TcpListener::bind(addr.as_str()) {
                    busy.push(demo::bind_failure(addr, flag, what, &e));
                }
            }
            if !busy.is_empty() {
                for b in busy {
                    eprintln!("{b}");
                }
                return ExitCode::from(1);
            }
            raise_open_file_limit(&config);
            eprintln!("{}", demo::banner(&addrs));
            run(config, RunOptions::default())
        }
        Some(Command::Schema) => {
            print!("{}", pollgate::config::json_schema());
            ExitCode::SUCCESS
        }
        Some(Command::SampleBackend {
            listen,
            topics,
            period_ms,
        }) => {
            let t: Vec<&str> = topics.iter().map(|s| s.as_str()).collect();
            match demo::start_backend(&listen, &t, Duration::from_millis(period_ms.max(1))) {
                // The bound address: with port 0, the one the kernel picked.
                Ok((_, bound)) => eprintln!("sample backend listening on {bound}"),
                Err(e) => {
                    eprintln!("cannot start the sample backend on {listen}: {e}");
                    return ExitCode::from(1);
                }
            }
            loop {
                std::thread::park();
            }
        }
        None => {
            // Absolute, because daemon mode changes directory and SIGHUP re-reads this path.
            let conf = std::path::absolute(&cli.conf).unwrap_or_else(|_| cli.conf.clone());
            let config = match Config::load(&conf) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: configuration is invalid:", cli.conf.display());
                    for p in e.problems() {
                        eprintln!("  {p}");
                    }
                    return ExitCode::from(2);
                }
            };
            if cli.test {
                println!("{}: configuration is valid", cli.conf.display());
                return ExitCode::SUCCESS;
            }
            raise_open_file_limit(&config);
            let opts = RunOptions {
                config_path: Some(conf),
                daemon: cli.daemon,
                upgrade: cli.upgrade,
            };
            run(config, opts)
        }
    }
}

fn run(config: Config, opts: RunOptions) -> ExitCode {
    match server::build(config, opts) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Every client connection, held poll and tunnel is a file descriptor (two for a tunnel): raise
/// the soft limit to the hard one, and say so when the caps could still exceed it.
fn raise_open_file_limit(config: &Config) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let wanted = (config.limits.max_connections + config.limits.max_websockets) as u64;
            if limit < wanted {
                tracing::warn!(
                    open_files = limit,
                    max_connections = config.limits.max_connections,
                    max_websockets = config.limits.max_websockets,
                    "the open-file limit is below what the connection caps allow; raise LimitNOFILE / ulimit -n or lower the caps"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}
