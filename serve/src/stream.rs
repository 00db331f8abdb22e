//! Streamed response bodies (HTTP chunked, and server-sent events): the producer runs on its
//! own thread in the replica's process and fills a bounded channel; the proxy drains it with
//! `stream_next` calls and writes the chunks as they come. A client that goes away cancels the
//! stream, and the producer's next `send` returns false.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// The header of a replica's response whose body is a stream (the stream's id in its process).
pub(crate) const STREAM_HEADER: &str = "x-flare-stream";
/// Chunks buffered ahead of the client: the producer waits when they are full.
const BUFFERED_CHUNKS: usize = 64;
/// The most bytes one `stream_next` returns.
const MAX_BATCH_BYTES: usize = 1 << 20;

static STREAMS: LazyLock<Mutex<HashMap<u64, Receiver<Vec<u8>>>>> = LazyLock::new(Default::default);
/// Streams cancelled while a `next` had taken them out of `STREAMS` (it drops them instead of
/// putting them back). Guarded by `STREAMS`'s lock: taken only while holding it.
static CANCELLED: LazyLock<Mutex<std::collections::HashSet<u64>>> = LazyLock::new(Default::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Where a streaming handler writes its body.
pub struct StreamSink {
    tx: SyncSender<Vec<u8>>,
    sse: bool,
}

impl StreamSink {
    /// Sends a chunk (for SSE: one `data:` event); false once the client is gone.
    pub fn send(&mut self, data: impl AsRef<[u8]>) -> bool {
        let data = data.as_ref();
        let chunk = if self.sse {
            let mut out = Vec::with_capacity(data.len() + 8);
            for line in data.split(|&b| b == b'\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            out.push(b'\n');
            out
        } else {
            data.to_vec()
        };
        self.tx.send(chunk).is_ok()
    }

    /// A named SSE event (`event: NAME`); plain chunks for non-SSE streams.
    pub fn event(&mut self, name: &str, data: impl AsRef<[u8]>) -> bool {
        if !self.sse {
            return self.send(data);
        }
        let mut out = format!("event: {name}\n").into_bytes();
        for line in data.as_ref().split(|&b| b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.push(b'\n');
        self.tx.send(out).is_ok()
    }
}

/// Starts a producer thread; its stream's id.
pub(crate) fn start(sse: bool, produce: Box<dyn FnOnce(&mut StreamSink) + Send>) -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = sync_channel(BUFFERED_CHUNKS);
    STREAMS.lock().unwrap_or_else(|p| p.into_inner()).insert(id, rx);
    let spawned = std::thread::Builder::new().name("flare-serve-stream".into()).spawn(move || {
        let mut sink = StreamSink { tx, sse };
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| produce(&mut sink))) {
            let msg = flare_core::util::panic_message(&*p);
            tracing::error!("a streaming handler panicked: {msg}");
            let _ = sink.event("error", format!("the handler panicked: {msg}"));
        }
    });
    if spawned.is_err() {
        STREAMS.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
    id
}

/// The chunks a stream has ready (waiting up to `wait` for the first), and whether it ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct StreamChunk {
    pub chunks: Vec<serde_bytes::ByteBuf>,
    pub done: bool,
}

pub(crate) fn next(id: u64, wait: Duration) -> Result<StreamChunk, String> {
    let rx = STREAMS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id)
        .ok_or_else(|| format!("no stream {id} in this replica (it ended or was cancelled)"))?;
    let mut out = StreamChunk::default();
    let mut bytes = 0;
    match rx.recv_timeout(wait) {
        Ok(c) => {
            bytes += c.len();
            out.chunks.push(serde_bytes::ByteBuf::from(c));
        }
        Err(RecvTimeoutError::Timeout) => {}
        Err(RecvTimeoutError::Disconnected) => out.done = true,
    }
    while !out.done && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(c) => {
                bytes += c.len();
                out.chunks.push(serde_bytes::ByteBuf::from(c));
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => out.done = true,
        }
    }
    let mut streams = STREAMS.lock().unwrap_or_else(|p| p.into_inner());
    // A cancel that came while this call waited wins: the stream goes.
    let cancelled = CANCELLED.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    if !out.done && !cancelled {
        streams.insert(id, rx);
    }
    Ok(out)
}

/// Drops a stream (its producer's next send returns false), also when a `next` call has it
/// out of the table right now (a client that leaves mid-call).
pub(crate) fn cancel(id: u64) {
    let mut streams = STREAMS.lock().unwrap_or_else(|p| p.into_inner());
    if streams.remove(&id).is_none() {
        let mut c = CANCELLED.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: ids of streams that ended on their own are not kept forever.
        if c.len() >= 4096 {
            c.clear();
        }
        c.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_cancel_while_a_next_waits_stops_the_producer() {
        let stopped = Arc::new(AtomicBool::new(false));
        let s = stopped.clone();
        let id = start(
            false,
            Box::new(move |sink| {
                std::thread::sleep(Duration::from_millis(200));
                while sink.send(b"x") {
                    std::thread::sleep(Duration::from_millis(1));
                }
                s.store(true, Ordering::SeqCst);
            }),
        );
        // `next` takes the stream out of the table while it waits for the first chunk...
        let waiting = std::thread::spawn(move || next(id, Duration::from_secs(2)));
        std::thread::sleep(Duration::from_millis(50));
        // ...and the client goes meanwhile.
        cancel(id);
        let got = waiting.join().unwrap().unwrap();
        assert!(!got.chunks.is_empty());
        let t0 = std::time::Instant::now();
        while !stopped.load(Ordering::SeqCst) {
            assert!(t0.elapsed() < Duration::from_secs(5), "the producer of a cancelled stream kept running");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(next(id, Duration::from_millis(10)).is_err(), "the cancelled stream is gone");
    }
}
