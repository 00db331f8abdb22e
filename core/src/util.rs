//! Small helpers shared by the runtime: a seeded random generator and time formatting.

/// SplitMix64: a tiny, seeded, deterministic generator for randomized tests and jitter.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The message of a caught panic (`panic!("...")` payloads are `&str` or `String`); empty
/// when the payload is something else.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A function of this executable named across its processes: its code's offset from an
/// anchor function (both lie in the same image, so the offset is the same in every process
/// started from it, wherever the image is loaded) and its first code bytes, checked before
/// use. Libraries use it to send a plain `fn` (a train loop, a trainable) to worker processes,
/// which run the driver's own executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CodeRef {
    offset: i64,
    fingerprint: u64,
}

#[inline(never)]
fn anchor() -> u64 {
    std::hint::black_box(0x5eed)
}

fn anchor_addr() -> usize {
    anchor as fn() -> u64 as usize
}

fn code_bytes(addr: usize) -> u64 {
    // Safety: `addr` is the address of a function of this executable: its text is mapped and
    // readable, and a function's first eight bytes lie within the text segment.
    unsafe { std::ptr::read_unaligned(addr as *const u64) }
}

impl CodeRef {
    /// The reference of the function at `addr` (`f as usize` of a `fn` pointer).
    pub fn of_addr(addr: usize) -> Self {
        CodeRef { offset: addr as i64 - anchor_addr() as i64, fingerprint: code_bytes(addr) }
    }

    /// The function's address in this process, once its code is found where expected.
    pub fn resolve(self) -> Result<usize, String> {
        let addr = (anchor_addr() as i64 + self.offset) as usize;
        if code_bytes(addr) != self.fingerprint {
            return Err("the function is not at the same place in this worker's executable: workers must run the driver's \
                        own executable (a different build?)"
                .into());
        }
        Ok(addr)
    }
}

/// Events that a background thread of an actor sends, handed to callers of a polling method:
/// the actor's `start` opens it and gives the sender to the thread, its `poll` drains it.
pub struct Mailbox<T> {
    rx: std::sync::Mutex<Option<std::sync::mpsc::Receiver<T>>>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox { rx: std::sync::Mutex::new(None) }
    }
}

impl<T> Mailbox<T> {
    pub fn new() -> Self {
        Mailbox::default()
    }

    /// Opens the mailbox once; the sender goes to the thread that produces the events.
    pub fn open(&self) -> Result<std::sync::mpsc::Sender<T>, String> {
        let mut rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        if rx.is_some() {
            return Err("this actor was started already".into());
        }
        let (tx, r) = std::sync::mpsc::channel();
        *rx = Some(r);
        Ok(tx)
    }

    /// The events since the last poll; waits up to `wait` for the first.
    pub fn poll(&self, wait: std::time::Duration) -> Vec<T> {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rx) = rx.as_ref() else { return Vec::new() };
        let mut out = Vec::new();
        if let Ok(e) = rx.recv_timeout(wait) {
            out.push(e);
            while let Ok(e) = rx.try_recv() {
                out.push(e);
            }
        }
        out
    }
}
