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
    let (s, actor) = ppo::train(&cfg, |_| {}).unwrap();
    assert_eq!(s.env_steps, 8192);
    let (loaded, critic, step) = ppo::load_checkpoint(&dir).unwrap();
    assert_eq!(step, 8192);
    assert_eq!(loaded.params, actor.params, "the saved actor is the trained one");
    assert_eq!(critic.sizes, [4, 64, 64, 1]);
    let eval = ppo::evaluate(&loaded, "CartPole-v1", 3, 100).unwrap();
    assert!(eval >= 8.0, "CartPole returns at least 8 per episode: {eval}");

    // Resume: 16 updates of 512 steps are done; eight more reach 12,288.
    let more = PpoConfig { total_env_steps: 12_288, resume_from: Some(dir.clone()), ..cfg.clone() };
    let (s, _) = ppo::train(&more, |_| {}).unwrap();
    assert_eq!(s.env_steps, 12_288);
    assert_eq!(ppo::load_checkpoint(&dir).unwrap().2, 12_288);

    // Other network sizes: refused.
    let other = PpoConfig { hidden: 32, resume_from: Some(dir.clone()), checkpoint_dir: None, ..cfg };
    let e = ppo::train(&other, |_| {}).expect_err("size mismatch");
    assert!(e.to_string().contains("networks"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dqn_checkpoints_resume_at_their_step_and_evaluate() {
    use flare_rl::algo::dqn::{self, DqnConfig};
    let dir = std::env::temp_dir().join(format!("flare-dqn-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = DqnConfig {
        total_env_steps: 3000,
        learning_starts: 1000,
        exploration_fraction: 0.5,
        stop_when_solved: false,
        checkpoint_dir: Some(dir.clone()),
        ..Default::default()
    };
    let (s, q) = dqn::train(&cfg, |_| {}).unwrap();
    assert_eq!(s.env_steps, 3000);
    let (loaded, target, step) = dqn::load_checkpoint(&dir).unwrap();
    assert_eq!(step, 3000);
    assert_eq!(loaded.params, q.params, "the saved Q-network is the trained one");
    assert_eq!(target.sizes, loaded.sizes);
    assert!(dqn::evaluate(&loaded, "CartPole-v1", 3, 100).unwrap() >= 8.0);

    // Resume at step 3000 and go to 4000; the networks go on from the checkpoint's.
    let more = DqnConfig { total_env_steps: 4000, resume_from: Some(dir.clone()), ..cfg.clone() };
    let (s, q2) = dqn::train(&more, |_| {}).unwrap();
    assert_eq!(s.env_steps, 4000);
    assert_eq!(dqn::load_checkpoint(&dir).unwrap().2, 4000);
    assert_ne!(q2.params, q.params, "a resumed run learns on");

    // Other sizes, and a PPO checkpoint, are refused with the reason.
    let e = dqn::train(&DqnConfig { hidden: 32, checkpoint_dir: None, ..more.clone() }, |_| {}).expect_err("sizes");
    assert!(e.to_string().contains("Q-network"), "{e}");
    let ppo_dir = dir.join("ppo");
    ppo::save_checkpoint(&ppo_dir, &q, &q, 1).unwrap();
    let e = dqn::load_checkpoint(&ppo_dir).expect_err("a PPO checkpoint");
    assert!(e.to_string().contains("not a DQN one"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a2c_checkpoints_in_ppo_format_and_resume() {
    use flare_rl::algo::a2c::{self, A2cConfig};
    let dir = std::env::temp_dir().join(format!("flare-a2c-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg =
        A2cConfig { total_env_steps: 4000, stop_when_solved: false, checkpoint_dir: Some(dir.clone()), ..Default::default() };
    let (s, actor) = a2c::train(&cfg, |_| {}).unwrap();
    assert_eq!(s.env_steps, 4000);
    let (loaded, _, step) = ppo::load_checkpoint(&dir).unwrap();
    assert_eq!((step, &loaded.params), (4000, &actor.params));
    let (s, _) = a2c::train(&A2cConfig { total_env_steps: 6000, resume_from: Some(dir.clone()), ..cfg }, |_| {}).unwrap();
    assert_eq!(s.env_steps, 6000);
    assert_eq!(ppo::load_checkpoint(&dir).unwrap().2, 6000);
    let _ = std::fs::remove_dir_all(&dir);
}
