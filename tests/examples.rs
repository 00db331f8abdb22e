//! The training examples, run as their users run them (cargo builds examples with the tests).

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe.parent().and_then(|d| d.parent()).map(|d| d.join("examples").join(name)).expect("target/<profile>/examples");
    assert!(bin.exists(), "{} is missing: `cargo test` builds the examples (or run `cargo build --examples`)", bin.display());
    bin
}

#[test]
fn train_ddp_reaches_the_accuracy_it_promises_after_a_resume() {
    let out = Command::new(example("train_ddp")).env("FLARE_TRAIN_QUIET", "1").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "train_ddp failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("part 2: resumed at epoch 20"), "{stdout}");
    let acc: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("part 2: resumed at epoch 20, trained to 40: test accuracy "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no final accuracy in:\n{stdout}"));
    assert!(acc >= 0.95, "test accuracy {acc}");
}

#[test]
fn torch_parity_passes_and_rejects_bad_arguments() {
    let oracle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/oracles/train");
    assert!(oracle.join("trajectories.json").exists(), "the PyTorch oracle is missing: expected {}", oracle.display());
    let out = Command::new(example("torch_parity"))
        .args(["--oracle", oracle.to_str().unwrap(), "--run", "a_sgd_momentum", "--world-size", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("within 1e-5: OK"), "{stdout}");
    let out =
        Command::new(example("torch_parity")).args(["--oracle", oracle.to_str().unwrap(), "--run", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run `nope`"));
    let out = Command::new(example("torch_parity")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
