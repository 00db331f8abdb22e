//! Every recorded step of every episode in `shared/oracles/gym` (gymnasium 1.4.0) reproduces
//! obs, reward, terminated and truncated with the same bits.

use flare_rl::replay::replay_file;
use std::path::PathBuf;

fn oracle(name: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/oracles/gym");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "oracle {} not found: the tests read ../shared/oracles next to the repository root (CI provides it)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

fn check(name: &str) {
    let r = replay_file(&oracle(name)).unwrap();
    assert!(r.steps > 0 && r.episodes > 0);
    assert!(r.flag_mismatches.is_empty(), "{name}: {:?}", r.flag_mismatches);
    assert!(
        r.bit_exact(),
        "{name}: {} of {} steps bit-exact; max obs error {:e}, max reward error {:e}",
        r.exact_steps,
        r.steps,
        r.max_obs_error,
        r.max_reward_error
    );
}

#[test]
fn cartpole_matches_gymnasium() {
    check("gym_CartPole-v1.json");
}

#[test]
fn acrobot_matches_gymnasium() {
    check("gym_Acrobot-v1.json");
}

#[test]
fn mountain_car_matches_gymnasium() {
    check("gym_MountainCar-v0.json");
}

#[test]
fn mountain_car_continuous_matches_gymnasium() {
    check("gym_MountainCarContinuous-v0.json");
}

#[test]
fn pendulum_matches_gymnasium() {
    check("gym_Pendulum-v1.json");
}

#[test]
fn malformed_traces_get_clear_errors() {
    let dir = std::env::temp_dir().join(format!("flare-rl-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bad.json");
    std::fs::write(&p, r#"{"env_id": "CartPole-v1", "episodes": [{"initial_state": "nope"}]}"#).unwrap();
    let e = replay_file(p.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("initial_state"), "{e}");
    std::fs::write(&p, r#"{"env_id": "Nope-v0", "episodes": []}"#).unwrap();
    let e = replay_file(p.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("no environment `Nope-v0`"), "{e}");
    let e = replay_file("/nonexistent/trace.json").unwrap_err().to_string();
    assert!(e.contains("cannot read"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
