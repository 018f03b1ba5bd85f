//! What one cached copy costs: the replica cache holds one
//! `(ObjectKey, ReplicaRecord)` per copy, so at 100,000 copies every byte of
//! a record is 100 KB of the controller's RSS (docs/benchmarks.md, scale).
//!
//! Counted with a counting global allocator around
//! [`ReplicaRecord::from_meta`] over copies shaped like the scale bench's (a
//! Secret copy as our write leaves it: uid, resourceVersion, markers, content
//! hash, our managed fields over three data keys, no other label or
//! annotation). Besides the bytes asked for, the test adds up what glibc's
//! malloc takes for them (a chunk of `max(32, n + 8 rounded up to 16)` bytes on
//! 64-bit Linux), the figure RSS grows with. `cargo test --test record_memory
//! -- --nocapture` prints the figures.
//!
//! Measured (x86_64, glibc), per copy, record only (its key is the same
//! before and after: 56 bytes inline, 2 allocations, 64 bytes of chunks):
//!
//! | | inline | heap allocations | heap asked | malloc chunks |
//! |---|---|---|---|---|
//! | before (`e2930b3`: `String`s, hex hashes) | 168 | 5 | 115 | 208 |
//! | now (`Uid`, `ResourceVersion`, `ShortHash`, `Box<str>`) | 128 | 1 | 8 | 32 |
//!
//! The cache's hash table holds the inline part of a key and a record per
//! slot, at a load of at most 7/8 (about 3/4 at 100,000 copies in 131,072
//! slots), so each inline byte costs about 1.3 bytes there.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use push_to_k8s::model::kinds::Kind;
use push_to_k8s::model::records::{ObjectKey, ReplicaRecord};
use push_to_k8s::model::replica::Replica;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_CHUNKS: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);

/// What glibc's malloc takes for `n` bytes on 64-bit Linux.
fn chunk(n: usize) -> isize {
    ((n + 8).div_ceil(16) * 16).max(32) as isize
}

fn count(size: usize, sign: isize) {
    LIVE_BYTES.fetch_add(sign * size as isize, Ordering::Relaxed);
    LIVE_CHUNKS.fetch_add(sign * chunk(size), Ordering::Relaxed);
    LIVE_ALLOCS.fetch_add(sign, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> [isize; 3] {
    [
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_CHUNKS.load(Ordering::Relaxed),
        LIVE_ALLOCS.load(Ordering::Relaxed),
    ]
}

const SRC: &str = "push-to-k8s";
const N: usize = 2_000;

/// The metadata of copy `i`, as the replica watch receives it.
fn copy_meta(i: usize) -> ObjectMeta {
    let name = format!("scale-{:02}", i % 20);
    let source = Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(SRC.into()),
            labels: Some(BTreeMap::from([(
                push_to_k8s::model::vocabulary::SOURCE_LABEL_KEY.to_string(),
                push_to_k8s::model::vocabulary::SOURCE_LABEL_VALUE.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(
            ["username", "password", "ca.crt"]
                .map(|k| (k.to_string(), ByteString(vec![b'x'; 32])))
                .into(),
        ),
        ..Default::default()
    };
    let mut meta = Replica::render(&source, SRC)
        .to_secret(&format!("bench-t{:04}", i / 20))
        .metadata;
    meta.uid = Some(format!("0c9d4a7e-5b1f-4e2a-9c3d-{i:012x}"));
    meta.resource_version = Some(format!("{}", 1_000_000 + i));
    let keys: serde_json::Map<String, serde_json::Value> = ["username", "password", "ca.crt"]
        .iter()
        .map(|k| (format!("f:{k}"), serde_json::json!({})))
        .collect();
    meta.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(push_to_k8s::model::vocabulary::FIELD_MANAGER.into()),
        operation: Some("Apply".into()),
        api_version: Some("v1".into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(serde_json::json!({ "f:data": keys }))),
        ..Default::default()
    }]);
    meta
}

/// Heap per item (bytes asked, malloc chunks, allocations) of `N` items made
/// by `make`, the vector holding them not counted.
fn heap_per<T>(metas: &[ObjectMeta], make: impl Fn(&ObjectMeta) -> T) -> [f64; 3] {
    let mut items: Vec<T> = Vec::with_capacity(metas.len());
    let before = live();
    items.extend(metas.iter().map(make));
    let after = live();
    let per = |i: usize| (after[i] - before[i]) as f64 / items.len() as f64;
    let out = [per(0), per(1), per(2)];
    drop(items);
    out
}

#[test]
fn a_cached_copy_costs_what_the_docs_say() {
    let metas: Vec<ObjectMeta> = (0..N).map(copy_meta).collect();
    let ingest = |m: &ObjectMeta| ReplicaRecord::from_meta(Kind::Secret, m, SRC).expect("a copy");
    let record = heap_per(&metas, |m| ingest(m).1);
    let key = heap_per(&metas, |m| ingest(m).0);
    let inline = std::mem::size_of::<ReplicaRecord>();
    let key_inline = std::mem::size_of::<ObjectKey>();
    println!(
        "ReplicaRecord: {inline} bytes inline; heap per record: {:.1} allocations, {:.1} bytes asked, {:.1} bytes of malloc chunks",
        record[2], record[0], record[1]
    );
    println!(
        "ObjectKey: {key_inline} bytes inline; heap per key: {:.1} allocations, {:.1} bytes asked, {:.1} bytes of malloc chunks",
        key[2], key[0], key[1]
    );
    // Bounds with a little room, so that growth is a decision, not an accident.
    assert!(inline <= 128, "ReplicaRecord grew to {inline} bytes inline");
    assert!(
        record[2] <= 1.0 && record[1] <= 32.0,
        "a record's heap grew: {record:?}"
    );
}
