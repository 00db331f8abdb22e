//! PPO with env-runner actors in real worker processes: weights go out through the object store
//! each iteration, rollouts come back, and a runner killed mid-training is restarted.

use flare_rl::algo::ppo::{train_distributed, PpoConfig};
use flare_rl::runner::EnvRunner;

fn init() {
    flare_core::init_with(flare_core::Config::new().num_cpus(4.0).log_to_driver(false)).unwrap();
}

#[test]
fn distributed_ppo_learns_and_survives_a_runner_kill() {
    init();
    let cfg = PpoConfig { seed: 2, num_envs: 2, total_env_steps: 48_000, ..Default::default() };
    let mut killed = false;
    let mut restarted = false;
    let mut curve = Vec::new();
    let (s, _) = train_distributed(&cfg, 2, |p| {
        let (steps, mean) = (p.env_steps, p.mean_return);
        curve.push((steps, mean));
        if killed && !restarted {
            let actors = flare_core::list(flare_core::StateQuery::Actors).unwrap().actors;
            restarted = actors
                .iter()
                .any(|a| a.class.ends_with("EnvRunner") && a.restarts == 1 && a.state == flare_core::state::ActorState::Alive);
        }
        if !killed && steps >= 10_000 {
            // SIGKILL one runner's process: the actor restarts and its call is retried.
            let actors = flare_core::list(flare_core::StateQuery::Actors).unwrap().actors;
            let runner = actors.iter().find(|a| a.class.ends_with("EnvRunner") && a.pid.is_some()).expect("a runner");
            unsafe { libc_kill(runner.pid.unwrap() as i32, 9) };
            killed = true;
        }
    })
    .unwrap();
    assert!(killed);
    assert!(s.env_steps >= 48_000, "{s:?}");
    assert!(s.mean_return > 100.0, "mean return {} after {} steps; curve {curve:?}", s.mean_return, s.env_steps);
    assert!(restarted, "the killed runner came back and training went on");
}

#[test]
fn runners_sample_in_their_own_processes() {
    init();
    let r = EnvRunner::remote("CartPole-v1".to_string(), 3u32, 7u64).spawn().unwrap();
    let policy = flare_rl::nn::Mlp::new(&[4, 8, 2], 1.0, 0.01, &mut flare_rl::rng::Rng::new(0));
    let w = flare_core::put(&policy).unwrap();
    let rollout = r.sample(&w, 16u32).get().unwrap();
    assert_ne!(rollout.pid, std::process::id());
    assert_eq!(rollout.obs.len(), 3 * 16);
    assert_eq!(rollout.last_obs.len(), 3);
    let e = EnvRunner::remote("Nope-v0".to_string(), 1u32, 0u64).spawn().unwrap().sample(&w, 1u32).get().unwrap_err();
    assert!(e.to_string().contains("no environment `Nope-v0`"), "{e}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
