//! One scenario-3 run: a server started for it alone (pollgate with its sample backend, or
//! nginx with Nchan), the `longpoll` client with the client behaviour's arguments, then the
//! server stopped.

use super::env::Env;
use super::nginx;
use super::pollgate_config::{pollgate_config, pollgate_cursor_config};
use crate::procs::{self, Procs};
use serde_json::Value;
use std::time::Duration;

/// How the clients behave once answered (issue 13: users live with all of them).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Behaviour {
    /// Keep the connection open, idle, until every answer is in.
    KeepOpen,
    /// Close the connection as soon as the answer is in (a page or app that goes away).
    Depart,
    /// Poll again at once with the answer's validators, for every message (a legacy long-poll
    /// loop on the latest-value route; Nchan: its `If-Modified-Since` / `If-None-Match` loop).
    Repoll,
    /// Poll again at once from the answer's cursor (pollgate since mode, `?since=`; Nchan: its
    /// own message id, `?last_event_id=`).
    Cursor,
}

impl Behaviour {
    pub(super) const ALL: [Behaviour; 4] = [
        Behaviour::KeepOpen,
        Behaviour::Depart,
        Behaviour::Repoll,
        Behaviour::Cursor,
    ];

    /// The results.json key's suffix.
    pub(super) fn key(self) -> &'static str {
        match self {
            Behaviour::KeepOpen => "keep_open",
            Behaviour::Depart => "depart",
            Behaviour::Repoll => "repoll",
            Behaviour::Cursor => "cursor",
        }
    }

    /// How the rows and targets name it.
    pub(super) fn label(self, messages: u32, interval_ms: u64) -> String {
        match self {
            Behaviour::KeepOpen => "clients keep the connection open".into(),
            Behaviour::Depart => "clients depart".into(),
            Behaviour::Repoll => {
                format!("clients re-poll ({messages} messages {interval_ms} ms apart)")
            }
            Behaviour::Cursor => {
                format!("cursor clients re-poll ({messages} messages {interval_ms} ms apart)")
            }
        }
    }
}

/// One run's shape: who, where, how many and how they behave.
#[derive(Clone, Copy)]
pub(super) struct Run {
    /// 1: pinned to the server CPU with one thread or worker; 2: unpinned, two of them.
    pub(super) cores: usize,
    pub(super) topics: usize,
    pub(super) clients: usize,
    pub(super) behaviour: Behaviour,
}

/// A server started for one run, and where its clients poll and publish.
struct Started {
    who: &'static str,
    /// Everything started for it, stopped when the run ends.
    procs: Procs,
    target: String,
    path: &'static str,
    publish: String,
}

const LP_LIMIT: Duration = Duration::from_secs(240);

impl Run {
    /// The `longpoll` arguments for the behaviour, given the server's `contract` for re-polls.
    fn behaviour_args(&self, env: &Env, contract: &str) -> Vec<String> {
        let mut args = Vec::new();
        match self.behaviour {
            Behaviour::KeepOpen => {}
            Behaviour::Depart => args.push("--depart".to_string()),
            Behaviour::Repoll | Behaviour::Cursor => args.extend([
                "--repoll".to_string(),
                env.plan.lp_messages.to_string(),
                "--interval-ms".into(),
                env.plan.lp_interval_ms.to_string(),
                "--contract".into(),
                contract.into(),
            ]),
        }
        args
    }

    /// pollgate with its own sample backend, `threads: cores`.
    pub(super) fn pollgate(&self, env: &Env) -> Result<Value, String> {
        let mut p = Procs::new(&env.dir);
        let backend = env.start_backend(&mut p, &[], 3_600_000)?;
        let cursor = self.behaviour == Behaviour::Cursor;
        let config = if cursor {
            pollgate_cursor_config(&backend.addr, "60s")
        } else {
            pollgate_config(&backend.addr, Some("60s"))
        }
        .replace("threads: 1\n", &format!("threads: {}\n", self.cores));
        let gw = env.start_pollgate_on(&mut p, &config, placement(env, self.cores))?;
        let mut extra = vec![
            "--seed".to_string(),
            "--held-prometheus".into(),
            gw.admin.clone().unwrap_or_default(),
            "--pid".into(),
            gw.pid.to_string(),
        ];
        extra.extend(self.behaviour_args(env, if cursor { "cursor" } else { "etag" }));
        let path = if cursor {
            "/api/news/{topic}"
        } else {
            "/api/prices/{topic}"
        };
        let server = Started {
            who: "pollgate",
            procs: p,
            target: gw.addr.clone(),
            path,
            publish: backend.addr.clone(),
        };
        self.longpoll(env, server, &extra)
    }

    /// nginx with the Nchan module, `worker_processes cores`. Fresh channels, so the first poll
    /// needs no validators, except for cursor clients, which start from a seeded message's id.
    pub(super) fn nchan(&self, env: &Env) -> Result<Value, String> {
        let mut p = Procs::new(&env.dir);
        let ngx = env.start_nginx_on(
            &mut p,
            nginx::NCHAN_BLOCK,
            true,
            self.cores,
            placement(env, self.cores),
        )?;
        let cursor = self.behaviour == Behaviour::Cursor;
        let mut extra = vec![
            "--publish-path".to_string(),
            "/pub/{topic}".into(),
            "--held-nchan".into(),
            ngx.addr.clone(),
            if cursor { "--seed" } else { "--no-etag" }.into(),
        ];
        // Every worker's CPU (RSS is then read only with one worker: see `longpoll --pid`).
        let workers = match (ngx.worker, self.cores) {
            (Some(w), 1) => vec![w],
            _ => procs::children_of(ngx.pid),
        };
        for w in workers {
            extra.push("--pid".into());
            extra.push(w.to_string());
        }
        extra.extend(self.behaviour_args(env, if cursor { "nchan-id" } else { "nchan" }));
        let server = Started {
            who: "Nchan",
            procs: p,
            target: ngx.addr.clone(),
            path: "/sub/{topic}",
            publish: ngx.addr.clone(),
        };
        self.longpoll(env, server, &extra)
    }

    /// Runs the `longpoll` client against a started server with the server's own `extra`
    /// arguments, then stops every process the server was started with.
    fn longpoll(&self, env: &Env, server: Started, extra: &[String]) -> Result<Value, String> {
        let Started {
            who,
            procs: mut p,
            target,
            path,
            publish,
        } = server;
        let Run {
            cores,
            topics,
            clients,
            behaviour,
        } = *self;
        let mut args: Vec<String> = vec![
            "--target".into(),
            target,
            "--path-template".into(),
            path.into(),
            "--topics".into(),
            topics.to_string(),
            "--clients".into(),
            clients.to_string(),
            "--topic-prefix".into(),
            format!("lp{topics}x"),
            "--publish".into(),
            publish,
        ];
        args.extend_from_slice(extra);
        let v = env.client("longpoll", &args, LP_LIMIT);
        p.stop_all();
        let v = v?;
        eprintln!(
            "  {who} {clients} clients, {topics} topics, {cores} core(s), {}: delivered {} of {} p99 {} ms",
            behaviour.label(env.plan.lp_messages, env.plan.lp_interval_ms),
            v["delivered"],
            v["expected"],
            v["latency"]["p99_ms"]
        );
        Ok(v)
    }
}

/// The server CPU a run pins its server to: one core pinned, two cores unpinned.
fn placement(env: &Env, cores: usize) -> Option<&str> {
    if cores == 1 {
        env.server_cpu.as_deref()
    } else {
        None
    }
}
