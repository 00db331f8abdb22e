//! Local mode: the same programs run inside the driver process, for debugging.

use flare::prelude::*;

#[flare::remote]
fn whoami(x: u64) -> (u32, u64) {
    (std::process::id(), x * 2)
}

#[flare::remote]
fn nested(n: u64) -> flare::Result<u64> {
    let refs: Vec<_> = (0..n).map(whoami::remote).collect();
    Ok(flare::get_all(&refs)?.iter().map(|(_, v)| v).sum())
}

#[flare::remote]
fn explode() -> u8 {
    panic!("local boom")
}

struct Acc(Vec<u64>);

#[flare::actor]
impl Acc {
    fn new() -> Self {
        Acc(Vec::new())
    }
    fn push(&mut self, v: u64) -> usize {
        self.0.push(v);
        self.0.len()
    }
    async fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

#[test]
fn everything_runs_in_the_driver() {
    flare::init_with(Config::new().local_mode(true)).unwrap();
    let (pid, v) = whoami::remote(21).get().unwrap();
    assert_eq!(pid, std::process::id(), "local mode runs tasks in this process");
    assert_eq!(v, 42);
    assert_eq!(nested::remote(4).get().unwrap(), 12);
    let x = flare::put(&5u64).unwrap();
    assert_eq!(whoami::remote(&x).get().unwrap().1, 10);
    assert_eq!(explode::remote().get().unwrap_err().kind(), ErrorKind::UserPanic);
    let a = Acc::remote().name("acc").spawn().unwrap();
    a.push(3).get().unwrap();
    flare::get_actor::<Acc>("acc").unwrap().push(4).get().unwrap();
    assert_eq!(a.total().get().unwrap(), 7);
    flare::kill(&a).unwrap();
    assert_eq!(a.push(1).get().unwrap_err().kind(), ErrorKind::ActorDied);
    let big = flare::put(&Buffer::from(vec![9u8; 4 << 20])).unwrap();
    assert_eq!(big.get().unwrap().len(), 4 << 20);
}
