//! PPO learns CartPole. The quick test runs in CI; the full target (solved within 500k env steps
//! on at least 4 of 5 seeds) runs with FLARE_SLOW_TESTS=1.

use flare_rl::algo::ppo::{train, PpoConfig};

#[test]
fn ppo_improves_quickly_on_cartpole() {
    // A random CartPole policy averages about 22; 40k steps of PPO are well past that (181 measured).
    let cfg = PpoConfig { seed: 1, total_env_steps: 40_000, ..Default::default() };
    let mut curve = Vec::new();
    let (s, _) = train(&cfg, |p| curve.push((p.env_steps, p.mean_return))).unwrap();
    assert!(s.env_steps >= 40_000 && s.episodes > 50);
    assert!(s.mean_return > 100.0, "mean return {} after 40k steps; curve {curve:?}", s.mean_return);
}

#[test]
fn ppo_rejects_continuous_actions() {
    let cfg = PpoConfig { env_id: "Pendulum-v1".into(), total_env_steps: 1000, ..Default::default() };
    let e = train(&cfg, |_| {}).unwrap_err().to_string();
    assert!(e.contains("Discrete"), "{e}");
}

#[test]
fn ppo_solves_cartpole_on_most_seeds() {
    if std::env::var("FLARE_SLOW_TESTS").is_err() {
        eprintln!("skipped: set FLARE_SLOW_TESTS=1 to train five seeds to 500k steps");
        return;
    }
    let solved: Vec<bool> =
        (1..=5).map(|seed| train(&PpoConfig { seed, ..Default::default() }, |_| {}).unwrap().0.solved).collect();
    assert!(solved.iter().filter(|s| **s).count() >= 4, "{solved:?}");
}

#[test]
fn dqn_improves_quickly_on_cartpole() {
    use flare_rl::algo::dqn::{train, DqnConfig};
    // A faster schedule than the defaults (which solve CartPole in a few hundred thousand steps):
    // explore over 10k steps, learn from step 1k, train every 2 steps.
    let cfg = DqnConfig {
        seed: 1,
        total_env_steps: 30_000,
        exploration_fraction: 1.0 / 3.0,
        learning_starts: 1_000,
        train_frequency: 2,
        batch_size: 64,
        ..Default::default()
    };
    let (s, _) = train(&cfg, |_| {}).unwrap();
    assert!(s.mean_return > 100.0, "mean return {} after 30k steps", s.mean_return);
}

#[test]
fn a2c_solves_cartpole() {
    use flare_rl::algo::a2c::{train, A2cConfig};
    // Measured: seeds 1-5 solve within 136k-184k env steps, about 5 s each.
    let (s, _) = train(&A2cConfig { seed: 1, ..Default::default() }, |_| {}).unwrap();
    assert!(s.solved && s.mean_return >= 475.0, "{s:?}");
    assert!(s.env_steps <= 500_000);
}
