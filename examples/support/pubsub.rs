//! Redis pub/sub for examples/kv_server.rs: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE,
//! PUNSUBSCRIBE, PUBLISH and PUBSUB CHANNELS / NUMSUB / NUMPAT, with redis-server 7's RESP2
//! replies and its glob patterns.
//!
//! A [`Hub`] shared by every worker maps each channel and each pattern to the
//! [`Pusher`]s of the connections subscribed to it; a connection's own [`Subscriber`] (in
//! its session) lists what it subscribed to, so UNSUBSCRIBE with no argument, RESET and
//! the connection's close know what to remove. PUBLISH pushes the message to each receiver
//! with the hub's lock held, so every subscriber sees the messages of a channel in the same
//! order, and one publisher's messages in the order it published them. A subscriber whose
//! pushes pile up past the server's push limit is closed (see kv_server.rs's doc).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use reactor_pool::{PushError, Pusher, Replies};

use super::resp::Value;

/// Channels, or patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Channel,
    Pattern,
}

impl Kind {
    fn subscribe_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"subscribe",
            Kind::Pattern => b"psubscribe",
        }
    }

    fn unsubscribe_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"unsubscribe",
            Kind::Pattern => b"punsubscribe",
        }
    }
}

/// What one connection subscribed to. Holds no memory until it subscribes.
#[derive(Debug, Default)]
pub struct Subscriber {
    /// The connection's pusher, taken at its first subscription.
    pusher: Option<Pusher<Value>>,
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
}

impl Subscriber {
    /// Channels and patterns: the count in every (un)subscribe reply.
    fn count(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }

    /// Whether the connection is in subscribed mode (redis-server's RESP2 pub/sub context).
    pub fn is_subscribed(&self) -> bool {
        self.count() > 0
    }

    fn names(&mut self, kind: Kind) -> &mut BTreeSet<Vec<u8>> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
        }
    }
}

/// The receivers of one channel or pattern, by connection id.
type Receivers = HashMap<u64, Pusher<Value>>;

#[derive(Default)]
struct Subscriptions {
    channels: HashMap<Vec<u8>, Receivers>,
    patterns: HashMap<Vec<u8>, Receivers>,
}

impl Subscriptions {
    fn map(&mut self, kind: Kind) -> &mut HashMap<Vec<u8>, Receivers> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
        }
    }

    /// Removes connections `ids` from every channel and pattern.
    fn evict(&mut self, ids: &[u64]) {
        for map in [&mut self.channels, &mut self.patterns] {
            map.retain(|_, receivers| {
                receivers.retain(|id, _| !ids.contains(id));
                !receivers.is_empty()
            });
        }
    }

    fn remove(&mut self, kind: Kind, name: &[u8], id: u64) {
        let map = self.map(kind);
        if let Some(receivers) = map.get_mut(name) {
            receivers.remove(&id);
            if receivers.is_empty() {
                map.remove(name);
            }
        }
    }
}

/// Every subscription of the server.
#[derive(Default)]
pub struct Hub {
    subscriptions: Mutex<Subscriptions>,
}

fn bulk(bytes: &[u8]) -> Value {
    Value::Bulk(Some(bytes.to_vec()))
}

/// `[word, name, count]`: a (p)(un)subscribe confirmation; `name` is nil for an
/// UNSUBSCRIBE with none to undo.
fn confirmation(word: &[u8], name: Option<&[u8]>, count: i64) -> Value {
    Value::Array(vec![
        bulk(word),
        Value::Bulk(name.map(<[u8]>::to_vec)),
        Value::Integer(count),
    ])
}

/// Pushes `message` to connection `id`, unless an earlier push of this PUBLISH evicted it. A
/// receiver past the push limit is closed and listed in `evicted`, as redis-server closes
/// a pub/sub client past its output buffer limit (the close waits for what the connection
/// owes; the write-stall timeout ends one that never reads again). One whose connection
/// ended is skipped: its close removes it from the hub.
fn deliver(id: u64, pusher: &Pusher<Value>, message: Value, evicted: &mut Vec<u64>) {
    if evicted.contains(&id) {
        return;
    }
    if let Err(PushError::Full(_)) = pusher.push(message) {
        log::warn!("closing subscriber {id}: it is not reading its messages (push limit reached)");
        let _ = pusher.close();
        evicted.push(id);
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, Subscriptions> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `SUBSCRIBE` or `PSUBSCRIBE names...`: one confirmation per name, in order.
    pub fn subscribe(
        &self,
        subscriber: &mut Subscriber,
        kind: Kind,
        names: &[Vec<u8>],
        replies: &mut Replies<Value>,
    ) -> Vec<Value> {
        let pusher = subscriber
            .pusher
            .get_or_insert_with(|| replies.pusher())
            .clone();
        let mut subscriptions = self.lock();
        names
            .iter()
            .map(|name| {
                if subscriber.names(kind).insert(name.clone()) {
                    subscriptions
                        .map(kind)
                        .entry(name.clone())
                        .or_default()
                        .insert(pusher.connection_id(), pusher.clone());
                }
                confirmation(kind.subscribe_word(), Some(name), subscriber.count())
            })
            .collect()
    }

    /// `UNSUBSCRIBE` or `PUNSUBSCRIBE names...`, every one of that kind when `names` is
    /// empty: one confirmation per name (a name not subscribed too), or a nil one when
    /// there is none.
    pub fn unsubscribe(
        &self,
        subscriber: &mut Subscriber,
        kind: Kind,
        names: &[Vec<u8>],
    ) -> Vec<Value> {
        let names: Vec<Vec<u8>> = if names.is_empty() {
            subscriber.names(kind).iter().cloned().collect()
        } else {
            names.to_vec()
        };
        if names.is_empty() {
            return vec![confirmation(
                kind.unsubscribe_word(),
                None,
                subscriber.count(),
            )];
        }
        let id = subscriber.pusher.as_ref().map(Pusher::connection_id);
        let mut subscriptions = self.lock();
        names
            .iter()
            .map(|name| {
                if let (true, Some(id)) = (subscriber.names(kind).remove(name), id) {
                    subscriptions.remove(kind, name, id);
                }
                confirmation(kind.unsubscribe_word(), Some(name), subscriber.count())
            })
            .collect()
    }

    /// Undoes every subscription of `subscriber`, silently (RESET, and the connection's end).
    pub fn leave(&self, subscriber: &mut Subscriber) {
        let Some(id) = subscriber.pusher.as_ref().map(Pusher::connection_id) else {
            return;
        };
        let mut subscriptions = self.lock();
        for kind in [Kind::Channel, Kind::Pattern] {
            for name in std::mem::take(subscriber.names(kind)) {
                subscriptions.remove(kind, &name, id);
            }
        }
    }

    /// `PUBLISH channel message`: sends it to the channel's subscribers and to those of
    /// every pattern it matches (a connection subscribed to both gets both); returns how
    /// many receivers that was, counting a connection once per subscription as redis does
    /// (one closed for not reading too). A closed one leaves the hub at once: it is not
    /// counted again, and its close is not asked for again.
    pub fn publish(&self, channel: &[u8], message: &[u8]) -> i64 {
        let mut subscriptions = self.lock();
        let mut receivers = 0;
        let mut evicted = Vec::new();
        if let Some(subscribers) = subscriptions.channels.get(channel) {
            for (&id, pusher) in subscribers {
                let parts = vec![bulk(b"message"), bulk(channel), bulk(message)];
                deliver(id, pusher, Value::Array(parts), &mut evicted);
                receivers += 1;
            }
        }
        for (pattern, subscribers) in &subscriptions.patterns {
            if !glob_match(pattern, channel) {
                continue;
            }
            for (&id, pusher) in subscribers {
                let parts = vec![
                    bulk(b"pmessage"),
                    bulk(pattern),
                    bulk(channel),
                    bulk(message),
                ];
                deliver(id, pusher, Value::Array(parts), &mut evicted);
                receivers += 1;
            }
        }
        if !evicted.is_empty() {
            subscriptions.evict(&evicted);
        }
        receivers
    }

    /// `PUBSUB CHANNELS [pattern]`: the channels with a subscriber (matching `pattern`),
    /// sorted.
    pub fn channels(&self, pattern: Option<&[u8]>) -> Value {
        let subscriptions = self.lock();
        let mut names: Vec<&Vec<u8>> = subscriptions
            .channels
            .keys()
            .filter(|name| pattern.is_none_or(|pattern| glob_match(pattern, name)))
            .collect();
        names.sort();
        Value::Array(names.into_iter().map(|name| bulk(name)).collect())
    }

    /// `PUBSUB NUMSUB channels...`: each channel and its number of subscribers.
    pub fn numsub(&self, channels: &[Vec<u8>]) -> Value {
        let subscriptions = self.lock();
        let mut reply = Vec::with_capacity(channels.len() * 2);
        for channel in channels {
            let count = subscriptions.channels.get(channel).map_or(0, HashMap::len);
            reply.extend([bulk(channel), Value::Integer(count as i64)]);
        }
        Value::Array(reply)
    }

    /// `PUBSUB NUMPAT`: how many distinct patterns have a subscriber (redis-server 7).
    pub fn numpat(&self) -> Value {
        Value::Integer(self.lock().patterns.len() as i64)
    }
}

/// Whether `string` matches the glob `pattern` exactly as redis-server's `stringmatchlen`
/// decides it (util.c, 7.0): `*` any run of bytes, `?` any one byte, `[abc]`, `[^abc]` and
/// ranges `[a-z]` (reversed ranges too, bytes compared as C's signed `char`), `\x` the byte
/// `x`. Its corner cases too: an unclosed `[` ends at the pattern's end, and a pattern
/// never matches an empty string unless it is empty itself (not even `*`).
pub fn glob_match(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer = false;
    glob(pattern, string, &mut skip_longer, 0)
}

/// `stringmatchlen_impl`: `skip_longer` says that the rest of the pattern after a `*`
/// matched nowhere, so an earlier `*` need not try longer runs either.
fn glob(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: usize) -> bool {
    // redis-server's protection against abusive patterns.
    if nesting > 1000 {
        return false;
    }
    while !p.is_empty() && !s.is_empty() {
        // Each arm leaves `p` at the last pattern byte it used; the step below passes it.
        let mut step = true;
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if glob(&p[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                p = &p[1..];
                let not = p.first() == Some(&b'^');
                if not {
                    p = &p[1..];
                }
                let c = s[0] as i8;
                let mut matched = false;
                loop {
                    if p.len() >= 2 && p[0] == b'\\' {
                        p = &p[1..];
                        matched |= p[0] == s[0];
                    } else if p.first() == Some(&b']') {
                        break;
                    } else if p.is_empty() {
                        // Unclosed: the class ends with the pattern.
                        step = false;
                        break;
                    } else if p.len() >= 3 && p[1] == b'-' {
                        let (start, end) = (p[0] as i8, p[2] as i8);
                        let (start, end) = (start.min(end), start.max(end));
                        p = &p[2..];
                        matched |= (start..=end).contains(&c);
                    } else {
                        matched |= p[0] == s[0];
                    }
                    p = &p[1..];
                }
                if matched == not {
                    return false;
                }
                s = &s[1..];
            }
            first => {
                if first == b'\\' && p.len() >= 2 {
                    p = &p[1..];
                }
                if p[0] != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        if step {
            p = &p[1..];
        }
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_like_redis() {
        for (pattern, string, expected) in [
            ("news.*", "news.tech", true),
            ("news.*", "news.", true),
            ("news.*", "news", false),
            ("*", "", false),
            ("", "", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hbllo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("a[bc", "ab", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
        ] {
            assert_eq!(glob_match(pattern.as_bytes(), string.as_bytes()), expected);
        }
    }
}
