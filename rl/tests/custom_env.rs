//! A user's own environment: the `Env` trait implemented here, registered with
//! `register_env!`, made by id with its time limit, stepped by env runners in worker processes
//! (which know the id because the registration runs before `main` in every process) and
//! learned by PPO.

use flare_rl::algo::ppo::{train, train_distributed, PpoConfig};
use flare_rl::env::{Info, Step};
use flare_rl::{make, Action, Env, Space};

/// Press the right button: action 1 pays 1, action 0 nothing; ten steps an episode.
#[derive(Default)]
struct Button {
    presses: u32,
}

impl Env for Button {
    fn id(&self) -> &str {
        "Button-v0"
    }
    fn observation_space(&self) -> Space {
        Space::Box { low: vec![0.0], high: vec![10.0] }
    }
    fn action_space(&self) -> Space {
        Space::Discrete { n: 2, start: 0 }
    }
    fn reset(&mut self, _seed: Option<u64>) -> (Vec<f32>, Info) {
        self.presses = 0;
        (vec![0.0], Info::new())
    }
    fn step(&mut self, action: &Action) -> flare_rl::Result<Step> {
        let reward = match action {
            Action::Discrete(1) => 1.0,
            Action::Discrete(0) => 0.0,
            other => {
                return Err(flare_rl::Error::InvalidAction {
                    env: "Button-v0".into(),
                    action: other.to_string(),
                    expected: "Discrete(2)".into(),
                })
            }
        };
        self.presses += 1;
        Ok(Step { obs: vec![self.presses as f32], reward, terminated: false, truncated: false, info: Info::new() })
    }
    fn state(&self) -> Vec<f64> {
        vec![self.presses as f64]
    }
    fn set_state(&mut self, state: &[f64]) {
        self.presses = state.first().copied().unwrap_or(0.0) as u32;
    }
    fn reward_threshold(&self) -> Option<f64> {
        Some(9.5)
    }
}

flare_rl::register_env!("Button-v0", 10, || Box::new(Button::default()));

#[test]
fn a_registered_env_is_made_by_id_with_its_time_limit() {
    let mut env = make("Button-v0").unwrap();
    env.reset(Some(0));
    let mut truncated_at = None;
    for t in 1..=10 {
        let st = env.step(&Action::Discrete(1)).unwrap();
        if st.truncated {
            truncated_at = Some(t);
        }
    }
    assert_eq!(truncated_at, Some(10));
    let e = flare_rl::register("Button-v0", 5, || Box::new(Button::default())).unwrap_err();
    assert!(e.to_string().contains("registered already"), "{e}");
    let e = flare_rl::register("CartPole-v1", 5, || Box::new(Button::default())).unwrap_err();
    assert!(e.to_string().contains("registered already"), "{e}");
    let e = make("Nope-v0").err().unwrap().to_string();
    assert!(e.contains("Button-v0") && e.contains("CartPole-v1"), "the known ids include it: {e}");
}

#[test]
fn ppo_learns_a_registered_env_here_and_with_env_runners() {
    let cfg = PpoConfig { env_id: "Button-v0".into(), total_env_steps: 20_480, num_envs: 4, num_steps: 64, ..Default::default() };
    let (s, _) = train(&cfg, |_| {}).unwrap();
    // Random presses average 5 per episode; the threshold is 9.5.
    assert!(s.solved && s.mean_return >= 9.5, "{s:?}");

    flare_core::init_with(flare_core::Config::new().num_cpus(2.0).log_to_driver(false)).unwrap();
    let (s, _) = train_distributed(&cfg, 2, |_| {}).unwrap();
    assert!(s.solved && s.mean_return >= 9.5, "runners in worker processes made and stepped it: {s:?}");
}
