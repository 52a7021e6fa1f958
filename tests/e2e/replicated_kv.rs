//! Key-value buckets as the cluster sees them: every bucket sandbus makes or opens is read
//! through its stream leader (JetStream direct get off, which async-nats turns on, so a read
//! cannot miss an acknowledged write by landing on a lagging replica), and a compare-and-swap
//! that loses a race on a replicated bucket of a NATS cluster is reported as lost
//! (`Ok(false)`), not as the bus being unavailable.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use sandbus::bus::NatsKv;
use sandbus::imports::kv::KvStore as _;
use tokio::sync::Barrier;

use super::cluster::Cluster;

/// Whether the stream of KV bucket `bucket` allows direct get, as the server says now.
async fn allows_direct(js: &jetstream::Context, bucket: &str) -> bool {
    let mut stream = js.get_stream(format!("KV_{bucket}")).await.unwrap();
    stream.info().await.unwrap().config.allow_direct
}

/// Creates `bucket` the way async-nats (and sandbus before it turned direct get off) does:
/// with direct get on. Checks that it is on.
async fn create_with_direct_get(js: &jetstream::Context, bucket: &str) {
    js.create_key_value(kv::Config {
        bucket: bucket.to_owned(),
        history: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        allows_direct(js, bucket).await,
        "async-nats creates {bucket} with direct get on; this test relies on it"
    );
}

#[test]
fn every_bucket_a_daemon_sets_up_is_read_through_its_stream_leader() {
    let mut cluster = Cluster::new();
    // A bucket an older version made, with direct get on.
    let client = cluster.connect();
    cluster.rt.block_on(async {
        create_with_direct_get(&jetstream::new(client), "sandbus-kv").await;
    });
    cluster.start_daemon("h1");
    let client = cluster.connect();
    let buckets: Vec<(String, bool)> = cluster.rt.block_on(async {
        use futures::TryStreamExt as _;
        let js = jetstream::new(client);
        let streams: Vec<jetstream::stream::Info> = js.streams().try_collect().await.unwrap();
        streams
            .into_iter()
            .filter_map(|info| {
                let bucket = info.config.name.strip_prefix("KV_")?.to_owned();
                Some((bucket, info.config.allow_direct))
            })
            .collect()
    });
    let names: Vec<&str> = buckets.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(sandbus::bus::names::KV_BUCKETS.len(), 10);
    for expected in sandbus::bus::names::KV_BUCKETS {
        assert!(names.contains(expected), "{expected} not in {names:?}");
    }
    let direct: Vec<&str> = buckets
        .iter()
        .filter(|(_, direct)| *direct)
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        direct.is_empty(),
        "buckets still allowing direct get: {direct:?}"
    );
}

#[test]
fn a_bucket_left_with_direct_get_is_switched_to_leader_reads_when_opened() {
    let cluster = Cluster::new();
    let client = cluster.connect();
    cluster.rt.block_on(async {
        let js = jetstream::new(client);
        create_with_direct_get(&js, "sandbus-kv").await;
        // A client opening it (the CLI's `sandbus kv`): the server's config is changed, and
        // the store it got reads with STREAM.MSG.GET (async-nats decides from the stream
        // info it cached when opening, so that must say direct get is off too).
        let opened = NatsKv::open(&js).await.unwrap();
        assert!(!allows_direct(&js, "sandbus-kv").await);
        assert!(!opened.bucket().stream.cached_info().config.allow_direct);
        opened.set("billing", "total", b"7".to_vec()).await.unwrap();
        assert_eq!(
            opened.get("billing", "total").await.unwrap(),
            Some(b"7".to_vec())
        );
        // A daemon ensuring one an older daemon made.
        create_with_direct_get(&js, "sandbus-leases").await;
        sandbus::bus::LeaseTable::ensure(&js, 1).await.unwrap();
        assert!(!allows_direct(&js, "sandbus-leases").await);
        // And a bucket it creates itself.
        js.delete_key_value("sandbus-kv").await.unwrap();
        let created = NatsKv::ensure(&js, 1, 1 << 20, -1).await.unwrap();
        assert!(!allows_direct(&js, "sandbus-kv").await);
        assert!(!created.bucket().stream.cached_info().config.allow_direct);
    });
}

/// Nodes of the NATS cluster, one client (and one kv store) per node.
const NODES: usize = 3;
/// Concurrent swappers per client.
const SWAPPERS_PER_NODE: usize = 4;
/// Compare-and-swaps each swapper attempts (won or lost).
const ATTEMPTS: usize = 15;
/// The counter's place in the guest kv bucket.
const NAMESPACE: &str = "race";
/// The counter's key.
const KEY: &str = "counter";

/// What one swapper saw: swaps won, swaps lost, calls that failed (with why), and reads on
/// another node right after a win that did not see the win.
#[derive(Default)]
struct Tally {
    won: u64,
    lost: u64,
    errors: Vec<String>,
    stale: Vec<String>,
}

/// Increments the counter `ATTEMPTS` times with compare-and-swap through `kv`, each time
/// reading the value first, then waiting at `start` for every other swapper so that the swaps
/// reach the stream leader together (which is when a clustered server refuses the losers with
/// 10164: another write of the key is still in process). After a win, reads the key back
/// through `other` (a client on another node), which must see at least the value written.
async fn swapper(kv: NatsKv, other: NatsKv, start: Arc<Barrier>) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..ATTEMPTS {
        let current = kv.get(NAMESPACE, KEY).await;
        start.wait().await;
        let current = match current {
            Ok(current) => current,
            Err(e) => {
                tally.errors.push(format!("get: {e}"));
                continue;
            }
        };
        let value: u64 = current
            .as_deref()
            .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
        let next = (value + 1).to_string().into_bytes();
        match kv
            .compare_and_swap(NAMESPACE, KEY, current.as_deref(), next)
            .await
        {
            Ok(true) => {
                tally.won += 1;
                let seen: u64 = match other.get(NAMESPACE, KEY).await {
                    Ok(Some(v)) => std::str::from_utf8(&v).unwrap().parse().unwrap(),
                    Ok(None) => 0,
                    Err(e) => {
                        tally.errors.push(format!("get on another node: {e}"));
                        continue;
                    }
                };
                if seen < value + 1 {
                    tally
                        .stale
                        .push(format!("wrote {}, another node read {seen}", value + 1));
                }
            }
            Ok(false) => tally.lost += 1,
            Err(e) => tally.errors.push(format!("compare-and-swap: {e}")),
        }
    }
    tally
}

/// Twelve swappers, four on a client of each node of a 3-node NATS cluster, increment one
/// key of an R3 guest kv bucket with compare-and-swap, all at once in each of their rounds.
/// A clustered nats-server refuses a write on a stale revision with JetStream error 10071,
/// or with 10164 when another write of the key is still in process (which async-nats does
/// not recognise); either must come back as a lost swap (`Ok(false)`), never as an error. The
/// final value is the number of swaps won, and a read on another node right after a win sees
/// it (the bucket reads through its stream leader).
///
/// The NATS cluster takes every place of the harness: it runs alone.
#[test]
fn cas_race_on_a_replicated_bucket_is_a_lost_race_not_unavailable() {
    let cluster = Cluster::with_nats_cluster(NODES);
    let urls: Vec<String> = (0..NODES).map(|node| cluster.node_url(node)).collect();
    let tallies = cluster.rt.block_on(async move {
        let mut stores = Vec::new();
        for url in &urls {
            let client = async_nats::connect(url.as_str()).await.unwrap();
            let js = jetstream::new(client);
            stores.push(NatsKv::ensure(&js, NODES, 1 << 20, -1).await.unwrap());
        }
        let replicas = stores[0].bucket().stream.cached_info().config.num_replicas;
        assert_eq!(replicas, NODES, "the bucket is replicated on every node");
        let start = Arc::new(Barrier::new(NODES * SWAPPERS_PER_NODE));
        let mut swappers = Vec::new();
        for node in 0..NODES {
            for _ in 0..SWAPPERS_PER_NODE {
                let kv = stores[node].clone();
                let other = stores[(node + 1) % NODES].clone();
                swappers.push(tokio::spawn(swapper(kv, other, start.clone())));
            }
        }
        let mut tallies = Vec::new();
        for swapper in swappers {
            tallies.push(swapper.await.unwrap());
        }
        let last = stores[0].get(NAMESPACE, KEY).await.unwrap();
        (tallies, last)
    });
    let (tallies, last) = tallies;
    let errors: Vec<&String> = tallies.iter().flat_map(|t| &t.errors).collect();
    assert!(
        errors.is_empty(),
        "{} calls failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let stale: Vec<&String> = tallies.iter().flat_map(|t| &t.stale).collect();
    assert!(stale.is_empty(), "reads missed a write: {stale:?}");
    let won: u64 = tallies.iter().map(|t| t.won).sum();
    let lost: u64 = tallies.iter().map(|t| t.lost).sum();
    let attempts = u64::try_from(NODES * SWAPPERS_PER_NODE * ATTEMPTS).unwrap();
    assert_eq!(won + lost, attempts);
    assert!(
        lost > 0,
        "no swap lost: the swappers never raced ({won} won)"
    );
    let last: u64 = last.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
    assert_eq!(last, won, "the counter counts every swap won, once");
}

/// JetStream API requests the server has answered so far (the account's counter).
async fn api_requests(js: &jetstream::Context) -> u64 {
    js.query_account().await.unwrap().requests.total
}

/// Reads `key` through `kv` until it holds `want` (the follow brings another store's write
/// within moments); panics after 5 s.
async fn eventually(kv: &NatsKv, key: &str, want: Option<&[u8]>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = kv.get(NAMESPACE, key).await.unwrap();
        if got.as_deref() == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{key} still reads {got:?}, not {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Two daemons' stores on one bucket, each following it as a daemon does: reads are served
/// by the store's own copy (no JetStream API request), a store reads its own writes at once,
/// another store's writes arrive within moments, and a conditional write based on a copy that
/// is behind is checked by the server (it fails, never overwrites the newer value).
#[test]
fn a_followed_store_reads_from_its_copy_and_conditional_writes_stay_checked_by_the_server() {
    let cluster = Cluster::new();
    let client = cluster.connect();
    cluster.rt.block_on(async move {
        let js = jetstream::new(client);
        let a = NatsKv::ensure(&js, 1, 1 << 20, -1).await.unwrap();
        let b = NatsKv::ensure(&js, 1, 1 << 20, -1).await.unwrap();
        a.set(NAMESPACE, "before", b"0".to_vec()).await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        for store in [&a, &b] {
            let store = store.clone();
            let stop = stop.clone();
            tokio::spawn(async move { store.follow(stop).await });
        }
        let patience = std::time::Duration::from_secs(10);
        assert!(a.usage_ready(patience).await && b.usage_ready(patience).await);
        // Its own writes, at once, every time.
        for i in 0..50 {
            let value = i.to_string().into_bytes();
            a.set(NAMESPACE, KEY, value.clone()).await.unwrap();
            assert_eq!(a.get(NAMESPACE, KEY).await.unwrap(), Some(value));
        }
        // Another store's write arrives; then reads cost the server nothing.
        eventually(&b, KEY, Some(b"49")).await;
        let before = api_requests(&js).await;
        for _ in 0..100 {
            assert_eq!(b.get(NAMESPACE, KEY).await.unwrap(), Some(b"49".to_vec()));
            assert_eq!(
                b.get(NAMESPACE, "before").await.unwrap(),
                Some(b"0".to_vec())
            );
            assert_eq!(b.get(NAMESPACE, "never").await.unwrap(), None);
        }
        let asked = api_requests(&js).await - before;
        assert!(
            asked <= 1,
            "300 reads made {asked} API requests besides the count"
        );
        // B swaps on what it read (49) just after A wrote 50: whether B's copy has 50 yet or
        // not, the swap must fail and 50 stay.
        a.set(NAMESPACE, KEY, b"50".to_vec()).await.unwrap();
        let swapped = b
            .compare_and_swap(NAMESPACE, KEY, Some(b"49"), b"stale".to_vec())
            .await
            .unwrap();
        assert!(!swapped, "a swap on a value that changed went through");
        assert_eq!(a.get(NAMESPACE, KEY).await.unwrap(), Some(b"50".to_vec()));
        // Set-if-absent and delete are conditional too.
        assert!(
            !b.compare_and_swap(NAMESPACE, KEY, None, b"x".to_vec())
                .await
                .unwrap()
        );
        assert!(b.delete(NAMESPACE, KEY).await.unwrap(), "it held 50");
        assert_eq!(
            b.get(NAMESPACE, KEY).await.unwrap(),
            None,
            "B reads its delete"
        );
        eventually(&a, KEY, None).await;
        assert!(!a.delete(NAMESPACE, KEY).await.unwrap(), "already gone");
        assert!(
            a.compare_and_swap(NAMESPACE, KEY, None, b"again".to_vec())
                .await
                .unwrap()
        );
        eventually(&b, KEY, Some(b"again")).await;
        stop.cancel();
    });
}
