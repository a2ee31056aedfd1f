//! How long and how big each run is, per mode (full, quick, smoke).

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Smoke,
    Quick,
    Full,
}

pub(super) struct Plan {
    /// Measured seconds per HTTP load run, and the warm-up before it.
    pub(super) http_s: f64,
    /// Interleaved repetitions of each HTTP load run: each contender's best run is tabled, and
    /// throughput targets take the median of the rounds' paired ratios.
    pub(super) rounds: usize,
    pub(super) warmup_s: f64,
    pub(super) conns: usize,
    pub(super) lp_clients: usize,
    pub(super) lp_topic_variants: Vec<usize>,
    /// Scenario 3's client behaviours (keep open, depart, re-poll, cursor re-poll), 1 topic:
    /// clients per run, and messages per re-poll run and their spacing.
    pub(super) lp_behaviour_clients: usize,
    pub(super) lp_messages: u32,
    pub(super) lp_interval_ms: u64,
    /// Interleaved rounds of each behaviour run (pollgate, Nchan, pollgate, ...): its target
    /// takes the median of the rounds' p99 ratios, as one run on shared cores swings by 20 % and
    /// more (four hand-run pairs of the same departing-client run on one core gave 0.77 to
    /// 1.27), so the full mode runs five. Scenario 7's fan-outs (7b, 7c) use it too.
    pub(super) lp_rounds: usize,
    /// Scenario 3's parts: the big fan-out, the behaviours by `Behaviour::key` (all of them
    /// unless `run --behaviours` names some), the placements in cores (2, then 1).
    pub(super) lp_fan_out: bool,
    pub(super) lp_behaviours: Vec<String>,
    pub(super) lp_cores: Vec<usize>,
    pub(super) s4_clients: usize,
    pub(super) s4_topics: usize,
    pub(super) s4_rate: f64,
    pub(super) s4_s: f64,
    pub(super) ws_clients: usize,
    /// Seconds of each echo run, per contender and round.
    pub(super) ws_s: f64,
    /// New tunnels opened per contender and round, one at a time (first-message latency).
    pub(super) ws_fresh: usize,
}

impl Plan {
    pub(super) fn for_mode(m: Mode) -> Plan {
        match m {
            Mode::Full => Plan {
                http_s: 10.0,
                rounds: 5,
                warmup_s: 2.0,
                conns: 50,
                lp_clients: 10_000,
                lp_topic_variants: vec![100, 1],
                lp_behaviour_clients: 5_000,
                lp_messages: 8,
                lp_interval_ms: 400,
                lp_rounds: 5,
                lp_fan_out: true,
                lp_behaviours: Vec::new(),
                lp_cores: vec![2, 1],
                s4_clients: 1000,
                s4_topics: 10,
                s4_rate: 2.0,
                s4_s: 30.0,
                ws_clients: 20,
                ws_s: 4.0,
                ws_fresh: 2000,
            },
            Mode::Quick => Plan {
                http_s: 3.0,
                rounds: 2,
                warmup_s: 1.0,
                conns: 50,
                lp_clients: 10_000,
                lp_topic_variants: vec![100, 1],
                lp_behaviour_clients: 5_000,
                lp_messages: 4,
                lp_interval_ms: 400,
                lp_rounds: 2,
                lp_fan_out: true,
                lp_behaviours: Vec::new(),
                lp_cores: vec![2, 1],
                s4_clients: 1000,
                s4_topics: 10,
                s4_rate: 2.0,
                s4_s: 8.0,
                ws_clients: 20,
                ws_s: 3.0,
                ws_fresh: 1000,
            },
            Mode::Smoke => Plan {
                http_s: 2.0,
                rounds: 1,
                warmup_s: 0.0,
                conns: 20,
                lp_clients: 200,
                lp_topic_variants: vec![4],
                lp_behaviour_clients: 20,
                lp_messages: 2,
                lp_interval_ms: 200,
                lp_rounds: 1,
                lp_fan_out: true,
                lp_behaviours: Vec::new(),
                lp_cores: vec![2, 1],
                s4_clients: 0,
                s4_topics: 0,
                s4_rate: 0.0,
                s4_s: 0.0,
                ws_clients: 0,
                ws_s: 0.0,
                ws_fresh: 0,
            },
        }
    }
}
