//! `pollgate-bench`: the benchmark harness behind `bench/run`.
//!
//! - `run [--quick|--smoke]`: the orchestrator. Starts every contender on loopback on free
//!   ports (pollgate, a bare pingora server, nginx, Nchan, the sample backend), runs each scenario
//!   against each of them in the same run, stops everything it started, and writes
//!   `bench/results/results.{md,json}`.
//! - `bare-pingora`: the baseline: a pingora `ProxyHttp` whose `request_filter` answers a fixed
//!   body, nothing else.
//! - `longpoll`, `h2-polls`, `sse-fanout`, `ws-echo`, `http-load`: load clients; each prints one JSON object on stdout.
//!
//! Every load loop is bounded in count and in time.

#![forbid(unsafe_code)]

mod bare;
mod client;
mod h2_polls;
mod load;
mod longpoll;
mod pairs;
mod poll_contract;
mod procs;
mod report;
mod run;
mod sse_fanout;
mod stats;
mod usage;
mod wsecho;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "pollgate-bench",
    about = "Benchmarks pollgate side by side with nginx, Nchan and bare pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the benchmark scenarios and write the results.
    Run(run::RunArgs),
    /// A bare pingora server answering a fixed body from `request_filter` (the baseline).
    BarePingora(bare::BareArgs),
    /// Hold many long polls, publish one message per topic (or several, re-polled: `--repoll`),
    /// and time each delivery.
    Longpoll(longpoll::LongpollArgs),
    /// Open many EventSource streams on one topic, publish one message, and time each
    /// stream's event.
    SseFanout(sse_fanout::SseFanoutArgs),
    /// Hold many polls over HTTP/2 on TLS (many streams per connection), publish one message,
    /// and time each answer.
    H2Polls(h2_polls::H2PollsArgs),
    /// WebSocket echo round trips.
    WsEcho(wsecho::WsEchoArgs),
    /// HTTP/1.1 keep-alive load: closed loop, or paced at a rate per client.
    HttpLoad(load::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => run::main(a),
        Command::BarePingora(a) => bare::main(a),
        Command::Longpoll(a) => client::print_result(longpoll::main(a)),
        Command::SseFanout(a) => client::print_result(sse_fanout::main(a)),
        Command::H2Polls(a) => client::print_result(h2_polls::main(a)),
        Command::WsEcho(a) => client::print_result(wsecho::main(a)),
        Command::HttpLoad(a) => client::print_result(load::main(a)),
    }
}
