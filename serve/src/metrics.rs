//! Serve's Prometheus metrics: requests by route and status, latency, queue depth, batch sizes
//! and replicas by state (the last two gauges are read from the routers at scrape time).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const LATENCY_BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        if let Some(i) = buckets.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        let mut acc = 0;
        for (i, b) in buckets.iter().enumerate() {
            acc += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    /// Requests by route, then status.
    requests: BTreeMap<String, BTreeMap<u16, u64>>,
    latency: BTreeMap<String, Histogram>,
    batches: BTreeMap<String, Histogram>,
    rejected: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// A label value with `\`, `"` and newlines escaped.
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        self.with(|m| {
            // Route keys are allocated once per route, not per request.
            match m.requests.get_mut(route) {
                Some(by_status) => *by_status.entry(status).or_default() += 1,
                None => {
                    m.requests.insert(route.to_string(), BTreeMap::from([(status, 1)]));
                }
            }
            match m.latency.get_mut(route) {
                Some(h) => h.observe(&LATENCY_BUCKETS, seconds),
                None => m.latency.entry(route.to_string()).or_default().observe(&LATENCY_BUCKETS, seconds),
            }
        })
    }

    pub fn batch(&self, deployment: &str, size: usize) {
        self.with(|m| match m.batches.get_mut(deployment) {
            Some(h) => h.observe(&BATCH_BUCKETS, size as f64),
            None => m.batches.entry(deployment.to_string()).or_default().observe(&BATCH_BUCKETS, size as f64),
        })
    }

    pub fn rejected(&self, deployment: &str) {
        self.with(|m| *m.rejected.entry(deployment.to_string()).or_default() += 1)
    }

    /// The counters and histograms in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.with(|m| {
            out.push_str("# HELP flare_serve_requests_total HTTP requests by route prefix and status code.\n");
            out.push_str("# TYPE flare_serve_requests_total counter\n");
            for (route, by_status) in &m.requests {
                for (status, n) in by_status {
                    let _ = writeln!(out, "flare_serve_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", label(route));
                }
            }
            out.push_str("# HELP flare_serve_request_latency_seconds Time from a request's arrival to its response.\n");
            out.push_str("# TYPE flare_serve_request_latency_seconds histogram\n");
            for (route, h) in &m.latency {
                h.write(out, "flare_serve_request_latency_seconds", &format!("route=\"{}\"", label(route)), &LATENCY_BUCKETS);
            }
            out.push_str("# HELP flare_serve_batch_size Requests per batch run by a replica.\n");
            out.push_str("# TYPE flare_serve_batch_size histogram\n");
            for (d, h) in &m.batches {
                h.write(out, "flare_serve_batch_size", &format!("deployment=\"{}\"", label(d)), &BATCH_BUCKETS);
            }
            out.push_str("# HELP flare_serve_rejected_total Requests answered 503 because a queue was full or timed out.\n");
            out.push_str("# TYPE flare_serve_rejected_total counter\n");
            for (d, n) in &m.rejected {
                let _ = writeln!(out, "flare_serve_rejected_total{{deployment=\"{}\"}} {n}", label(d));
            }
        })
    }
}
