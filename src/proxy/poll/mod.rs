//! The poll core: every poll, whichever path read it, is decided here (hit, `304`, hold until
//! news, cursor array, fallback to the backend, refusal) and comes out as one [`Answer`] that
//! the path only writes. See `docs/polling.md` for the semantics.
//!
//! A held poll waits here too. The path brings the one thing that differs, a future that
//! finishes when its client hangs up (`client_gone`), and it is polled only while holding.
//! An EventSource request gets a stream instead (`stream.rs`, events in `event.rs`), opened
//! here after the same checks, and driven by the path until it ends.

pub mod event;
pub mod input;
pub mod park;
pub mod stream;
pub mod view;

pub use super::request::HeaderSource;
pub use input::{cursor_of, etag_matches, hold_for, PollRequest};
pub use park::{client_read, Client, Socket};
pub use stream::{EventStream, Step, WRITE_LIMIT};
use view::since_body;

use super::access::{AccessCache, Asker, Decision};
use super::answer::{name, Answer, Which};
use super::cors::{self, OriginCheck};
use super::fallback::{self, Flights};
use super::shadow::{self, ShadowLog};
use super::upstream::UpstreamClient;
use crate::cache::{CacheError, CursorArg, HoldGuard, Message, Since, SubState, Topic};
use crate::config::{Access, Mode, PollRoute};
use crate::metrics::METRICS;
use crate::subscription::Hub;
use http::HeaderValue;
use park::{ParkedConn, Recipe, Reclaimed, Wants};
use pingora_core::protocols::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::futures::Notified;
use tokio::time::sleep_until;

/// How a poll ended.
#[derive(Debug)]
pub enum Outcome {
    /// Answered by the gateway (from the cache, or a refusal).
    Answer(Answer),
    /// Not answerable from the cache (cold, or stale past `max_stale`): answered from the
    /// backend, by a fallback request shared with concurrent polls (`fallback.rs`).
    Relayed(Answer),
    /// The client hung up while held; nothing to answer (logged as 499).
    Gone,
    /// The route serves from the backend (`shadow.serve: backend`): proxy this request
    /// unchanged. The topic is subscribed all the same, so the cache can be compared.
    Forward,
    /// An EventSource stream: the path writes its head and opening, then each step until
    /// it ends (boxed: a poll's future carries no stream's state).
    Stream(Box<EventStream>),
}

/// A poll route's parts besides its hub.
pub struct RouteParts<'a> {
    pub hub: &'a Arc<Hub>,
    pub access: &'a AccessCache,
    pub flights: &'a Flights,
    pub shadow: &'a Arc<ShadowLog>,
    pub client: &'a Arc<UpstreamClient>,
}

/// Why a poll request is refused before the cache is consulted.
#[derive(Debug, thiserror::Error)]
pub enum BadPoll {
    #[error("{0}")]
    Topic(#[from] crate::topic::TopicError),
    #[error("poll requests must not have a body")]
    Body,
    #[error("cursor `{0}` is not a valid cursor")]
    Cursor(String),
    #[error("bad `Prefer: wait`: {0}")]
    Prefer(String),
    #[error("If-None-Match is not visible ASCII")]
    IfNoneMatch,
}

/// What a poll asked for, parsed and checked.
struct Ask {
    topic: String,
    if_none_match: Option<String>,
    cursor: Option<CursorArg>,
    /// How long this poll may be held, already capped by the route.
    wait: Duration,
    prefer_applied: Option<u64>,
}

/// `streaming`: an EventSource request, whose place is read by `stream.rs`; only what every
/// request must pass is checked for it here.
fn ask<H: HeaderSource + ?Sized>(
    req: &PollRequest<'_, H>,
    poll: &PollRoute,
    streaming: bool,
) -> Result<Ask, BadPoll> {
    if req.has_body {
        return Err(BadPoll::Body);
    }
    // Before anything else: a refused topic never reaches a subscription, a fallback or an
    // auth request.
    let topic = crate::topic::decode(req.raw_topic)?.into_owned();
    if streaming {
        return Ok(Ask {
            topic,
            if_none_match: None,
            cursor: None,
            wait: Duration::ZERO,
            prefer_applied: None,
        });
    }
    let if_none_match = req.if_none_match()?;
    let cursor = match poll.mode {
        Mode::Since => cursor_of(req.query, if_none_match.as_deref(), poll)?,
        Mode::Latest => None,
    };
    let (wait, prefer_applied) = hold_for(req, if_none_match.is_some(), poll)?;
    Ok(Ask {
        topic,
        if_none_match,
        cursor,
        wait,
        prefer_applied,
    })
}

/// Answers one poll on `route`; `client` is what reads its client while it is held.
pub async fn serve<H, G>(
    route: RouteParts<'_>,
    req: &PollRequest<'_, H>,
    client: Client<'_, G>,
) -> Outcome
where
    H: HeaderSource + ?Sized,
    G: Future + Unpin,
{
    let hub = route.hub;
    // An origin that may not read the route is refused before the cache is touched.
    let origin = req.cors.map(|c| (c, cors::check_request(c, req.headers)));
    if let Some((c, OriginCheck::Refused)) = &origin {
        return Outcome::Answer(cors::refused(c));
    }
    let mut outcome = decide(&route, req, client).await;
    match &mut outcome {
        Outcome::Answer(a) if a.written.is_none() => {
            let origin = origin.as_ref().map(|(c, check)| (*c, check));
            dress(a, &hub.poll().response_headers, origin);
        }
        Outcome::Answer(_) => {}
        Outcome::Relayed(a) => {
            if let Some((c, check)) = &origin {
                a.relayed
                    .retain(|(n, _)| !n.to_ascii_lowercase().starts_with("access-control-"));
                cors::decorate(a, c, check);
            }
        }
        Outcome::Stream(s) => {
            s.head.route_headers = Some(hub.poll().response_headers.clone());
            if let Some((c, check)) = &origin {
                cors::decorate(&mut s.head, c, check);
            }
        }
        Outcome::Gone | Outcome::Forward => {}
    }
    outcome
}

async fn decide<H, G>(
    route: &RouteParts<'_>,
    req: &PollRequest<'_, H>,
    client: Client<'_, G>,
) -> Outcome
where
    H: HeaderSource + ?Sized,
    G: Future + Unpin,
{
    let (hub, access, upstream_client) = (route.hub, route.access, route.client);
    let poll = hub.poll();
    let m = &hub.cache.metrics;
    let streaming = stream::wanted(req);
    let ask = match ask(req, poll, streaming) {
        Ok(a) => a,
        Err(e) => return Outcome::Answer(Answer::error(400, &e.to_string()).closing(true)),
    };
    // Authorise before the topic is even created: an unauthorised client neither reads the
    // cache nor makes the gateway subscribe.
    if let Access::AuthRequest { path, cache_for } = &poll.access {
        let asker = Asker {
            target: req.target,
            headers: req.headers,
            client_ip: req.client_ip,
        };
        let check = access.check(
            upstream_client,
            &hub.upstream,
            path,
            *cache_for,
            &ask.topic,
            &asker,
        );
        match Box::pin(check).await {
            Ok(Decision::Allow) => {}
            Ok(Decision::Deny(answer)) => {
                m.denied.inc();
                return Outcome::Answer(answer);
            }
            Err(e) => {
                tracing::warn!(route = %hub.cache.name, error = %e, "auth_request failed; refusing");
                METRICS
                    .upstream_errors
                    .with_label_values(&[&hub.upstream.name, "auth_request"])
                    .inc();
                return Outcome::Answer(Answer::unavailable(
                    "the authorization service is unavailable",
                ));
            }
        }
    }
    let topic = match hub.topic(&ask.topic) {
        Ok(t) => t,
        Err(e) => {
            let reason = match e {
                CacheError::GlobalTopicLimit | CacheError::RouteTopicLimit => "max_topics",
            };
            return reject(hub, reason, &e.to_string());
        }
    };
    // The shadow settings come from the route's `ShadowLog`, not `poll`: a reload that changes
    // only them keeps the hub (and `poll` with it).
    if let Some(sh) = route.shadow.config() {
        // A stream has no one answer to compare with the backend's.
        if !streaming {
            route.shadow.offer(shadow::Offer {
                hub,
                client: route.client,
                topic: &ask.topic,
                target: req.target,
                query: req.query,
                headers: req.headers,
                client_ip: req.client_ip,
                https: req.https,
            });
        }
        if sh.serve_backend {
            return Outcome::Forward;
        }
    }
    // A stream never falls back: a cold or stale topic's stream opens and waits (with
    // heartbeats) for what the subscription brings.
    if streaming {
        return stream::open(hub, &topic, req);
    }
    let (newest, state) = topic.snapshot();
    let newest = match newest {
        Some(n) => n,
        // Cold topic: give the new subscription `first_message_wait` to deliver something.
        None => match Box::pin(first_message(&topic, poll.first_message_wait)).await {
            Some(n) => n,
            None => return Box::pin(fall_back(route, req, &ask)).await,
        },
    };
    // Stale past `max_stale`: the backend over plain HTTP knows better than our old copy.
    let stale = match state {
        SubState::Down(since) if since.elapsed() > poll.max_stale => {
            return Box::pin(fall_back(route, req, &ask)).await;
        }
        SubState::Down(_) => true,
        _ => false,
    };
    let hold = Hold {
        hub,
        topic: &topic,
        wait: ask.wait,
        client,
        // A route with `cors` answers each origin its own way: its polls wait on their tasks.
        may_park: req.cors.is_none(),
        head_only: req.head_only,
    };
    let answer = match poll.mode {
        Mode::Latest => latest(hold, newest, &ask, stale).await,
        Mode::Since => since(hold, &ask, stale).await,
    };
    match answer {
        Some(a) => Outcome::Answer(a),
        None => Outcome::Gone,
    }
}

/// Answers from the backend what the cache cannot, in a flight shared with every concurrent
/// poll that asks the same.
async fn fall_back<H: HeaderSource + ?Sized>(
    route: &RouteParts<'_>,
    req: &PollRequest<'_, H>,
    ask: &Ask,
) -> Outcome {
    let hub = route.hub;
    hub.cache.metrics.fallback.inc();
    let fallback_ask = fallback::Ask {
        target: req.target,
        headers: req.headers,
        client_ip: req.client_ip,
        https: req.https,
        head_only: req.head_only,
        if_none_match: ask.if_none_match.as_deref(),
    };
    let a = route
        .flights
        .answer(route.client, &hub.upstream, &hub.cache.name, &fallback_ask)
        .await;
    Outcome::Relayed(a)
}

/// Waits up to `limit` for a cold topic's first message; `None` when the subscription failed
/// or nothing came.
async fn first_message(topic: &Topic, limit: Duration) -> Option<Arc<Message>> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // Subscribe before reading, so a publish in between still wakes us.
        let mut rx = topic.watch();
        let (newest, state) = topic.snapshot();
        if newest.is_some() {
            return newest;
        }
        if matches!(state, SubState::Failed | SubState::Down(_)) {
            return None;
        }
        tokio::select! {
            r = rx.changed() => r.ok()?,
            _ = sleep_until(deadline) => return None,
        }
    }
}

/// What a held poll needs while it waits.
struct Hold<'a, 'g, G> {
    hub: &'a Arc<Hub>,
    topic: &'a Arc<Topic>,
    wait: Duration,
    client: Client<'g, G>,
    may_park: bool,
    head_only: bool,
}

impl<G: Future + Unpin> Hold<'_, '_, G> {
    /// Waits for a change (see [`wait_change`]) on the task, the client's hang-up read by its
    /// path.
    async fn wait(
        &mut self,
        changed: Pin<&mut Notified<'_>>,
        deadline: tokio::time::Instant,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Woke {
        match &mut self.client {
            Client::Session(g) => wait_change(changed, deadline, shutdown, Pin::new(g)).await,
            Client::Socket(s) => {
                let gone = std::pin::pin!(client_read(s.io));
                wait_change(changed, deadline, shutdown, gone).await
            }
        }
    }
}

/// The connection, when a held poll may lend it to its topic (`park.rs`). Only a connection
/// that stays open after the answer: one that closes must be closed by its task at once.
fn lendable<'c, G>(client: &'c mut Client<'_, G>, may_park: bool) -> Option<&'c mut Stream> {
    match client {
        Client::Socket(s) if s.lendable && s.keep_alive && may_park => Some(&mut *s.io),
        _ => None,
    }
}

/// What a publish needs to answer a held poll once it parks (`park.rs`).
fn recipe(
    hub: &Arc<Hub>,
    topic: &Arc<Topic>,
    head_only: bool,
    wants: Wants,
    prefer_applied: Option<u64>,
    stale: bool,
) -> Recipe {
    Recipe {
        hub: hub.clone(),
        topic: topic.clone(),
        wants,
        prefer_applied,
        stale,
        route_headers: hub.poll().response_headers.clone(),
        head_only,
    }
}

/// What a held poll woke up to.
enum Woke {
    Changed,
    Timeout,
    Shutdown,
    Gone,
}

/// Waits for the topic to change (`changed` was enabled before the caller read the cache), the
/// deadline, the server's shutdown, or the client to hang up.
async fn wait_change<G: Future>(
    changed: Pin<&mut Notified<'_>>,
    deadline: tokio::time::Instant,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    gone: Pin<&mut G>,
) -> Woke {
    if *shutdown.borrow() {
        return Woke::Shutdown;
    }
    tokio::select! {
        _ = changed => Woke::Changed,
        _ = sleep_until(deadline) => Woke::Timeout,
        _ = shutdown.changed() => Woke::Shutdown,
        _ = gone => Woke::Gone,
    }
}

/// A parked poll's wait (`park.rs`): a publish answers it without waking it, so only its
/// client acting (a next request, a hang-up), the deadline or the server's shutdown end it.
async fn wait_parked(
    conn: &ParkedConn,
    deadline: tokio::time::Instant,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Woke {
    if *shutdown.borrow() {
        return Woke::Shutdown;
    }
    tokio::select! {
        _ = conn.woken() => Woke::Changed,
        _ = conn.client_acts() => Woke::Gone,
        _ = sleep_until(deadline) => Woke::Timeout,
        _ = shutdown.changed() => Woke::Shutdown,
    }
}

/// A held poll parked on its topic until `news` (which reads the cache) says a wake-up brought
/// news this task must write, or its wait ends: parked before that read, so a publish after it
/// answers the poll in its pass, and parked again after a wake-up that was not news. `Ok`: how
/// the wait ended, the slot given back; `Err`: the answer a publish wrote (`None`: the
/// connection was lost).
async fn hold_parked(
    conn: &Arc<ParkedConn>,
    io: &mut Stream,
    mut slot: HoldGuard,
    topic: &Topic,
    deadline: tokio::time::Instant,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    mut news: impl FnMut() -> bool,
) -> Result<Woke, Option<Answer>> {
    loop {
        let lending = conn.lend(io, slot, topic);
        let w = if news() {
            Woke::Changed
        } else {
            wait_parked(conn, deadline, shutdown).await
        };
        match lending.reclaim(io) {
            // No ticket in the ledger of answers due (`cache/due.rs`): the pass wrote every
            // parked answer before any task woke, so this connection's next step cannot delay
            // one.
            Some(Reclaimed::Answered(sent)) => return Err(Some(park::written(sent))),
            Some(Reclaimed::Waiting(s)) => slot = s,
            None => return Err(None),
        }
        // News this task writes itself (found by the read above, or too big for the pass),
        // or the wait is over.
        match w {
            Woke::Changed if !news() => continue,
            w => return Ok(w),
        }
    }
}

/// Counts a latest-mode held poll's answer to a publish, with the delivery lag of `msg` (by
/// its task, or by the publish's pass).
fn count_held_answer(hub: &Hub, msg: &Message) {
    let m = &hub.cache.metrics;
    m.held_served.inc();
    m.lag.observe(msg.received.elapsed().as_secs_f64());
}

/// Latest mode: the newest message, `304` when the client has it, held until a newer one when
/// it may wait. `None`: the client left.
async fn latest<G: Future + Unpin>(
    mut h: Hold<'_, '_, G>,
    mut msg: Arc<Message>,
    ask: &Ask,
    mut stale: bool,
) -> Option<Answer> {
    let m = &h.hub.cache.metrics;
    let mut close = false;
    let mut fanout = None;
    let mut which = Which::Ok;
    match ask.if_none_match.as_deref() {
        Some(inm) if etag_matches(inm, &msg.etag) => {
            which = Which::NotModified;
            if h.wait.is_zero() {
                m.not_modified.inc();
            } else {
                let Some(mut slot) = h.hub.cache.try_hold(h.topic) else {
                    return Some(reject_answer(
                        h.hub,
                        "max_held_polls",
                        "too many held polls",
                    ));
                };
                let deadline = tokio::time::Instant::now() + h.wait;
                let mut shutdown = h.hub.cache.store.shutdown_signal();
                let mut again = false;
                // Reads the newest message into `msg`: whether it is news to this client.
                let news = |msg: &mut Arc<Message>| {
                    if let Some(n) = h.topic.latest() {
                        *msg = n;
                    }
                    !etag_matches(inm, &msg.etag)
                };
                let woke = if let Some(io) = lendable(&mut h.client, h.may_park) {
                    let conn = ParkedConn::new(recipe(
                        h.hub,
                        h.topic,
                        h.head_only,
                        Wants::Newer(inm.to_string()),
                        ask.prefer_applied,
                        stale,
                    ));
                    let parked =
                        hold_parked(&conn, io, slot, h.topic, deadline, &mut shutdown, || {
                            news(&mut msg)
                        });
                    match parked.await {
                        Ok(w) => w,
                        Err(answer) => return answer,
                    }
                } else {
                    let woke = loop {
                        // Woken by a publish, which is news to nearly every waiter: read it
                        // before subscribing again, so an answered poll neither joins the
                        // waiters' list nor leaves it (two turns per answer of the lock a
                        // publish takes to wake a fan-out).
                        if again && news(&mut msg) {
                            break Woke::Changed;
                        }
                        // Subscribe before reading the cache, so a publish in between is not
                        // missed.
                        let changed = h.topic.held_changed();
                        let mut changed = std::pin::pin!(changed);
                        changed.as_mut().enable();
                        if news(&mut msg) {
                            break Woke::Changed;
                        }
                        if again {
                            // Woken by a change that was not news to this client: it waits on.
                            slot.rearm();
                        }
                        match h.wait(changed, deadline, &mut shutdown).await {
                            Woke::Changed => again = true,
                            w => break w,
                        }
                    };
                    drop(slot);
                    woke
                };
                match woke {
                    Woke::Changed => {
                        fanout = h.hub.cache.store.answers_due().ticket();
                        which = Which::Ok;
                        count_held_answer(h.hub, &msg);
                    }
                    Woke::Gone => return None,
                    Woke::Timeout | Woke::Shutdown => {
                        m.held_timeout.inc();
                        stale = matches!(h.topic.state(), SubState::Down(_));
                        close = matches!(woke, Woke::Shutdown);
                    }
                }
            }
        }
        _ => m.hit.inc(),
    }
    saved(h.hub, h.topic);
    let mut a = latest_answer(msg, which, ask.prefer_applied, stale).closing(close);
    a.fanout = fanout;
    Some(a)
}

/// A latest-mode answer from the cache: the message's template, its age, the cache's lines.
/// Also what a publish writes for a parked poll (`park.rs`).
fn latest_answer(
    msg: Arc<Message>,
    which: Which,
    prefer_applied: Option<u64>,
    stale: bool,
) -> Answer {
    let age = msg.received.elapsed().as_secs();
    let mut a = Answer::from_message(msg, which);
    a.push(name::AGE, super::answer::age_value(age));
    decorate(&mut a, prefer_applied, stale);
    a
}

/// What every answer from the cache carries besides the poll's own lines: the route's
/// `response_headers`, and the CORS lines for the request's origin.
fn dress(
    a: &mut Answer,
    route_headers: &Arc<[(String, HeaderValue)]>,
    origin: Option<(&crate::config::Cors, &OriginCheck)>,
) {
    if a.template.is_some() || a.status == 200 {
        a.route_headers = Some(route_headers.clone());
    }
    if let Some((c, check)) = origin {
        cors::decorate(a, c, check);
    }
}

/// Since mode: every cached message after the cursor as one JSON array, held until there is one
/// when the client may wait. `None`: the client left.
async fn since<G: Future + Unpin>(
    mut h: Hold<'_, '_, G>,
    ask: &Ask,
    stale: bool,
) -> Option<Answer> {
    // Enabled before the cache is read, so a publish in between is not missed.
    let changed = h.topic.held_changed();
    let mut changed = std::pin::pin!(changed);
    changed.as_mut().enable();
    let mut got = h.topic.since(ask.cursor.as_ref());
    let mut held = false;
    let mut close = false;
    let mut fanout = None;
    if got.messages.is_empty() && !h.wait.is_zero() {
        let Some(mut slot) = h.hub.cache.try_hold(h.topic) else {
            return Some(reject_answer(
                h.hub,
                "max_held_polls",
                "too many held polls",
            ));
        };
        held = true;
        let deadline = tokio::time::Instant::now() + h.wait;
        let mut shutdown = h.hub.cache.store.shutdown_signal();
        if let Some(io) = lendable(&mut h.client, h.may_park) {
            // A parked poll waits on its connection, not on the held polls' signal.
            changed.set(h.topic.held_changed());
            let conn = ParkedConn::new(recipe(
                h.hub,
                h.topic,
                h.head_only,
                Wants::After(ask.cursor.clone()),
                ask.prefer_applied,
                stale,
            ));
            let parked = hold_parked(&conn, io, slot, h.topic, deadline, &mut shutdown, || {
                got = h.topic.since(ask.cursor.as_ref());
                !got.messages.is_empty()
            });
            match parked.await {
                Ok(Woke::Changed) => fanout = h.hub.cache.store.answers_due().ticket(),
                Ok(Woke::Gone) => return None,
                Ok(Woke::Timeout) => {}
                Ok(Woke::Shutdown) => close = true,
                Err(answer) => return answer,
            }
        } else {
            loop {
                match h.wait(changed.as_mut(), deadline, &mut shutdown).await {
                    Woke::Changed => {
                        // Read before subscribing again, as in `latest`: an answered poll
                        // need not.
                        got = h.topic.since(ask.cursor.as_ref());
                        if got.messages.is_empty() {
                            changed.set(h.topic.held_changed());
                            changed.as_mut().enable();
                            got = h.topic.since(ask.cursor.as_ref());
                        }
                        if !got.messages.is_empty() {
                            drop(slot);
                            fanout = h.hub.cache.store.answers_due().ticket();
                            break;
                        }
                        slot.rearm();
                    }
                    Woke::Gone => return None,
                    Woke::Timeout => break,
                    Woke::Shutdown => {
                        close = true;
                        break;
                    }
                }
            }
        }
    }
    count_since(h.hub, h.topic, &got, held);
    let mut a = since_answer(h.hub, h.topic, &got, ask.prefer_applied, stale).closing(close);
    a.fanout = fanout;
    Some(a)
}

/// A since-mode answer: the messages in `got` as one JSON array, and their cursor. Also what
/// a publish writes for a parked cursor poll (`park.rs`).
fn since_answer(
    hub: &Hub,
    topic: &Topic,
    got: &Since,
    prefer_applied: Option<u64>,
    stale: bool,
) -> Answer {
    let poll = hub.poll();
    let (Ok(ct), Ok(cursor), Ok(etag)) = (
        HeaderValue::from_str(&poll.content_type),
        HeaderValue::from_str(&got.cursor),
        HeaderValue::from_str(&format!("\"{}\"", got.cursor)),
    ) else {
        // An id taken from the upstream's messages that cannot be a header value.
        tracing::warn!(route = %hub.cache.name, cursor = ?got.cursor, "cursor cannot be sent as a header");
        return Answer::error(500, super::answer::proxy_error_message(500)).closing(true);
    };
    let body = since_body(got);
    let mut a = Answer::new(200)
        .header(name::CONTENT_TYPE, ct)
        .header(name::CONTENT_LENGTH, HeaderValue::from(body.len()))
        // Different cursors get different bodies under one URL: no cache may replay one.
        .header(name::CACHE_CONTROL, HeaderValue::from_static("no-store"))
        .header(name::ETAG, etag)
        .header(name::POLLGATE_CURSOR, cursor)
        .with_body(body);
    if got.gap {
        a.push(name::POLLGATE_GAP, HeaderValue::from_static("true"));
    }
    if let Some(m) = got.messages.last().cloned().or_else(|| topic.latest()) {
        a.push(
            name::AGE,
            super::answer::age_value(m.received.elapsed().as_secs()),
        );
        a.date = Some(m.date.clone());
    }
    let stale = stale || matches!(topic.state(), SubState::Down(_));
    decorate(&mut a, prefer_applied, stale);
    a
}

/// The lines every cache answer may carry after its own.
fn decorate(a: &mut Answer, prefer_applied: Option<u64>, stale: bool) {
    if stale {
        a.push(name::POLLGATE_STALE, HeaderValue::from_static("true"));
    }
    if let Some(w) = prefer_applied {
        let v = HeaderValue::from_str(&format!("wait={w}")).expect("digits are a header value");
        a.push(name::PREFERENCE_APPLIED, v);
    }
}

/// Counts an answer that spared the backend a request.
fn saved(hub: &Hub, topic: &Topic) {
    hub.cache.metrics.saved.inc();
    topic.saved.fetch_add(1, Ordering::Relaxed);
}

/// Counts a since-mode answer: its outcome, the backend request it saved, its delivery lag.
fn count_since(hub: &Hub, topic: &Topic, got: &Since, held: bool) {
    let m = &hub.cache.metrics;
    let outcome = match (held, got.messages.is_empty()) {
        (true, true) => &m.held_timeout,
        (true, false) => &m.held_served,
        (false, true) => &m.not_modified,
        (false, false) => &m.hit,
    };
    outcome.inc();
    saved(hub, topic);
    if held {
        if let Some(first) = got.messages.first() {
            m.lag.observe(first.received.elapsed().as_secs_f64());
        }
    }
}

/// A since-mode body: the JSON array of the messages' fragments, serialised once each.
/// A refusal at a limit: counted, `503` with `Retry-After`.
fn reject_answer(hub: &Hub, reason: &'static str, message: &str) -> Answer {
    hub.cache.metrics.rejected_polls.inc();
    METRICS
        .rejected
        .with_label_values(&[&hub.cache.name, reason])
        .inc();
    Answer::unavailable(message)
}

fn reject(hub: &Hub, reason: &'static str, message: &str) -> Outcome {
    Outcome::Answer(reject_answer(hub, reason, message))
}
