//! The object store under pressure: a store far smaller than what is put spills to disk, and
//! every object comes back intact.

mod common;

use common::init;
use flare::prelude::*;

#[flare::remote]
fn checksum(b: Buffer) -> u64 {
    b.iter().map(|x| *x as u64).sum()
}

#[test]
fn a_full_store_spills_and_loses_nothing() {
    init(Config::new().num_cpus(2.0).object_store_memory(32 << 20));
    let n = 24usize;
    let size = 4usize << 20;
    let refs: Vec<ObjectRef<Buffer>> = (0..n).map(|i| flare::put(&Buffer::from(vec![i as u8; size])).unwrap()).collect();
    let res = flare::cluster_resources().unwrap();
    assert!(res.spilled_bytes_total >= (n * size) as u64 - (32 << 20), "spilled {} bytes", res.spilled_bytes_total);
    assert!(res.store_used <= 32 << 20, "store holds {} bytes, over its capacity", res.store_used);
    for (i, r) in refs.iter().enumerate() {
        let b = r.get().unwrap();
        assert_eq!(b.len(), size);
        assert!(b.iter().all(|x| *x == i as u8), "object {i} changed");
    }
    // Spilled objects are read by tasks too.
    let sums: Vec<_> = refs.iter().map(checksum::remote).collect();
    let sums = flare::get_all(&sums).unwrap();
    for (i, s) in sums.iter().enumerate() {
        assert_eq!(*s, (i * size) as u64);
    }
    let locations = flare::list(flare::StateQuery::Objects).unwrap().objects;
    assert!(locations.iter().any(|o| o.location == flare::state::ObjectLocation::Spilled));
}
