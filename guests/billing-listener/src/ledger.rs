//! The exactly-once ledger: how one amount reaches its shard sum and its account's total
//! exactly once, whatever the delivery order, duplicates, concurrent handlers on other hosts
//! or crashes between any two steps — using only per-key atomic operations ([`Store`]).
//!
//! The ledger is written against [`Store`], not the host's `kv` import, so its argument can
//! be checked natively: the tests below pause a delivery before each of its store operations
//! and, in that gap, run other deliveries of the same entry or of another one to their end
//! (nested two deep), or crash it there and redeliver; every such schedule must count each
//! amount once. (A review also ran this code under a model checker over every schedule of
//! up to three deliveries with two preemptions and a crash; it found nothing.)
//!
//! # The shard value
//!
//! `<m>shard/<account>/<shard>` holds the shard's sum on its first line, then one line per
//! *pending* entry: an entry whose amount is in the sum and which was not yet seen marked
//! counted by an add to the shard. A plain decimal (the layout of earlier versions) reads as a
//! sum with nothing pending. Each add drops the pending entries already marked counted, so the
//! value holds only the entries in flight and those marked since the shard's last add: it
//! stays small however many entries the account has.
//!
//! `<m>sums/<account>` records, for the total, one sum per shard: each a sum that shard held
//! at some moment, so never more than it holds now ([`ShardSums`]). The total is the sum of
//! the record. Settling one entry costs about nine store operations, four of them writes,
//! whatever the number of entries, shards or accounts.
//!
//! # Settling one entry `e` with amount `a > 0` ([`settle`])
//!
//! 1. **Add.** Read the shard value `S`, *then* whether `C = <m>counted/<account>/<shard>/<e>`
//!    exists. If `C` exists, `e` was counted: read `S` again (a read after `C` includes `e`'s
//!    add, which came before `C`; the first read may not, when reads trail writes made on
//!    another host) and go to 3. If `e` is pending in `S`, it was added:
//!    go to 2. Otherwise, read the marks of the entries pending in `S` and swap `S` for
//!    (sum + a, the pending entries not marked, + e); a lost swap starts 1 again.
//! 2. **Mark.** `set-if-absent(C)`. (`e` stays pending until the next add to the shard sees
//!    `C` and drops it: clearing it now would cost a write per entry.)
//! 3. **Total.** With the shard's sum `s` as step 1 last read or wrote it: raise the shard's
//!    slot in `<m>sums/<account>` to `s` (a swap; nothing to do if it is already there), then
//!    raise `<m>total/<account>` to the record's sum (a swap; nothing to do if it is already
//!    there) ([`update_total`]). When the record is absent it starts from every shard's
//!    current sum.
//!
//! Why `a` is added once. An add swaps from a value where `e` is not pending, and leaves `e`
//! pending. Suppose two adds of `e` won, the second after the first. Between them `e` stopped
//! being pending, which only an add does that read `C` set. The second adder read `S` after
//! that add (its swap won against the value it read, and a swap compares the whole value: the
//! sum only grows, so a value from before the first add can never come back), so it read `C`
//! after `C` was set, saw it, and did not add. A contradiction.
//!
//! Why `a` is added at least once. A handler that finishes step 1 either added `a`, or saw `e`
//! pending (someone added it), or saw `C` (set only after `e` was seen pending). Step 1 only
//! ends in one of those three ways, so every finished delivery leaves `a` in the sum; a crash
//! before that is redelivered, and the redelivery finishes it.
//!
//! Why the total ends exact. Shard sums only grow; a slot of the record only ever receives
//! a sum its shard held, and only ever grows; the total only ever receives the sum of a
//! record, and only ever grows. So the total never exceeds the sum of the shards' final sums.
//! For each shard, take the event whose add was the last change to its sum: the delivery of
//! it that completes (the one that added, or a redelivery) reads the shard after that add, so
//! its last operation on the record sees the shard's slot at its final sum. The latest of
//! those operations, over all shards, sees every slot final, and its delivery then raises the
//! total to the record's sum. So the total ends equal to the sum of every amount, once each.
//!
//! Zero amounts change no sum and are never added, and negative ones are refused, so a shard
//! value never returns to an earlier one (the swap of step 1 relies on that).
//!
//! Limits. A shard value must fit the component's payload limit: its pending entries are
//! the deliveries in flight and those marked since the shard's last add, so at most about the
//! listener's concurrency, plus any whose handler crashed before marking and whose event was
//! never redelivered (dead-lettered). With 200-byte entries, 64 KiB holds about 300. The ledger does not know
//! entries counted by the version before it (which kept no `counted/` marks): see the
//! operator guide's upgrade notes.

use std::collections::BTreeSet;

use crate::model::{self, Meter, Shard};

/// How many times a shard value or a total is swapped when other handlers keep changing it,
/// before the event is retried later.
pub const TRIES: usize = 64;

/// Why an event was not handled now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The event itself is wrong (bad JSON, a bad name); nothing was changed.
    Malformed(String),
    /// Transient: ask the host to deliver again later.
    Retry(String),
    /// Transient, and not worth trying again for this many milliseconds.
    RetryAfter(u64, String),
    /// The event cannot be handled; the reason goes to the dead-letter stream.
    Reject(String),
}

/// The result of a ledger step.
pub type Result<T> = std::result::Result<T, Failure>;

/// The per-key atomic operations the ledger needs: the host's `kv` interface, or a map in
/// the tests. Every operation is atomic on its own key and sees every earlier write.
pub trait Store {
    /// The value under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Stores `value` unless `key` holds a value; returns whether it stored it.
    fn set_if_absent(&self, key: &str, value: &[u8]) -> Result<bool>;
    /// Replaces the value under `key` with `new` if it equals `expected` (`None`: absent);
    /// returns whether it did.
    fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool>;
}

/// First-write-wins: stores `value` under `key` unless a value is there, and returns the
/// value that is there now (ours, or the one a previous delivery stored).
pub fn record(store: &impl Store, key: &str, value: i64) -> Result<i64> {
    if store.set_if_absent(key, value.to_string().as_bytes())? {
        return Ok(value);
    }
    read(store, key)?.ok_or_else(|| {
        Failure::Retry(format!(
            "kv `{key}` existed, then vanished before it was read"
        ))
    })
}

/// The decimal value under `key`, if any.
pub fn read(store: &impl Store, key: &str) -> Result<Option<i64>> {
    match store.get(key)? {
        None => Ok(None),
        Some(bytes) => model::parse_stored(key, &bytes)
            .map(Some)
            .map_err(Failure::Reject),
    }
}

/// What [`settle`] found once the entry was in its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The entry's shard.
    pub shard: Shard,
    /// The shard's sum afterwards (it includes the entry).
    pub shard_sum: i64,
    /// The account's total afterwards.
    pub total: i64,
}

/// Steps 1 to 3 of the module docs: puts `amount` of `entry` into its shard sum exactly once
/// and recomputes the account's total. Call it after the entry's amount is recorded (its
/// usage key), with that recorded amount, on every delivery: a repeat changes nothing.
pub fn settle(
    store: &impl Store,
    meter: Meter,
    account: &str,
    entry: &str,
    amount: i64,
) -> Result<Settled> {
    let shard = Shard::of(entry);
    let key = model::shard_key(meter, account, shard);
    if amount < 0 {
        return Err(Failure::Reject(format!(
            "{meter} for {entry} of {account} is {amount}: a charge is never negative"
        )));
    }
    let shard_sum = if amount == 0 {
        // Nothing to add; a zero amount must never be added (see the module docs).
        read_shard(store, &key)?.1.sum
    } else {
        let counted = model::counted_key(meter, account, entry);
        let (value, counted_already) = add(store, meter, account, &key, entry, amount)?;
        if !counted_already {
            store.set_if_absent(&counted, amount.to_string().as_bytes())?;
        }
        value.sum
    };
    let total = update_total(store, meter, account, shard, shard_sum)?;
    Ok(Settled {
        shard,
        shard_sum,
        total,
    })
}

/// Step 1: adds `amount` unless the entry is pending or counted, dropping the pending entries
/// already marked counted. Returns the shard value as last read or written, and whether the
/// entry was already marked counted.
fn add(
    store: &impl Store,
    meter: Meter,
    account: &str,
    key: &str,
    entry: &str,
    amount: i64,
) -> Result<(ShardValue, bool)> {
    let counted = model::counted_key(meter, account, entry);
    for _ in 0..TRIES {
        let (old, mut value) = read_shard(store, key)?;
        // Read after the shard value: the proof in the module docs depends on this order.
        if store.get(&counted)?.is_some() {
            // Counted: its add is in the shard, but the value read before the mark may be
            // from before the add (a read may trail writes made elsewhere). The shard read
            // after the mark is from after it, so its sum includes the add: the total is
            // raised to that.
            let (_, now) = read_shard(store, key)?;
            return Ok((now, true));
        }
        if value.pending.contains(entry) {
            return Ok((value, false));
        }
        let mut marked = Vec::new();
        for other in &value.pending {
            if store
                .get(&model::counted_key(meter, account, other))?
                .is_some()
            {
                marked.push(other.clone());
            }
        }
        for other in &marked {
            value.pending.remove(other);
        }
        value.sum = value.sum.checked_add(amount).ok_or_else(|| {
            Failure::Reject(format!("the sum in kv `{key}` would overflow 64 bits"))
        })?;
        value.pending.insert(entry.to_owned());
        if store.compare_and_swap(key, old.as_deref(), &value.to_bytes())? {
            return Ok((value, false));
        }
    }
    Err(gave_up(key))
}

/// Step 3: makes the account's shard-sums record hold at least `shard_sum` for `shard`,
/// then the total at least the record's sum. Returns the total afterwards.
pub fn update_total(
    store: &impl Store,
    meter: Meter,
    account: &str,
    shard: Shard,
    shard_sum: i64,
) -> Result<i64> {
    let key = model::sums_key(meter, account);
    let sums = 'swap: {
        for _ in 0..TRIES {
            let raw = store.get(&key)?;
            let mut sums = match &raw {
                Some(bytes) => ShardSums::parse(&key, bytes).map_err(Failure::Reject)?,
                // First use (or data from a version without the record): start from what
                // every shard holds now.
                None => ShardSums::read_shards(store, meter, account)?,
            };
            let slot = &mut sums.0[usize::from(shard.index())];
            if *slot >= shard_sum && raw.is_some() {
                break 'swap sums;
            }
            *slot = (*slot).max(shard_sum);
            if store.compare_and_swap(&key, raw.as_deref(), &sums.to_bytes())? {
                break 'swap sums;
            }
        }
        return Err(gave_up(&key));
    };
    let total = sums
        .total()
        .ok_or_else(|| Failure::Reject(format!("the total of {account} overflows 64 bits")))?;
    at_least(store, &model::total_key(meter, account), total)
}

/// Raises the decimal under `key` to `value` if it is lower or absent; returns what it holds
/// afterwards.
fn at_least(store: &impl Store, key: &str, value: i64) -> Result<i64> {
    for _ in 0..TRIES {
        let raw = store.get(key)?;
        if let Some(bytes) = &raw {
            let current = model::parse_stored(key, bytes).map_err(Failure::Reject)?;
            if current >= value {
                return Ok(current);
            }
        }
        if store.compare_and_swap(key, raw.as_deref(), value.to_string().as_bytes())? {
            return Ok(value);
        }
    }
    Err(gave_up(key))
}

fn gave_up(key: &str) -> Failure {
    Failure::Retry(format!(
        "kv `{key}` kept changing; gave up after {TRIES} tries"
    ))
}

/// A shard value as stored (the raw bytes, for the swap) and as read.
fn read_shard(store: &impl Store, key: &str) -> Result<(Option<Vec<u8>>, ShardValue)> {
    let raw = store.get(key)?;
    let value = match &raw {
        None => ShardValue::default(),
        Some(bytes) => ShardValue::parse(key, bytes).map_err(Failure::Reject)?,
    };
    Ok((raw, value))
}

/// A shard's sum and its pending entries (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardValue {
    /// The sum of the amounts added to the shard.
    pub sum: i64,
    /// Entries added but not yet marked counted.
    pub pending: BTreeSet<String>,
}

impl ShardValue {
    /// Reads a stored shard value: a decimal sum, then one pending entry per line. The error
    /// names the key.
    pub fn parse(key: &str, bytes: &[u8]) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "kv `{key}` holds {:?}, not a shard sum (a decimal integer, then one entry per \
                 line)",
                String::from_utf8_lossy(bytes)
            )
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let mut lines = text.split('\n');
        let sum = lines
            .next()
            .and_then(|first| first.parse::<i64>().ok())
            .ok_or_else(bad)?;
        let pending = lines
            .map(|line| {
                if line.is_empty() {
                    Err(bad())
                } else {
                    Ok(line.to_owned())
                }
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self { sum, pending })
    }

    /// The stored form; with nothing pending, just the decimal sum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = self.sum.to_string();
        for entry in &self.pending {
            text.push('\n');
            text.push_str(entry);
        }
        text.into_bytes()
    }
}

/// The account's shard sums as last recorded for its total: one per shard, each a sum that
/// shard held at some moment (so never more than it holds now).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSums(pub [i64; model::SHARDS as usize]);

impl ShardSums {
    /// What every shard of the account holds now.
    fn read_shards(store: &impl Store, meter: Meter, account: &str) -> Result<Self> {
        let mut sums = Self::default();
        for shard in Shard::all() {
            let key = model::shard_key(meter, account, shard);
            sums.0[usize::from(shard.index())] = read_shard(store, &key)?.1.sum;
        }
        Ok(sums)
    }

    /// The sum of the sums, unless it overflows.
    pub fn total(&self) -> Option<i64> {
        self.0.iter().try_fold(0i64, |sum, &s| sum.checked_add(s))
    }

    /// Reads a stored record: one decimal per shard, in shard order, one per line. The error
    /// names the key.
    pub fn parse(key: &str, bytes: &[u8]) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "kv `{key}` holds {:?}, not {} shard sums (one decimal integer per line)",
                String::from_utf8_lossy(bytes),
                model::SHARDS
            )
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let mut sums = Self::default();
        let mut lines = text.split('\n');
        for slot in &mut sums.0 {
            *slot = lines
                .next()
                .and_then(|line| line.parse().ok())
                .ok_or_else(bad)?;
        }
        match lines.next() {
            None => Ok(sums),
            Some(_) => Err(bad()),
        }
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let lines: Vec<String> = self.0.iter().map(i64::to_string).collect();
        lines.join("\n").into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    use super::*;

    /// The store: one map, every operation atomic.
    #[derive(Default)]
    struct Map(RefCell<BTreeMap<String, Vec<u8>>>);

    impl Store for Map {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
            Ok(self.0.borrow().get(key).cloned())
        }
        fn set_if_absent(&self, key: &str, value: &[u8]) -> Result<bool> {
            let mut map = self.0.borrow_mut();
            if map.contains_key(key) {
                return Ok(false);
            }
            map.insert(key.to_owned(), value.to_vec());
            Ok(true)
        }
        fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool> {
            let mut map = self.0.borrow_mut();
            if map.get(key).map(Vec::as_slice) != expected {
                return Ok(false);
            }
            map.insert(key.to_owned(), new.to_vec());
            Ok(true)
        }
    }

    /// What happens before the `at`-th operation (counting from 0) of one delivery.
    enum Gap<'a> {
        /// Other deliveries run to their end in the gap, then this one goes on.
        Run(Box<dyn FnOnce() + 'a>),
        /// The delivery crashes there: that operation and every later one fail.
        Crash,
    }

    /// A handler's view of the map, interrupted at one operation.
    struct Paused<'a> {
        map: &'a Map,
        at: usize,
        ops: Cell<usize>,
        gap: RefCell<Option<Gap<'a>>>,
        crashed: Cell<bool>,
    }

    impl<'a> Paused<'a> {
        fn new(map: &'a Map, at: usize, gap: Gap<'a>) -> Self {
            Self {
                map,
                at,
                ops: Cell::new(0),
                gap: RefCell::new(Some(gap)),
                crashed: Cell::new(false),
            }
        }

        /// Runs the gap if the delivery ended before reaching it (deliveries one after
        /// the other).
        fn after_the_end(&self) {
            if let Some(Gap::Run(others)) = self.gap.borrow_mut().take() {
                others();
            }
        }

        fn before_op(&self) -> Result<()> {
            let n = self.ops.get();
            self.ops.set(n + 1);
            if n == self.at {
                match self.gap.borrow_mut().take() {
                    Some(Gap::Run(others)) => others(),
                    Some(Gap::Crash) => self.crashed.set(true),
                    None => {}
                }
            }
            if self.crashed.get() {
                return Err(Failure::Retry("crashed".into()));
            }
            Ok(())
        }
    }

    impl Store for Paused<'_> {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
            self.before_op()?;
            self.map.get(key)
        }
        fn set_if_absent(&self, key: &str, value: &[u8]) -> Result<bool> {
            self.before_op()?;
            self.map.set_if_absent(key, value)
        }
        fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool> {
            self.before_op()?;
            self.map.compare_and_swap(key, expected, new)
        }
    }

    const M: Meter = Meter::LeaseMs;

    /// One delivery of a charge: records the amount, then settles it.
    fn deliver(store: &impl Store, entry: &str, amount: i64) -> Result<Settled> {
        let recorded = record(store, &model::usage_key(M, "smoke", entry), amount)?;
        settle(store, M, "smoke", entry, recorded)
    }

    /// How many operations one uninterrupted delivery of `entry` makes.
    fn ops_of_one_delivery(entry: &str, warm: bool) -> usize {
        let map = account(warm);
        let counting = Paused::new(&map, usize::MAX, Gap::Crash);
        deliver(&counting, entry, 7).unwrap();
        counting.ops.get()
    }

    /// A fresh account, or (`warm`) one already charged [`WARM`] for another entry of
    /// another shard, so the sums record exists and the steady path runs.
    fn account(warm: bool) -> Map {
        let map = Map::default();
        if warm {
            assert_ne!(Shard::of("run-0"), Shard::of("run-1"));
            deliver(&map, "run-0", WARM).unwrap();
        }
        map
    }

    /// What [`account`] charged before the test's deliveries.
    const WARM: i64 = 3;

    /// The account's total, every shard's sum, and that every entry left pending is marked
    /// counted (its delivery finished; the next add to its shard drops it).
    fn check(map: &Map, expected: i64, context: &str) {
        let total = read(map, &model::total_key(M, "smoke")).unwrap();
        assert_eq!(total, Some(expected), "total, {context}");
        let mut shards = 0;
        for shard in Shard::all() {
            let (_, value) = read_shard(map, &model::shard_key(M, "smoke", shard)).unwrap();
            shards += value.sum;
            for entry in &value.pending {
                let mark = map.get(&model::counted_key(M, "smoke", entry)).unwrap();
                assert!(mark.is_some(), "{entry} pending and not counted, {context}");
            }
        }
        assert_eq!(shards, expected, "sum of the shards, {context}");
        let sums = map.get(&model::sums_key(M, "smoke")).unwrap().unwrap();
        let sums = ShardSums::parse("sums", &sums).unwrap();
        assert_eq!(sums.total(), Some(expected), "the sums record, {context}");
    }

    #[test]
    fn shard_value_round_trips_and_reads_the_old_plain_sum() {
        let value = ShardValue {
            sum: 42,
            pending: ["r-1".to_owned(), "r-2".to_owned()].into(),
        };
        assert_eq!(value.to_bytes(), b"42\nr-1\nr-2");
        assert_eq!(ShardValue::parse("k", &value.to_bytes()), Ok(value));
        assert_eq!(
            ShardValue::parse("k", b"1200"),
            Ok(ShardValue {
                sum: 1200,
                pending: BTreeSet::new()
            })
        );
        for bad in [&b""[..], b"x", b"12\n", b"12\n\nr", &[0xff]] {
            let e = ShardValue::parse("lease-ms/shard/smoke/03", bad).unwrap_err();
            assert!(e.contains("lease-ms/shard/smoke/03"), "{e}");
        }
    }

    #[test]
    fn one_delivery_counts_once_and_the_next_add_to_its_shard_drops_it_from_pending() {
        let map = Map::default();
        let settled = deliver(&map, "run-1", 7).unwrap();
        assert_eq!((settled.shard_sum, settled.total), (7, 7));
        deliver(&map, "run-1", 7).unwrap();
        check(&map, 7, "a duplicate");
        let counted = map.get(&model::counted_key(M, "smoke", "run-1")).unwrap();
        assert_eq!(counted.as_deref(), Some(&b"7"[..]));
        let key = model::shard_key(M, "smoke", Shard::of("run-1"));
        let pending = |map: &Map| read_shard(map, &key).unwrap().1.pending;
        assert_eq!(
            pending(&map),
            ["run-1".to_owned()].into(),
            "left to the next add"
        );
        let next = (2..)
            .map(|i| format!("run-{i}"))
            .find(|e| Shard::of(e) == Shard::of("run-1"))
            .unwrap();
        deliver(&map, &next, 5).unwrap();
        assert_eq!(
            pending(&map),
            [next].into(),
            "run-1 dropped, the new one left"
        );
        check(&map, 12, "the next add");
    }

    #[test]
    fn a_delivery_of_the_same_entry_in_any_gap_counts_once() {
        for warm in [false, true] {
            let n = ops_of_one_delivery("run-1", warm);
            if warm {
                // The flat cost: record (1), add (3), mark (1), record of sums (2), total (2).
                assert_eq!(n, 9, "a delivery to a warm account");
            }
            for at in 0..=n {
                let map = account(warm);
                let first = Paused::new(
                    &map,
                    at,
                    Gap::Run(Box::new(|| {
                        deliver(&map, "run-1", 7).unwrap();
                    })),
                );
                deliver(&first, "run-1", 7).unwrap();
                first.after_the_end();
                let expected = 7 + if warm { WARM } else { 0 };
                check(
                    &map,
                    expected,
                    &format!("second delivery before operation {at}"),
                );
            }
        }
    }

    #[test]
    fn a_crash_before_any_operation_is_repaired_by_the_redelivery() {
        for warm in [false, true] {
            let n = ops_of_one_delivery("run-1", warm);
            for at in 0..=n {
                let map = account(warm);
                let crashing = Paused::new(&map, at, Gap::Crash);
                let crashed = deliver(&crashing, "run-1", 7).is_err();
                assert_eq!(crashed, at < n, "crash before operation {at}");
                deliver(&map, "run-1", 7).unwrap();
                let expected = 7 + if warm { WARM } else { 0 };
                check(&map, expected, &format!("crash before operation {at}"));
            }
        }
    }

    #[test]
    fn nested_deliveries_and_a_crash_in_any_two_gaps_count_once() {
        // A pauses before its operation `a`. In that gap D crashes before its operation `b`,
        // then B runs and pauses before its operation `b`, where C runs whole.
        let n = ops_of_one_delivery("run-1", false);
        for a in 0..=n {
            for b in 0..=n {
                let map = Map::default();
                let outer = Paused::new(
                    &map,
                    a,
                    Gap::Run(Box::new(|| {
                        let crashing = Paused::new(&map, b, Gap::Crash);
                        // D may have started after A finished its add, so it may take fewer
                        // operations than `b` and not crash at all; both are fine.
                        let _ = deliver(&crashing, "run-1", 7);
                        let inner = Paused::new(
                            &map,
                            b,
                            Gap::Run(Box::new(|| {
                                deliver(&map, "run-1", 7).unwrap();
                            })),
                        );
                        deliver(&inner, "run-1", 7).unwrap();
                    })),
                );
                deliver(&outer, "run-1", 7).unwrap();
                check(&map, 7, &format!("gaps at {a} and {b}"));
            }
        }
    }

    #[test]
    fn another_entry_of_the_same_or_another_shard_in_any_gap_adds_up() {
        let first = "run-1";
        let shard = Shard::of(first);
        let entry_where = |same: bool| {
            (2..)
                .map(|i| format!("run-{i}"))
                .find(|e| (Shard::of(e) == shard) == same)
                .unwrap()
        };
        let n = ops_of_one_delivery(first, false);
        // The same shard races on the shard value, another shard on the sums record.
        for second in [entry_where(true), entry_where(false)] {
            for at in 0..=n {
                let map = Map::default();
                let paused = Paused::new(
                    &map,
                    at,
                    Gap::Run(Box::new(|| {
                        deliver(&map, &second, 5).unwrap();
                    })),
                );
                deliver(&paused, first, 7).unwrap();
                paused.after_the_end();
                check(&map, 12, &format!("{second} before operation {at}"));
            }
        }
    }

    /// A view whose first read of `key` returns `stale` (a copy of the bucket that trails a
    /// write made elsewhere); every other operation sees the map as it is.
    struct StaleOnce<'a> {
        map: &'a Map,
        key: String,
        stale: RefCell<Option<Option<Vec<u8>>>>,
    }

    impl Store for StaleOnce<'_> {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
            if key == self.key
                && let Some(stale) = self.stale.borrow_mut().take()
            {
                return Ok(stale);
            }
            self.map.get(key)
        }
        fn set_if_absent(&self, key: &str, value: &[u8]) -> Result<bool> {
            self.map.set_if_absent(key, value)
        }
        fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool> {
            self.map.compare_and_swap(key, expected, new)
        }
    }

    #[test]
    fn a_redelivery_that_reads_the_shard_from_before_its_add_still_raises_the_total() {
        // The first delivery added and marked the entry, then crashed before the total (the
        // last add to its shard). The redelivery runs on a host whose first read of the shard
        // trails that add; it then sees the mark.
        let map = account(true);
        let key = model::shard_key(M, "smoke", Shard::of("run-1"));
        let before = map.get(&key).unwrap();
        // Record (1), add (3), mark (1): the crash comes before the sums record.
        let crashing = Paused::new(&map, 5, Gap::Crash);
        assert!(deliver(&crashing, "run-1", 7).is_err());
        assert!(
            map.get(&model::counted_key(M, "smoke", "run-1"))
                .unwrap()
                .is_some()
        );
        let trailing = StaleOnce {
            map: &map,
            key,
            stale: RefCell::new(Some(before)),
        };
        let settled = deliver(&trailing, "run-1", 7).unwrap();
        assert_eq!(settled.total, 7 + WARM);
        check(
            &map,
            7 + WARM,
            "after a redelivery that read a trailing shard",
        );
    }

    #[test]
    fn an_account_billed_before_the_sums_record_keeps_its_total() {
        // Data from a version that summed every shard into the total and kept no record.
        let map = Map::default();
        for (entry, amount) in [("old-1", 100), ("old-2", 20)] {
            let key = model::shard_key(M, "smoke", Shard::of(entry));
            map.0
                .borrow_mut()
                .insert(key, amount.to_string().into_bytes());
        }
        assert_ne!(Shard::of("old-1"), Shard::of("old-2"));
        map.0
            .borrow_mut()
            .insert(model::total_key(M, "smoke"), b"120".to_vec());
        let settled = deliver(&map, "run-1", 7).unwrap();
        assert_eq!(settled.total, 127);
        check(&map, 127, "after the upgrade");
    }

    #[test]
    fn shard_sums_round_trip_and_reject_garbage() {
        let mut sums = ShardSums::default();
        sums.0[3] = 42;
        sums.0[15] = -1;
        let bytes = sums.to_bytes();
        assert_eq!(bytes, b"0\n0\n0\n42\n0\n0\n0\n0\n0\n0\n0\n0\n0\n0\n0\n-1");
        assert_eq!(ShardSums::parse("k", &bytes), Ok(sums));
        let mut seventeen = bytes.clone();
        seventeen.extend_from_slice(b"\n0");
        for bad in [&b""[..], b"1\n2", &seventeen, b"x", &[0xff]] {
            let e = ShardSums::parse("lease-ms/sums/smoke", bad).unwrap_err();
            assert!(e.contains("lease-ms/sums/smoke"), "{e}");
        }
        let huge = ShardSums([i64::MAX; 16]);
        assert_eq!(huge.total(), None);
    }

    #[test]
    fn a_zero_amount_adds_nothing_and_still_writes_the_total() {
        let map = Map::default();
        let settled = deliver(&map, "run-1", 0).unwrap();
        assert_eq!(settled.total, 0);
        check(&map, 0, "zero");
        assert_eq!(
            map.get(&model::counted_key(M, "smoke", "run-1")).unwrap(),
            None
        );
    }

    #[test]
    fn a_negative_amount_is_refused_and_changes_nothing() {
        let map = Map::default();
        let Err(Failure::Reject(reason)) = settle(&map, M, "smoke", "run-1", -5) else {
            panic!("a negative amount must be refused")
        };
        assert!(
            reason.contains("-5") && reason.contains("run-1"),
            "{reason}"
        );
        assert!(map.0.borrow().is_empty());
    }

    #[test]
    fn a_corrupt_shard_value_rejects_and_names_the_key() {
        let map = Map::default();
        let key = model::shard_key(M, "smoke", Shard::of("run-1"));
        map.0.borrow_mut().insert(key.clone(), b"lots".to_vec());
        let Err(Failure::Reject(reason)) = deliver(&map, "run-1", 7) else {
            panic!("a corrupt shard must reject")
        };
        assert!(reason.contains(&key), "{reason}");
    }
}
