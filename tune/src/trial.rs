//! A trial's side: the actor that runs a trainable in its own worker process, and the
//! `TrialContext` the trainable reports through.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// The error a trainable returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A trainable: a plain `fn` (found in every worker process, which runs this executable).
pub type Trainable = fn(&mut TrialContext) -> Result<(), BoxError>;

#[doc(hidden)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Event {
    Report { iteration: u64, metrics: String, checkpoint: Option<PathBuf> },
    Finished,
    Failed { error: String },
}

#[doc(hidden)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrialSetup {
    pub trainable: flare_core::util::CodeRef,
    pub trial_id: String,
    pub config: String,
    pub dir: PathBuf,
    pub checkpoint: Option<PathBuf>,
    pub iteration: u64,
}

/// What a trainable sees.
pub struct TrialContext {
    trial_id: String,
    config: Value,
    dir: PathBuf,
    checkpoint: Option<PathBuf>,
    iteration: u64,
    events: Sender<Event>,
}

impl TrialContext {
    pub fn trial_id(&self) -> &str {
        &self.trial_id
    }
    /// The trial's resolved config.
    pub fn config(&self) -> &Value {
        &self.config
    }
    /// The config decoded into a type.
    pub fn config_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, BoxError> {
        Ok(serde_json::from_value(self.config.clone())?)
    }
    /// The trial's directory.
    pub fn trial_dir(&self) -> &Path {
        &self.dir
    }
    /// The checkpoint to resume from (after a failure, a restore, or a PBT clone).
    pub fn checkpoint(&self) -> Option<&Path> {
        self.checkpoint.as_deref()
    }
    /// Reports so far (counting those before a resume).
    pub fn iteration(&self) -> u64 {
        self.iteration
    }
    /// The GPUs this trial was given (fractional trials share one).
    pub fn gpu_ids(&self) -> Vec<u32> {
        flare_core::get_gpu_ids()
    }

    /// Writes a checkpoint: `write` fills a fresh directory, which is renamed into place once
    /// complete. Pass the returned path to [`TrialContext::report`].
    pub fn save_checkpoint(&self, write: impl FnOnce(&Path) -> Result<(), BoxError>) -> Result<PathBuf, BoxError> {
        let final_dir = self.dir.join(format!("checkpoint_{:06}", self.iteration + 1));
        let tmp = self.dir.join(format!(".tmp_checkpoint_{:06}", self.iteration + 1));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        write(&tmp)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir)?;
        }
        std::fs::rename(&tmp, &final_dir)?;
        Ok(final_dir)
    }

    /// Reports one iteration's metrics (a JSON object) and optionally a checkpoint.
    pub fn report(&mut self, metrics: Value, checkpoint: Option<PathBuf>) -> Result<(), BoxError> {
        if !metrics.is_object() {
            return Err(format!("report() takes a JSON object of metrics, got {metrics}").into());
        }
        self.iteration += 1;
        let _ = self.events.send(Event::Report { iteration: self.iteration, metrics: metrics.to_string(), checkpoint });
        Ok(())
    }
}

/// A trial's actor.
pub struct TrialWorker {
    events: flare_core::util::Mailbox<Event>,
}

fn run(s: TrialSetup, tx: Sender<Event>) -> Result<(), String> {
    let addr = s.trainable.resolve()?;
    // Safety: the address is the driver's `Trainable` in this same executable image (its code
    // bytes matched), so it is a function of exactly that type.
    let f = unsafe { std::mem::transmute::<usize, Trainable>(addr) };
    let config = serde_json::from_str(&s.config).map_err(|e| format!("the trial config is not JSON: {e}"))?;
    let mut ctx =
        TrialContext { trial_id: s.trial_id, config, dir: s.dir, checkpoint: s.checkpoint, iteration: s.iteration, events: tx };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut ctx))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the trainable failed: {e}")),
        Err(p) => Err(format!("the trainable panicked: {}", flare_core::util::panic_message(&*p))),
    }
}

#[flare_macros::actor(crate = ::flare_core)]
impl TrialWorker {
    fn new() -> Self {
        TrialWorker { events: flare_core::util::Mailbox::new() }
    }

    fn start(&self, setup: TrialSetup) -> Result<(), String> {
        let tx = self.events.open()?;
        std::thread::Builder::new()
            .name("flare-trial".into())
            .spawn(move || {
                let done = tx.clone();
                let _ = done.send(match run(setup, tx) {
                    Ok(()) => Event::Finished,
                    Err(error) => Event::Failed { error },
                });
            })
            .map_err(|e| format!("starting the trial thread: {e}"))?;
        Ok(())
    }

    /// The events since the last poll; waits up to `wait_ms` for the first.
    fn poll(&self, wait_ms: u64) -> Vec<Event> {
        self.events.poll(Duration::from_millis(wait_ms))
    }
}
