//! The data of examples/kv_server.rs: 16 databases over 64 sharded locks, and the commands
//! that read and write keys.
//!
//! A key's shard depends on the key alone, and each shard holds that key's slot in every
//! database. An ordinary command locks one shard at a time, so workers rarely wait on each
//! other; EXEC locks every shard (in index order, so two EXECs cannot deadlock, and no
//! ordinary command ever holds two locks) and runs its queued commands with them held:
//! nothing another connection does can land between them, and the common path costs what
//! it did before transactions existed (no lock shared by every command).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::resp::{error, parse_int, Value, NOT_AN_INTEGER};

/// Databases per server, as redis-server's default: `SELECT 0` to `SELECT 15`.
pub const DATABASES: usize = 16;

const SHARDS: usize = 64;

/// A value and when it expires.
pub struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

/// One database's keys in one shard.
pub type Map = HashMap<Vec<u8>, Entry>;

/// One shard: its keys in each database.
type Shard = [Map; DATABASES];

/// The data, split over shards so workers rarely wait on each other's lock.
pub struct Store {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(std::array::from_fn(|_| HashMap::new())))
                .collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Store {
    fn shard_of(&self, key: &[u8]) -> usize {
        self.hasher.hash_one(key) as usize % SHARDS
    }

    /// Every shard, locked in index order until the result is dropped (EXEC).
    pub fn lock_all(&self) -> AllShards<'_> {
        AllShards {
            store: self,
            guards: self
                .shards
                .iter()
                .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner))
                .collect(),
        }
    }
}

/// How a command reaches the keys: locking the one shard it needs for each access
/// (`&Store`), or through shards already locked ([`AllShards`]).
pub trait Keys {
    /// Runs `f` on database `db` of the shard holding `key`, with an expired entry for
    /// `key` already gone.
    fn with_key<T>(&mut self, db: usize, key: &[u8], f: impl FnOnce(&mut Map) -> T) -> T;
}

fn unexpired<T>(map: &mut Map, key: &[u8], f: impl FnOnce(&mut Map) -> T) -> T {
    if map
        .get(key)
        .is_some_and(|e| e.expires.is_some_and(|at| at <= Instant::now()))
    {
        map.remove(key);
    }
    f(map)
}

impl Keys for &Store {
    fn with_key<T>(&mut self, db: usize, key: &[u8], f: impl FnOnce(&mut Map) -> T) -> T {
        let mut shard = self.shards[self.shard_of(key)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unexpired(&mut shard[db], key, f)
    }
}

/// Every shard of a [`Store`], locked.
pub struct AllShards<'s> {
    store: &'s Store,
    guards: Vec<MutexGuard<'s, Shard>>,
}

impl Keys for AllShards<'_> {
    fn with_key<T>(&mut self, db: usize, key: &[u8], f: impl FnOnce(&mut Map) -> T) -> T {
        let shard = self.store.shard_of(key);
        unexpired(&mut self.guards[shard][db], key, f)
    }
}

/// When a key set to expire in `amount` units of `unit_ms` milliseconds expires: the rules
/// of redis-server (see kv_server.rs's doc), in u64/i64 arithmetic that is checked, never
/// cast down (a `u32` cast once made `EX 4294967296` expire at once). `Ok(None)`: never.
fn deadline(amount: i64, unit_ms: i64) -> Result<Option<Instant>, Value> {
    let invalid = || error("ERR invalid expire time in 'set' command");
    if amount <= 0 {
        return Err(invalid());
    }
    let ms = amount.checked_mul(unit_ms).ok_or_else(invalid)?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    now_ms.checked_add(ms).ok_or_else(invalid)?;
    Ok(Instant::now().checked_add(Duration::from_millis(ms as u64)))
}

const SYNTAX_ERROR: &str = "ERR syntax error";

// SET's options, one bit each.
const NX: u8 = 1;
const XX: u8 = 1 << 1;
const GET: u8 = 1 << 2;
const KEEPTTL: u8 = 1 << 3;
const EX: u8 = 1 << 4;
const PX: u8 = 1 << 5;
const EXAT: u8 = 1 << 6;
const PXAT: u8 = 1 << 7;

/// SET's option words as redis-server 7 reads them (`parseExtendedStringArgumentsOrReply`
/// in t_string.c): the name (any case), its bit, the options it cannot be combined with,
/// and whether a value follows.
const SET_OPTIONS: [(&str, u8, u8, bool); 8] = [
    ("NX", NX, XX, false),
    ("XX", XX, NX, false),
    ("GET", GET, 0, false),
    ("KEEPTTL", KEEPTTL, EX | PX | EXAT | PXAT, false),
    ("EX", EX, KEEPTTL | PX | EXAT | PXAT, true),
    ("PX", PX, KEEPTTL | EX | EXAT | PXAT, true),
    ("EXAT", EXAT, KEEPTTL | EX | PX | PXAT, true),
    ("PXAT", PXAT, KEEPTTL | EX | PX | EXAT, true),
];

/// What SET's options ask for, once their words are known to make sense together.
struct SetOptions<'a> {
    /// The EX or PX given (the last, if repeated), its value not yet read, and its unit in
    /// milliseconds.
    expiry: Option<(&'a [u8], i64)>,
    /// NX, XX, GET, KEEPTTL, EXAT or PXAT: options redis-server has and kv_server does not.
    unsupported: bool,
}

impl<'a> SetOptions<'a> {
    /// Checks every word before any value is read, as redis-server does: a word that is no
    /// option, one that cannot go with an earlier one (EX with PX, NX with XX, ...), or a
    /// missing value is `-ERR syntax error` whatever the values say, and of a repeated EX
    /// or PX only the last value is read at all.
    fn parse(words: &'a [Vec<u8>]) -> Result<Self, Value> {
        let mut options = SetOptions {
            expiry: None,
            unsupported: false,
        };
        let mut seen = 0u8;
        let mut words = words.iter();
        while let Some(word) = words.next() {
            let Some(&(_, bit, excludes, has_value)) = SET_OPTIONS
                .iter()
                .find(|(name, ..)| word.eq_ignore_ascii_case(name.as_bytes()))
            else {
                return Err(error(SYNTAX_ERROR));
            };
            if seen & excludes != 0 {
                return Err(error(SYNTAX_ERROR));
            }
            seen |= bit;
            let value = if has_value {
                Some(words.next().ok_or_else(|| error(SYNTAX_ERROR))?)
            } else {
                None
            };
            match (bit, value) {
                (EX, Some(value)) => options.expiry = Some((value.as_slice(), 1000)),
                (PX, Some(value)) => options.expiry = Some((value.as_slice(), 1)),
                _ => options.unsupported = true,
            }
        }
        Ok(options)
    }
}

/// Database `index` of the keys `K` reaches: the data commands, arguments already counted.
pub struct Db<'k, K: Keys> {
    keys: &'k mut K,
    index: usize,
}

impl<'k, K: Keys> Db<'k, K> {
    pub fn new(keys: &'k mut K, index: usize) -> Self {
        Db { keys, index }
    }

    fn with_key<T>(&mut self, key: &[u8], f: impl FnOnce(&mut Map) -> T) -> T {
        self.keys.with_key(self.index, key, f)
    }

    fn value(&mut self, key: &[u8]) -> Value {
        Value::Bulk(self.with_key(key, |map| map.get(key).map(|e| e.value.clone())))
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>, expires: Option<Instant>) {
        self.with_key(key, |map| {
            map.insert(key.to_vec(), Entry { value, expires })
        });
    }

    /// `GET key`.
    pub fn get(&mut self, key: &[u8]) -> Value {
        self.value(key)
    }

    /// `SET key value [EX seconds | PX milliseconds]`: `args` from the key on.
    pub fn set(&mut self, args: &[Vec<u8>]) -> Value {
        let options = match SetOptions::parse(&args[2..]) {
            Ok(options) => options,
            Err(refused) => return refused,
        };
        let mut expires = None;
        if let Some((amount, unit_ms)) = options.expiry {
            let Some(amount) = parse_int(amount) else {
                return error(NOT_AN_INTEGER);
            };
            match deadline(amount, unit_ms) {
                Ok(at) => expires = at,
                Err(invalid) => return invalid,
            }
        }
        if options.unsupported {
            // What kv_server has always answered to these; see kv_server.rs's doc.
            return error(SYNTAX_ERROR);
        }
        self.put(&args[0], args[1].clone(), expires);
        Value::Simple("OK")
    }

    /// `INCR key`.
    pub fn incr(&mut self, key: &[u8]) -> Value {
        self.with_key(key, |map| {
            let current = match map.get(key) {
                Some(entry) => match parse_int(&entry.value) {
                    Some(n) => n,
                    None => return error(NOT_AN_INTEGER),
                },
                None => 0,
            };
            let Some(next) = current.checked_add(1) else {
                return error("ERR increment or decrement would overflow");
            };
            let expires = map.get(key).and_then(|e| e.expires);
            let value = next.to_string().into_bytes();
            map.insert(key.to_vec(), Entry { value, expires });
            Value::Integer(next)
        })
    }

    /// `DEL key...` (`remove`) or `EXISTS key...`: how many of `keys` there were.
    pub fn count(&mut self, keys: &[Vec<u8>], remove: bool) -> Value {
        let found = keys
            .iter()
            .filter(|key| {
                self.with_key(key, |map| {
                    if remove {
                        map.remove(key.as_slice()).is_some()
                    } else {
                        map.contains_key(key.as_slice())
                    }
                })
            })
            .count();
        Value::Integer(found as i64)
    }

    /// `MGET key...`.
    pub fn mget(&mut self, keys: &[Vec<u8>]) -> Value {
        Value::Array(keys.iter().map(|key| self.value(key)).collect())
    }

    /// `MSET key value...`: `pairs` holds whole pairs.
    pub fn mset(&mut self, pairs: &[Vec<u8>]) -> Value {
        for pair in pairs.chunks(2) {
            self.put(&pair[0], pair[1].clone(), None);
        }
        Value::Simple("OK")
    }
}
