//! A one-shot value that threads can block on, futures can await, and the node can attach
//! callbacks to. The runtime hands these out for pending objects so that `get`, `.await`,
//! `wait` and worker replies share one mechanism and nobody busy-spins.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

type Callback<T> = Box<dyn FnOnce(&T) + Send>;

enum State<T> {
    Pending { wakers: Vec<Waker>, callbacks: Vec<Callback<T>> },
    Done(T),
}

struct Inner<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// A cheap-to-clone handle on a value that arrives once.
pub struct Promise<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Promise<T> {
    fn clone(&self) -> Self {
        Promise { inner: self.inner.clone() }
    }
}

impl<T: Clone + Send + 'static> Default for Promise<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Send + 'static> Promise<T> {
    pub fn new() -> Self {
        Promise {
            inner: Arc::new(Inner {
                state: Mutex::new(State::Pending { wakers: Vec::new(), callbacks: Vec::new() }),
                ready: Condvar::new(),
            }),
        }
    }

    /// A promise that already holds its value.
    pub fn ready(value: T) -> Self {
        Promise { inner: Arc::new(Inner { state: Mutex::new(State::Done(value)), ready: Condvar::new() }) }
    }

    /// Sets the value (the first call wins) and runs callbacks and wakers outside the lock.
    pub fn complete(&self, value: T) {
        let (wakers, callbacks) = {
            let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *st {
                State::Done(_) => return,
                State::Pending { wakers, callbacks } => {
                    let w = std::mem::take(wakers);
                    let c = std::mem::take(callbacks);
                    *st = State::Done(value.clone());
                    (w, c)
                }
            }
        };
        self.inner.ready.notify_all();
        for cb in callbacks {
            cb(&value);
        }
        for w in wakers {
            w.wake();
        }
    }

    /// The value, if it has arrived.
    pub fn try_get(&self) -> Option<T> {
        match &*self.inner.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Done(v) => Some(v.clone()),
            State::Pending { .. } => None,
        }
    }

    /// Blocks until the value arrives.
    pub fn wait(&self) -> T {
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let State::Done(v) = &*st {
                return v.clone();
            }
            st = self.inner.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Blocks until the value arrives or `timeout` passes.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let State::Done(v) = &*st {
                return Some(v.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self.inner.ready.wait_timeout(st, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Runs `f` with the value once it arrives (at once, on this thread, if it already has).
    pub fn on_complete(&self, f: impl FnOnce(&T) + Send + 'static) {
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *st {
            State::Pending { callbacks, .. } => callbacks.push(Box::new(f)),
            State::Done(v) => {
                let v = v.clone();
                drop(st);
                f(&v);
            }
        }
    }
}

impl<T: Clone + Send + 'static> Future for Promise<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *st {
            State::Done(v) => Poll::Ready(v.clone()),
            State::Pending { wakers, .. } => {
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_callback_and_timeout() {
        let p: Promise<u32> = Promise::new();
        assert_eq!(p.wait_timeout(Duration::from_millis(10)), None);
        let seen = Arc::new(Mutex::new(0));
        let s = seen.clone();
        p.on_complete(move |v| *s.lock().unwrap() = *v);
        let p2 = p.clone();
        let t = std::thread::spawn(move || p2.wait());
        p.complete(7);
        p.complete(8);
        assert_eq!(t.join().unwrap(), 7);
        assert_eq!(*seen.lock().unwrap(), 7);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(p.clone()), 7);
    }
}
