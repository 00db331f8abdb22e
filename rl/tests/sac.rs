//! SAC's plumbing at a size CI affords (its learning target is measured by `flare rl train
//! --algo sac`, docs/benchmarks.md): a short run on Pendulum-v1 writes a safetensors
//! checkpoint, a run resumes from it where it stopped, a learner loaded from it acts exactly
//! as the trained one, and a discrete action space is refused with a message.

use flare_rl::algo::sac::{self, SacConfig};

fn small(dir: &std::path::Path) -> SacConfig {
    SacConfig {
        total_env_steps: 1_200,
        learning_starts: 400,
        batch_size: 32,
        hidden: 32,
        checkpoint_dir: Some(dir.to_path_buf()),
        ..Default::default()
    }
}

#[test]
fn sac_checkpoints_resumes_and_reloads() {
    let dir = std::env::temp_dir().join(format!("flare-sac-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = small(&dir);
    let (summary, learner) = sac::train(&cfg, |_| {}).unwrap();
    assert_eq!(summary.env_steps, 1_200);
    assert_eq!(summary.episodes, 6, "Pendulum episodes are 200 steps");
    assert!(summary.mean_return.is_finite() && summary.mean_return < 0.0, "{summary:?}");
    for f in ["actor.safetensors", "critics.safetensors", "critic_targets.safetensors", "log_alpha.safetensors"] {
        assert!(dir.join(f).metadata().unwrap().len() > 0, "{f}");
    }
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["step"], 1_200);

    // Loaded weights act exactly as the trained learner.
    let loaded = sac::load("Pendulum-v1", &dir, 32).unwrap();
    for obs in [[1.0f32, 0.0, 0.0], [0.0, 1.0, -3.0], [-0.6, 0.8, 5.5]] {
        let (a, b) = (learner.act(&obs).unwrap(), loaded.act(&obs).unwrap());
        assert_eq!(a, b);
        assert!(a[0].abs() <= 2.0, "Pendulum's torque bound: {a:?}");
    }
    // The policy as the env runners get it (plain data, stepped on their CPUs) acts as the
    // candle actor does.
    let exported = learner.policy().unwrap();
    for obs in [[1.0f32, 0.0, 0.0], [0.0, 1.0, -3.0], [-0.6, 0.8, 5.5]] {
        let (a, b) = (learner.act(&obs).unwrap(), exported.act(&obs));
        assert!((a[0] - b[0]).abs() < 1e-5, "{a:?} vs {b:?}");
    }
    // All of a learner's variables move as plain data (what a SAC learner actor hands back).
    let (_, mut other) =
        sac::train(&SacConfig { seed: 9, total_env_steps: 500, checkpoint_dir: None, ..small(&dir) }, |_| {}).unwrap();
    assert_ne!(other.act(&[1.0, 0.0, 0.0]).unwrap(), learner.act(&[1.0, 0.0, 0.0]).unwrap());
    other.set_weights(&learner.weights().unwrap()).unwrap();
    for obs in [[1.0f32, 0.0, 0.0], [0.0, 1.0, -3.0]] {
        assert_eq!(other.act(&obs).unwrap(), learner.act(&obs).unwrap());
    }
    let eval = sac::evaluate(&loaded, "Pendulum-v1", 2, 7).unwrap();
    assert!(eval.is_finite() && eval < 0.0);

    // Resume: the run continues from step 1,200 to 1,400.
    let resumed = SacConfig { total_env_steps: 1_400, resume_from: Some(dir.clone()), ..small(&dir) };
    let (summary, _) = sac::train(&resumed, |_| {}).unwrap();
    assert_eq!(summary.env_steps, 1_400);
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["step"], 1_400);

    // A checkpoint for another environment's shapes is refused with the reason.
    let e = sac::load("MountainCarContinuous-v0", &dir, 32).err().expect("shape mismatch");
    assert!(e.to_string().contains("observations"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sac_learns_from_env_runner_actors() {
    flare_core::init_with(flare_core::Config::new().num_cpus(4.0).log_to_driver(false)).unwrap();
    let cfg = SacConfig {
        total_env_steps: 1_600,
        learning_starts: 400,
        batch_size: 32,
        hidden: 32,
        num_envs_per_runner: 2,
        steps_per_round: 25,
        ..Default::default()
    };
    let mut runner_pids = Vec::new();
    let (s, learner) = sac::train_distributed(&cfg, 2, |_| {
        let actors = flare_core::list(flare_core::StateQuery::Actors).unwrap().actors;
        runner_pids = actors.iter().filter(|a| a.class.ends_with("EnvRunner")).filter_map(|a| a.pid).collect();
    })
    .unwrap();
    // Two runners of two environments: 100 steps a round; Pendulum episodes are 200 steps.
    assert_eq!(s.env_steps, 1_600);
    assert_eq!(s.episodes, 8, "{s:?}");
    assert!(s.learner_s > 0.0, "the learner took gradient steps: {s:?}");
    assert_eq!(runner_pids.len(), 2, "two runners sampled: {runner_pids:?}");
    assert!(runner_pids.iter().all(|p| *p != std::process::id()), "in their own processes: {runner_pids:?}");
    assert!(sac::evaluate(&learner, "Pendulum-v1", 1, 3).unwrap() < 0.0);
}

#[test]
fn sac_refuses_discrete_actions() {
    let cfg = SacConfig { env_id: "CartPole-v1".into(), total_env_steps: 10, ..Default::default() };
    let e = sac::train(&cfg, |_| {}).err().expect("CartPole has discrete actions");
    assert!(e.to_string().contains("bounded Box"), "{e}");
}
