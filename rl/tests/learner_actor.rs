//! Learners in actors of their own, placed by the scheduler on a GPU share (`learner_num_gpus`):
//! the runners' rollouts go to the learner's process, the policy comes back, and the learner
//! uses the GPU it was given (cuda:0 of its `CUDA_VISIBLE_DEVICES`) where CUDA is built and
//! present, the CPU otherwise. The node here declares one GPU, as `ray start --num-gpus 1` can
//! on any machine.

use flare_rl::algo::{dqn, ppo, sac, Progress};

/// One test at a time: each checks the GPU share its own learner holds.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn init() -> std::sync::MutexGuard<'static, ()> {
    let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    flare_core::init_with(flare_core::Config::new().num_cpus(4.0).num_gpus(1.0).log_to_driver(false)).unwrap();
    turn
}

/// The device a learner given GPU 0 must report: cuda:0 where this build and machine have CUDA.
fn expected_device() -> &'static str {
    if candle_core::utils::cuda_is_available() && candle_core::Device::new_cuda(0).is_ok() {
        "cuda:0"
    } else {
        "cpu"
    }
}

fn gpus_in_use() -> f64 {
    let r = flare_core::cluster_resources().unwrap();
    r.total.get("GPU") - r.available.get("GPU")
}

fn learner_pids(class: &str) -> Vec<u32> {
    let actors = flare_core::list(flare_core::StateQuery::Actors).unwrap().actors;
    actors.iter().filter(|a| a.class.ends_with(class)).filter_map(|a| a.pid).collect()
}

#[test]
fn ppo_learns_in_a_gpu_learner_actor() {
    let _turn = init();
    let cfg = ppo::PpoConfig { seed: 3, num_envs: 4, total_env_steps: 40_960, learner_num_gpus: 0.5, ..Default::default() };
    let mut in_use = Vec::new();
    let mut pids = Vec::new();
    let (s, policy) = ppo::train_distributed(&cfg, 2, |_: &Progress| {
        if in_use.is_empty() {
            in_use.push(gpus_in_use());
            pids = learner_pids("PpoLearnerActor");
        }
    })
    .unwrap();
    eprintln!("{s:?}");
    assert_eq!(in_use, vec![0.5], "the learner actor holds half the GPU while it trains");
    assert_eq!(pids.len(), 1, "one learner actor");
    assert_ne!(pids[0], std::process::id(), "the learner runs in its own process");
    assert_eq!(s.learner_device.as_deref(), Some(expected_device()));
    assert!(s.env_steps >= 40_960 && s.learner_s > 0.0, "{s:?}");
    // A random CartPole policy averages about 22.
    assert!(s.mean_return > 60.0, "mean return {} after {} steps", s.mean_return, s.env_steps);
    assert_eq!(policy.sizes, vec![4, 64, 64, 2]);
}

#[test]
fn dqn_learns_in_a_gpu_learner_actor() {
    let _turn = init();
    let cfg = dqn::DqnConfig {
        seed: 1,
        total_env_steps: 20_000,
        exploration_fraction: 0.5,
        learning_starts: 1_000,
        train_frequency: 2,
        batch_size: 64,
        learner_num_gpus: 1.0,
        stop_when_solved: false,
        ..Default::default()
    };
    let mut in_use = None;
    let (s, _) = dqn::train_distributed(&cfg, 2, |_: &Progress| {
        in_use.get_or_insert_with(gpus_in_use);
    })
    .unwrap();
    eprintln!("{s:?}");
    assert_eq!(in_use, Some(1.0));
    assert_eq!(s.learner_device.as_deref(), Some(expected_device()));
    assert!(s.mean_return > 40.0, "mean return {} after {} steps", s.mean_return, s.env_steps);
}

#[test]
fn sac_learns_in_a_gpu_learner_actor_and_hands_its_state_back() {
    let _turn = init();
    let cfg = sac::SacConfig {
        total_env_steps: 1_600,
        learning_starts: 400,
        batch_size: 32,
        hidden: 32,
        num_envs_per_runner: 2,
        steps_per_round: 25,
        learner_num_gpus: 0.5,
        ..Default::default()
    };
    let mut in_use = None;
    let mut pids = Vec::new();
    let (s, learner) = sac::train_distributed(&cfg, 2, |_: &Progress| {
        in_use.get_or_insert_with(gpus_in_use);
        pids = learner_pids("SacLearnerActor");
    })
    .unwrap();
    assert_eq!(in_use, Some(0.5));
    assert_eq!(pids.len(), 1);
    assert_ne!(pids[0], std::process::id());
    assert_eq!(s.learner_device.as_deref(), Some(expected_device()));
    assert_eq!(s.env_steps, 1_600);
    assert!(s.learner_s > 0.0, "{s:?}");
    // The learner came back from the actor's process: it acts, within Pendulum's torque bound.
    let a = learner.act(&[1.0, 0.0, 0.0]).unwrap();
    assert!(a[0].abs() <= 2.0 && a[0] != 0.0, "{a:?}");
}

#[test]
fn a_learner_asking_for_more_gpus_than_there_are_fails_clearly() {
    let _turn = init();
    let cfg = ppo::PpoConfig { total_env_steps: 2_048, learner_num_gpus: 2.0, ..Default::default() };
    let t = std::time::Instant::now();
    let e = ppo::train_distributed(&cfg, 1, |_: &Progress| {}).unwrap_err().to_string();
    assert!(e.contains("GPU"), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "failed after {:?}", t.elapsed());
    // And in this process there is no learner actor to put a GPU share on.
    let e = ppo::train(&ppo::PpoConfig { learner_num_gpus: 1.0, ..Default::default() }, |_: &Progress| {}).unwrap_err();
    assert!(e.to_string().contains("needs env-runner actors"), "{e}");
}
