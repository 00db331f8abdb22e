//! Submitting remote function calls (what `#[flare::remote]` expands to).

use crate::error::{ErrorKind, TaskError};
use crate::ids::{ObjectId, TaskId};
use crate::object_ref::{build_args, failed_ref, ArgSlot, ObjectRef};
use crate::runtime::runtime;
use crate::spec::{resource_request, TaskOptions, TaskSpec};

/// Submits a call of the registered function `name` and returns a reference to its result.
/// Every failure (bad options, an argument that cannot be encoded) surfaces on `get`.
pub fn submit_task<R>(name: &'static str, opts: &TaskOptions, slots: Vec<Result<ArgSlot, TaskError>>) -> ObjectRef<R> {
    let rt = match runtime() {
        Ok(rt) => rt,
        // Without a runtime there is nothing to count; `get` on this ref reports NotInitialized.
        Err(_) => return crate::object_ref::unregistered(ObjectId::for_return(TaskId(0), 0)),
    };
    let resources = match resource_request(opts.num_cpus, opts.num_gpus, opts.memory, &opts.resources) {
        Ok(r) => r,
        Err(msg) => return failed_ref(&rt, TaskError::new(ErrorKind::Infeasible, msg).with_task(name)),
    };
    let (args, contained, keep) = match build_args(&rt, slots) {
        Ok(a) => a,
        Err(e) => return failed_ref(&rt, e.with_task(name)),
    };
    let spec = TaskSpec {
        task_id: rt.ids.next_task(),
        name: name.to_string(),
        args,
        contained,
        resources,
        strategy: opts.scheduling_strategy.clone(),
        max_retries: opts.max_retries,
        retry_exceptions: opts.retry_exceptions,
    };
    let r = ObjectRef::owned(&rt, spec.return_id());
    rt.core.submit_task(spec);
    drop(keep);
    r
}
