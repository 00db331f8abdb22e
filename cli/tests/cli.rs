//! The `flare` binary end to end: real processes, real files.

use std::path::PathBuf;
use std::process::Command;

fn flare() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flare"))
}

fn oracle(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/oracles/gym").join(name);
    assert!(p.exists(), "oracle {} not found: the tests read ../shared/oracles next to the repository root", p.display());
    p
}

#[test]
fn rl_replay_passes_a_real_trace_and_fails_a_tampered_one() {
    let good = oracle("gym_CartPole-v1.json");
    let out = flare().args(["rl", "replay", "--trace"]).arg(&good).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("CartPole-v1") && text.contains("0 flag mismatches"), "{text}");

    // Flip one recorded flag and nudge one reward: both must be reported, with a failing exit.
    let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&good).unwrap()).unwrap();
    doc["episodes"][0]["steps"][0]["terminated"] = serde_json::Value::Bool(true);
    doc["episodes"][1]["steps"][2]["reward"] = serde_json::json!(0.5);
    let bad = std::env::temp_dir().join(format!("flare-tampered-{}.json", std::process::id()));
    std::fs::write(&bad, serde_json::to_string(&doc).unwrap()).unwrap();
    let out = flare().args(["rl", "replay", "--json", "--trace"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["max_reward_error"].as_f64().unwrap(), 0.5);
    assert!(report["flag_mismatches"][0].as_str().unwrap().contains("episode 0 step 0: terminated"), "{report}");
    let _ = std::fs::remove_file(bad);

    let out = flare().args(["rl", "replay", "--trace", "/nonexistent.json"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn microbenchmark_prints_rays_line_format() {
    let out = flare().args(["microbenchmark", "--filter", "single client tasks sync", "--trial-secs", "0.05"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("single client tasks sync per second ")).expect("the case's line");
    let rest = line.trim_start_matches("single client tasks sync per second ");
    let parts: Vec<&str> = rest.split(" +- ").collect();
    assert_eq!(parts.len(), 2, "{line}");
    assert!(parts[0].parse::<f64>().unwrap() > 0.0 && parts[1].parse::<f64>().is_ok(), "{line}");
    let out = flare().args(["microbenchmark", "--trial-secs", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trial-secs must be a positive"));
}

#[test]
fn a2c_dqn_and_sac_train_with_env_runner_actors() {
    let out = flare()
        .args(["rl", "train", "--algo", "a2c", "--num-env-runners", "2", "--max-env-steps", "8000", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    // Two runners of 8 envs x 5 steps: 80 env steps per update.
    assert!(last["env_steps"].as_u64().unwrap() >= 8000, "{last}");
    // DQN: two runners stepping epsilon-greedy with weights from the object store; past
    // learning_starts (10,000) the learner takes gradient steps on what they sent.
    let out = flare()
        .args(["rl", "train", "--algo", "dqn", "--num-env-runners", "2", "--max-env-steps", "12000", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(last["env_steps"].as_u64().unwrap() >= 12000, "{last}");
    assert!(last["episodes"].as_u64().unwrap() > 50, "{last}");
    // SAC: two runners of two environments each; within its 5,000 warm-up steps they act at
    // random, then evaluation runs the learner's policy.
    let out = flare()
        .args(["rl", "train", "--algo", "sac", "--env", "Pendulum-v1", "--num-env-runners", "2"])
        .args(["--num-envs-per-runner", "2", "--max-env-steps", "1600", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    // Rounds of 50 steps by 4 environments: 200 env steps each, Pendulum episodes of 200.
    assert!(last["env_steps"].as_u64().unwrap() >= 1600 && last["episodes"].as_u64().unwrap() >= 8, "{last}");
    assert!(last["eval_return"].as_f64().unwrap() < 0.0, "{last}");
    // A GPU learner actor on a machine whose node has no GPU: refused, saying why.
    let out = flare()
        .args(["rl", "train", "--algo", "sac", "--env", "Pendulum-v1", "--num-env-runners", "1", "--learner-gpus", "1"])
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GPU"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn rl_train_names_its_learner_device_and_refuses_bad_ones() {
    let out =
        flare().args(["rl", "train", "--algo", "a2c", "--max-env-steps", "2000", "--device", "cpu", "--json"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["learner_device"], "cpu", "{last}");
    assert!(last["learner_s"].as_f64().unwrap() > 0.0, "{last}");
    for (args, says) in [
        (&["--device", "tpu"][..], "expected auto, cpu, cuda or cuda:N"),
        (&["--learner-gpus", "1"][..], "it needs --num-env-runners"),
        (&["--learner-gpus=-1", "--num-env-runners", "1"][..], "--learner-gpus must be"),
    ] {
        let out = flare().args(["rl", "train", "--max-env-steps", "1000"]).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Asking for CUDA on a build or machine without it says so and what to do.
    if !cfg!(feature = "cuda") {
        let out = flare().args(["rl", "train", "--max-env-steps", "1000", "--device", "cuda"]).output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("use --device cpu or auto"));
    }
}

#[test]
fn bench_train_prints_a_step_breakdown_per_world_size() {
    let out = flare()
        .args([
            "bench", "train", "--ranks", "1,2", "--widths", "16,32,4", "--batch", "32", "--steps", "3", "--warmup", "1", "--json",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for (r, n) in rows.iter().zip([1, 2]) {
        assert_eq!(r["ranks"], n);
        for k in ["forward_ms", "backward_ms", "allreduce_ms", "optimizer_ms", "step_ms"] {
            assert!(r[k].as_f64().is_some_and(|v| v >= 0.0), "{k} in {r}");
        }
    }
    let out = flare().args(["bench", "train", "--batch", "3", "--ranks", "2"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not divide"));
}

#[test]
fn bench_tune_prints_the_anchor_layout() {
    let out = flare()
        .args(["bench", "tune", "--function", "hartmann6", "--searcher", "tpe", "--trials", "25", "--seeds", "2", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let b = &r["best_after"]["25"];
    for k in ["median", "q1", "q3", "min", "max"] {
        assert!(b[k].as_f64().is_some_and(|v| v < 0.0 && v > -3.33), "{k} in {r}");
    }
    assert!(b["min"].as_f64() <= b["median"].as_f64() && b["median"].as_f64() <= b["max"].as_f64());
    let out = flare().args(["bench", "tune", "--function", "sphere"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown function `sphere`"));
}
