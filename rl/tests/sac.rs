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
fn sac_refuses_discrete_actions() {
    let cfg = SacConfig { env_id: "CartPole-v1".into(), total_env_steps: 10, ..Default::default() };
    let e = sac::train(&cfg, |_| {}).err().expect("CartPole has discrete actions");
    assert!(e.to_string().contains("bounded Box"), "{e}");
}
