//! A deployment's data path in the proxy's process: each replica has a bounded priority queue
//! that a batcher drains into batches, each batch one call of the replica actor; requests go
//! to the less loaded of two random replicas (preferring ones that hold the request's model).

use crate::deployment::DeploymentOptions;
use crate::metrics::Metrics;
use crate::replica::{Backend, BatchReply};
use crate::types::{Request, Response};
use flare_core::util::SplitMix64;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// One accepted request waiting for its replica.
pub(crate) struct Item {
    pub req: Request,
    pub tx: oneshot::Sender<Answer>,
    pub priority: i64,
    pub seq: u64,
    pub enqueued: Instant,
    /// Times it was sent to a replica that died before answering.
    pub attempts: u32,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        self.priority == o.priority && self.seq == o.seq
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    /// Higher priority first, then first come first served.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.priority.cmp(&o.priority).then(o.seq.cmp(&self.seq))
    }
}

/// A response, and for a streamed one the replica that holds its stream.
pub(crate) struct Answer {
    pub resp: Response,
    pub replica: Option<Backend>,
}

fn answer(item: Item, resp: Response) {
    let _ = item.tx.send(Answer { resp, replica: None });
}

/// A replica as the router sees it.
pub(crate) struct Replica {
    pub id: String,
    pub backend: Backend,
    queue: Mutex<BinaryHeap<Item>>,
    wake: Notify,
    pub inflight: AtomicUsize,
    queued: AtomicUsize,
    pub models: Mutex<Vec<String>>,
    /// Its actor died (seen by a call); the controller replaces it.
    pub dead: AtomicBool,
    /// New requests may go to it (false while starting and draining).
    pub accepting: AtomicBool,
    pub pid: AtomicU32,
}

impl Replica {
    pub fn new(id: String, backend: Backend) -> Self {
        Replica {
            id,
            backend,
            queue: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
            inflight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            models: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
            accepting: AtomicBool::new(false),
            pid: AtomicU32::new(0),
        }
    }

    /// Queued plus running requests.
    pub fn load(&self) -> usize {
        self.queued.load(Ordering::Relaxed) + self.inflight.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn has_model(&self, m: &str) -> bool {
        self.models.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|x| x == m)
    }

    fn take_all(&self) -> Vec<Item> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let v: Vec<Item> = q.drain().collect();
        self.queued.fetch_sub(v.len(), Ordering::Relaxed);
        v
    }

    pub fn poke(&self) {
        self.wake.notify_one();
    }
}

/// A deployment's router: its replicas, the requests waiting for one, and the counters the
/// controller scales on.
pub(crate) struct DeploymentRouter {
    pub name: String,
    pub opts: DeploymentOptions,
    pub replicas: RwLock<Vec<Arc<Replica>>>,
    /// Requests that arrived while no replica was accepting.
    pending: Mutex<VecDeque<Item>>,
    /// Requests waiting in `pending` and the replicas' queues.
    queued: AtomicUsize,
    seq: AtomicU64,
    rng: Mutex<SplitMix64>,
    pub metrics: Arc<Metrics>,
    /// Wakes the controller (a replica died).
    pub changed: Notify,
}

impl DeploymentRouter {
    pub fn new(name: &str, opts: DeploymentOptions, metrics: Arc<Metrics>) -> Self {
        DeploymentRouter {
            name: name.to_string(),
            opts,
            replicas: RwLock::new(Vec::new()),
            pending: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            rng: Mutex::new(SplitMix64::new(flare_core::util::now_ms() ^ 0x5e11e)),
            metrics,
            changed: Notify::new(),
        }
    }

    /// Requests waiting for a replica (all queues).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queued plus running requests: what autoscaling follows.
    pub fn ongoing(&self) -> usize {
        self.queued()
            + self
                .replicas
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|r| r.inflight.load(Ordering::Relaxed))
                .sum::<usize>()
    }

    /// Accepts a request: the receiver gets its response. A full deployment answers 503 at once.
    pub async fn submit(self: &Arc<Self>, req: Request, priority: i64) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        let item =
            Item { req, tx, priority, seq: self.seq.fetch_add(1, Ordering::Relaxed), enqueued: Instant::now(), attempts: 0 };
        if self.queued() >= self.opts.max_queued_requests {
            self.metrics.rejected(&self.name);
            answer(
                item,
                Response::error(
                    503,
                    &format!(
                        "deployment '{}' has {} requests queued (max_queued_requests); retry later",
                        self.name, self.opts.max_queued_requests
                    ),
                )
                .with_header("retry-after", "1"),
            );
            return rx;
        }
        // Without batching, a request for a replica with an empty queue and a free slot runs at
        // once in this task (no queue, no batcher hop).
        if self.opts.batching.max_batch_size == 1 && item.req.model_id.is_none() {
            if let Some(r) = self.pick_live(None) {
                let limit = self.opts.max_ongoing_requests;
                if r.queued() == 0 {
                    if r.inflight.fetch_add(1, Ordering::Relaxed) < limit {
                        self.metrics.batch(&self.name, 1);
                        self.clone().run_batch(r, vec![item]).await;
                        return rx;
                    }
                    r.inflight.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.assign(item);
        rx
    }

    /// The replica a request would go to (power of two choices over the accepting ones,
    /// preferring those that hold `model`).
    fn pick_live(&self, model: Option<&str>) -> Option<Arc<Replica>> {
        let reps = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        let live: Vec<&Arc<Replica>> =
            reps.iter().filter(|r| r.accepting.load(Ordering::Relaxed) && !r.dead.load(Ordering::Relaxed)).collect();
        let with_model: Vec<&Arc<Replica>> = match model {
            Some(m) => live.iter().copied().filter(|r| r.has_model(m)).collect(),
            None => Vec::new(),
        };
        let pool = if with_model.is_empty() { live } else { with_model };
        self.pick(&pool).cloned()
    }

    /// Puts an accepted request in a replica's queue (or `pending` when none accepts).
    fn assign(&self, item: Item) {
        let chosen = self.pick_live(item.req.model_id.as_deref());
        self.queued.fetch_add(1, Ordering::Relaxed);
        match chosen {
            Some(r) => {
                r.queue.lock().unwrap_or_else(|p| p.into_inner()).push(item);
                r.queued.fetch_add(1, Ordering::Relaxed);
                r.wake.notify_one();
            }
            None => self.pending.lock().unwrap_or_else(|p| p.into_inner()).push_back(item),
        }
    }

    /// Power of two choices: the less loaded of two random replicas.
    fn pick<'a>(&self, pool: &[&'a Arc<Replica>]) -> Option<&'a Arc<Replica>> {
        match pool.len() {
            0 => None,
            1 => Some(pool[0]),
            n => {
                let (a, b) = {
                    let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                    let a = rng.below(n as u64) as usize;
                    let b = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
                    (a, b)
                };
                Some(if pool[a].load() <= pool[b].load() { pool[a] } else { pool[b] })
            }
        }
    }

    /// Sends the requests that waited for a replica to the accepting ones.
    pub fn flush_pending(&self) {
        let items: Vec<Item> = self.pending.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        self.queued.fetch_sub(items.len(), Ordering::Relaxed);
        for it in items {
            self.assign(it);
        }
    }

    /// Moves a replica's queued requests to other replicas (it died or failed its health check).
    pub fn requeue_from(&self, r: &Replica) {
        let items = r.take_all();
        self.queued.fetch_sub(items.len(), Ordering::Relaxed);
        for it in items {
            self.assign(it);
        }
    }

    /// Answers every request still waiting (at shutdown).
    pub fn fail_pending(&self, msg: &str) {
        let items: Vec<Item> = self.pending.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        self.queued.fetch_sub(items.len(), Ordering::Relaxed);
        for it in items {
            answer(it, Response::error(503, msg).with_header("retry-after", "1"));
        }
    }

    /// Takes the next batch from a replica's queue: up to `max`, all of the first request's
    /// model, highest priority first; requests past the queue timeout are answered 503.
    fn take_batch(&self, r: &Replica, max: usize) -> Vec<Item> {
        let b = &self.opts.batching;
        let mut q = r.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch: Vec<Item> = Vec::new();
        let mut other: Vec<Item> = Vec::new();
        let mut expired: Vec<Item> = Vec::new();
        while batch.len() < max {
            let Some(it) = q.pop() else { break };
            if let (Some(t), false) = (b.queue_timeout, b.keep_timed_out) {
                if it.enqueued.elapsed() > t {
                    expired.push(it);
                    continue;
                }
            }
            match batch.first() {
                Some(f) if f.req.model_id != it.req.model_id => other.push(it),
                _ => batch.push(it),
            }
        }
        q.extend(other);
        drop(q);
        let taken = batch.len() + expired.len();
        r.queued.fetch_sub(taken, Ordering::Relaxed);
        self.queued.fetch_sub(taken, Ordering::Relaxed);
        for it in expired {
            self.metrics.rejected(&self.name);
            let waited = it.enqueued.elapsed().as_secs_f64();
            answer(
                it,
                Response::error(503, &format!("the request waited {waited:.3} s in the queue, longer than its queue_timeout"))
                    .with_header("retry-after", "1"),
            );
        }
        batch
    }

    /// A replica's batcher: forms batches from its queue and runs each as one actor call,
    /// keeping at most `max(max_ongoing_requests, max_batch_size)` requests running. Ends when
    /// the replica stops accepting and its queue is empty, or when it died.
    pub async fn batcher(self: Arc<Self>, r: Arc<Replica>) {
        let b = self.opts.batching.clone();
        let limit = self.opts.max_ongoing_requests.max(b.max_batch_size);
        let preferred_max = b.preferred_batch_sizes.iter().copied().max();
        loop {
            // A first request.
            loop {
                if r.dead.load(Ordering::Relaxed) {
                    self.requeue_from(&r);
                    return;
                }
                if r.queued() > 0 {
                    break;
                }
                if !r.accepting.load(Ordering::Relaxed) {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), r.wake.notified()).await;
            }
            // Let the batch fill until it is full, a preferred size, or its wait is over.
            if b.max_batch_size > 1 {
                let deadline = Instant::now() + b.batch_wait_timeout;
                loop {
                    let n = r.queued();
                    if n >= b.max_batch_size || preferred_max.is_some_and(|p| n >= p) {
                        break;
                    }
                    let now = Instant::now();
                    if now >= deadline || r.dead.load(Ordering::Relaxed) {
                        break;
                    }
                    let _ = tokio::time::timeout(deadline - now, r.wake.notified()).await;
                }
            }
            // Room for the whole batch (a full batch always fits when nothing runs).
            let mut size = r.queued().min(b.max_batch_size);
            if let Some(p) = b.preferred_batch_sizes.iter().copied().filter(|&p| p <= size).max() {
                size = p;
            }
            while r.inflight.load(Ordering::Relaxed) + size.max(1) > limit && !r.dead.load(Ordering::Relaxed) {
                let _ = tokio::time::timeout(Duration::from_millis(100), r.wake.notified()).await;
            }
            let batch = self.take_batch(&r, size.max(1));
            if batch.is_empty() {
                continue;
            }
            r.inflight.fetch_add(batch.len(), Ordering::Relaxed);
            self.metrics.batch(&self.name, batch.len());
            tokio::spawn(self.clone().run_batch(r.clone(), batch));
        }
    }

    async fn run_batch(self: Arc<Self>, r: Arc<Replica>, mut batch: Vec<Item>) {
        let n = batch.len();
        // A copy is kept for a retry only where the replica can die under the batch (a worker
        // process); an in-process replica takes the requests.
        let reqs: Vec<Request> = match r.backend.actor() {
            Some(_) => batch.iter().map(|i| i.req.clone()).collect(),
            None => batch.iter_mut().map(|i| std::mem::take(&mut i.req)).collect(),
        };
        // Frees the batch's slots even when this future is dropped (a timed-out direct call).
        struct Slots(Arc<Replica>, usize);
        impl Drop for Slots {
            fn drop(&mut self) {
                self.0.inflight.fetch_sub(self.1, Ordering::Relaxed);
                self.0.wake.notify_one();
            }
        }
        let slots = Slots(r.clone(), n);
        let reply = r.backend.handle(reqs).await;
        drop(slots);
        match reply {
            Ok(BatchReply { result, models }) => {
                *r.models.lock().unwrap_or_else(|p| p.into_inner()) = models;
                match result {
                    Ok(resps) => {
                        for (it, resp) in batch.into_iter().zip(resps) {
                            let replica = resp.header(crate::stream::STREAM_HEADER).map(|_| r.backend.clone());
                            let _ = it.tx.send(Answer { resp, replica });
                        }
                    }
                    Err(msg) => {
                        for it in batch {
                            answer(it, Response::error(500, &format!("deployment '{}': {msg}", self.name)));
                        }
                    }
                }
            }
            Err(e) if e.died => {
                if !r.dead.swap(true, Ordering::Relaxed) {
                    tracing::warn!(deployment = %self.name, replica = %r.id, "replica died: {}", e.message);
                }
                self.changed.notify_one();
                r.wake.notify_one();
                for mut it in batch {
                    if it.attempts == 0 {
                        it.attempts = 1;
                        self.assign(it);
                    } else {
                        answer(
                            it,
                            Response::error(503, &format!("deployment '{}': the replicas running this request died", self.name))
                                .with_header("retry-after", "1"),
                        );
                    }
                }
            }
            Err(e) => {
                for it in batch {
                    answer(it, Response::error(500, &format!("deployment '{}': {}", self.name, e.message)));
                }
            }
        }
    }
}
