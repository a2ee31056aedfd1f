//! Prometheus metrics. Names and labels are a contract with dashboards and alerts: extend, never
//! rename. Every label value is bounded (route and upstream names from the config, fixed outcome
//! and reason words, HTTP status codes), never a raw path or topic.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::LazyLock;

/// All of pollgate's metrics, registered once per process.
pub struct Metrics {
    pub registry: Registry,
    pub proxied_requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub websocket_active: IntGauge,
    pub websocket_total: IntCounter,
    pub upstream_errors: IntCounterVec,
    pub poll_requests: IntCounterVec,
    pub long_polls_held: IntGaugeVec,
    pub upstream_subscriptions: IntGaugeVec,
    pub upstream_messages: IntCounterVec,
    pub upstream_messages_dropped: IntCounterVec,
    pub topics_cached: IntGaugeVec,
    pub delivery_lag: HistogramVec,
    pub requests_saved: IntCounterVec,
    pub upstream_reconnects: IntCounterVec,
    pub upstream_connected: IntGaugeVec,
    pub rejected: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub fallback_requests: IntCounterVec,
    pub fallback_collapsed: IntCounterVec,
    pub shadow_comparisons: IntCounterVec,
    pub sse_streams_active: IntGaugeVec,
    pub sse_events: IntCounterVec,
    /// Set at each scrape from the ledger of answers due (`cache/due.rs`).
    pub fanout_answers_due: IntGauge,
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let m = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(SelfProcess::new()))
            .expect("process collector");
        let websocket_active = IntGauge::new(
            "pollgate_websocket_passthrough_active",
            "WebSocket tunnels currently relayed to upstreams",
        )
        .expect("valid metric");
        r.register(Box::new(websocket_active.clone()))
            .expect("unique metric");
        let websocket_total = IntCounter::new(
            "pollgate_websocket_passthrough_total",
            "WebSocket tunnels established through the gateway",
        )
        .expect("valid metric");
        r.register(Box::new(websocket_total.clone()))
            .expect("unique metric");
        let fanout_answers_due = IntGauge::new(
            "pollgate_fanout_answers_due",
            "Held polls woken by a publish and not yet answered (a fan-out in progress)",
        )
        .expect("valid metric");
        r.register(Box::new(fanout_answers_due.clone()))
            .expect("unique metric");
        Metrics {
            proxied_requests: counter_vec(
                &r,
                "pollgate_proxied_requests_total",
                "Requests answered by the gateway, by route and response status",
                &["route", "status"],
            ),
            request_duration: histogram_vec(
                &r,
                "pollgate_request_duration_seconds",
                "Time from request to completed response, by route and kind (poll, fallback, proxy, websocket, local, sse)",
                &["route", "kind"],
                LATENCY_BUCKETS.to_vec(),
            ),
            websocket_active,
            websocket_total,
            upstream_errors: counter_vec(
                &r,
                "pollgate_upstream_errors_total",
                "Failures talking to an upstream, by kind (connect_refused, connect_timeout, connect_error, read_timeout, write_timeout, protocol, subscribe, subscription_read, subscription_stalled, auth_request)",
                &["upstream", "kind"],
            ),
            poll_requests: counter_vec(
                &r,
                "pollgate_poll_requests_total",
                "Poll requests by outcome (hit, not_modified, held_served, held_timeout, fallback, rejected, denied)",
                &["route", "outcome"],
            ),
            long_polls_held: gauge_vec(
                &r,
                "pollgate_long_polls_held",
                "Polls currently held waiting for news",
                &["route"],
            ),
            upstream_subscriptions: gauge_vec(
                &r,
                "pollgate_upstream_subscriptions",
                "Topic subscriptions currently wanted from upstream",
                &["route"],
            ),
            upstream_messages: counter_vec(
                &r,
                "pollgate_upstream_messages_total",
                "Messages received from upstream subscriptions and cached",
                &["route"],
            ),
            upstream_messages_dropped: counter_vec(
                &r,
                "pollgate_upstream_messages_dropped_total",
                "Upstream messages not cached, by reason (oversize, no_topic, unknown_topic, bad_json, no_payload)",
                &["route", "reason"],
            ),
            topics_cached: gauge_vec(
                &r,
                "pollgate_topics_cached",
                "Topics currently held in the cache",
                &["route"],
            ),
            delivery_lag: histogram_vec(
                &r,
                "pollgate_delivery_lag_seconds",
                "Time from an upstream message's arrival to a held poll's response carrying it",
                &["route"],
                LATENCY_BUCKETS.to_vec(),
            ),
            requests_saved: counter_vec(
                &r,
                "pollgate_upstream_requests_saved_total",
                "Polls answered from cache without a request to the backend",
                &["route"],
            ),
            upstream_reconnects: counter_vec(
                &r,
                "pollgate_upstream_reconnects_total",
                "Upstream WebSocket subscription reconnect attempts",
                &["route"],
            ),
            upstream_connected: gauge_vec(
                &r,
                "pollgate_upstream_connected",
                "Upstream WebSocket subscription sockets currently connected",
                &["route"],
            ),
            rejected: counter_vec(
                &r,
                "pollgate_rejected_total",
                "Requests refused by a limit, by reason (max_connections, max_websockets, max_topics, max_held_polls, max_sse_streams)",
                &["route", "reason"],
            ),
            config_reloads: counter_vec(
                &r,
                "pollgate_config_reloads_total",
                "Configuration reloads by result",
                &["result"],
            ),
            fallback_requests: counter_vec(
                &r,
                "pollgate_fallback_requests_total",
                "Poll fallbacks that reached the backend (one per flight of collapsed polls)",
                &["route"],
            ),
            fallback_collapsed: counter_vec(
                &r,
                "pollgate_fallback_collapsed_total",
                "Poll fallbacks answered by another poll's backend request (collapsed)",
                &["route"],
            ),
            shadow_comparisons: counter_vec(
                &r,
                "pollgate_shadow_comparisons_total",
                "Shadow comparisons of the cache's answer with the backend's own, by result (match, mismatch, error)",
                &["route", "result"],
            ),
            sse_streams_active: gauge_vec(
                &r,
                "pollgate_sse_streams_active",
                "EventSource (Server-Sent Events) streams open now",
                &["route"],
            ),
            sse_events: counter_vec(
                &r,
                "pollgate_sse_events_total",
                "Events sent on EventSource streams: messages and gap events, not heartbeats",
                &["route"],
            ),
            fanout_answers_due,
            registry: r,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut buf);
        buf
    }
}

/// Process metrics (`pollgate_process_*`) of whatever process is running *now*: the pid is read
/// at each scrape, so they stay right after pingora forks into the background (`-d`).
#[cfg(target_os = "linux")]
struct SelfProcess {
    descs: Vec<prometheus::core::Desc>,
}

#[cfg(target_os = "linux")]
impl SelfProcess {
    fn new() -> SelfProcess {
        use prometheus::core::Collector;
        let template = prometheus::process_collector::ProcessCollector::new(
            std::process::id() as i32,
            "pollgate",
        );
        SelfProcess {
            descs: template.desc().into_iter().cloned().collect(),
        }
    }
}

#[cfg(target_os = "linux")]
impl prometheus::core::Collector for SelfProcess {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, "pollgate")
            .collect()
    }
}

/// Per-route handles resolved once, so the cache-hit path does no label hashing.
#[derive(Clone)]
pub struct RouteMetrics {
    pub hit: IntCounter,
    pub not_modified: IntCounter,
    pub held_served: IntCounter,
    pub held_timeout: IntCounter,
    pub fallback: IntCounter,
    pub rejected_polls: IntCounter,
    pub denied: IntCounter,
    pub saved: IntCounter,
    pub held: prometheus::IntGauge,
    pub subscriptions: prometheus::IntGauge,
    pub messages: IntCounter,
    pub topics: prometheus::IntGauge,
    pub connected: prometheus::IntGauge,
    pub reconnects: IntCounter,
    pub lag: prometheus::Histogram,
    pub poll_duration: prometheus::Histogram,
    pub ok_200: IntCounter,
    pub ok_304: IntCounter,
    pub sse_active: prometheus::IntGauge,
    pub sse_events: IntCounter,
}

impl RouteMetrics {
    pub fn new(route: &str) -> RouteMetrics {
        let m = &*METRICS;
        let outcome = |o: &str| m.poll_requests.with_label_values(&[route, o]);
        RouteMetrics {
            hit: outcome("hit"),
            not_modified: outcome("not_modified"),
            held_served: outcome("held_served"),
            held_timeout: outcome("held_timeout"),
            fallback: outcome("fallback"),
            rejected_polls: outcome("rejected"),
            denied: outcome("denied"),
            saved: m.requests_saved.with_label_values(&[route]),
            held: m.long_polls_held.with_label_values(&[route]),
            subscriptions: m.upstream_subscriptions.with_label_values(&[route]),
            messages: m.upstream_messages.with_label_values(&[route]),
            topics: m.topics_cached.with_label_values(&[route]),
            connected: m.upstream_connected.with_label_values(&[route]),
            reconnects: m.upstream_reconnects.with_label_values(&[route]),
            lag: m.delivery_lag.with_label_values(&[route]),
            poll_duration: m.request_duration.with_label_values(&[route, "poll"]),
            ok_200: m.proxied_requests.with_label_values(&[route, "200"]),
            ok_304: m.proxied_requests.with_label_values(&[route, "304"]),
            sse_active: m.sse_streams_active.with_label_values(&[route]),
            sse_events: m.sse_events.with_label_values(&[route]),
        }
    }
}
