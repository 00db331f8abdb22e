//! PPO checkpoints: a run writes its networks as safetensors, a run resumes from them at the
//! step it stopped, a loaded actor is the trained one, and a checkpoint for other network
//! sizes is refused with the reason.

use flare_rl::algo::ppo::{self, PpoConfig};

#[test]
fn ppo_checkpoints_resume_and_evaluate() {
    let dir = std::env::temp_dir().join(format!("flare-ppo-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg =
        PpoConfig { total_env_steps: 8192, stop_when_solved: false, checkpoint_dir: Some(dir.clone()), ..Default::default() };
    let (s, actor) = ppo::train(&cfg, |_, _| {}).unwrap();
    assert_eq!(s.env_steps, 8192);
    let (loaded, critic, step) = ppo::load_checkpoint(&dir).unwrap();
    assert_eq!(step, 8192);
    assert_eq!(loaded.params, actor.params, "the saved actor is the trained one");
    assert_eq!(critic.sizes, [4, 64, 64, 1]);
    let eval = ppo::evaluate(&loaded, "CartPole-v1", 3, 100).unwrap();
    assert!(eval >= 8.0, "CartPole returns at least 8 per episode: {eval}");

    // Resume: 16 updates of 512 steps are done; eight more reach 12,288.
    let more = PpoConfig { total_env_steps: 12_288, resume_from: Some(dir.clone()), ..cfg.clone() };
    let (s, _) = ppo::train(&more, |_, _| {}).unwrap();
    assert_eq!(s.env_steps, 12_288);
    assert_eq!(ppo::load_checkpoint(&dir).unwrap().2, 12_288);

    // Other network sizes: refused.
    let other = PpoConfig { hidden: 32, resume_from: Some(dir.clone()), checkpoint_dir: None, ..cfg };
    let e = ppo::train(&other, |_, _| {}).expect_err("size mismatch");
    assert!(e.to_string().contains("networks"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
