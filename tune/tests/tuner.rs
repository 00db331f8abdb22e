//! The Tuner with trials as real actor processes: GPU packing, grids, ASHA, failures,
//! restore after the driver is killed, and the result grid's exports.

use flare_tune::{
    grid_search, uniform, with_resources, Asha, Mode, ParamSpace, Resources, RunConfig, TrialContext, TrialStatus, TuneConfig,
    Tuner,
};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

type R = Result<(), flare_tune::BoxError>;

fn init() {
    flare_core::init_with(flare_core::Config::new().num_cpus(4.0).num_gpus(1.0).log_to_driver(false)).unwrap();
}

fn storage(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flare_tune_test_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn quiet(name: &str, dir: &std::path::Path) -> RunConfig {
    RunConfig { name: Some(name.into()), storage_path: Some(dir.to_path_buf()), verbose: Some(false), ..Default::default() }
}

fn now_ms() -> u64 {
    flare_core::util::now_ms()
}

fn gpu_trial(ctx: &mut TrialContext) -> R {
    let start = now_ms();
    std::thread::sleep(Duration::from_millis(800));
    let gpus = ctx.gpu_ids();
    ctx.report(
        json!({"start": start, "end": now_ms(), "gpus": gpus, "pid": std::process::id(),
                      "cuda": std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()}),
        None,
    )?;
    Ok(())
}

#[test]
fn four_quarter_gpu_trials_share_one_gpu_at_once() {
    init();
    let dir = storage("gpu");
    let grid = Tuner::new(
        with_resources(gpu_trial, Resources { cpu: 0.5, gpu: 0.25, memory: 0 }),
        ParamSpace::new().set("i", grid_search([0, 1, 2, 3])),
    )
    .run_config(quiet("gpu", &dir))
    .fit()
    .unwrap();
    assert_eq!(grid.results.len(), 4);
    let mut pids = std::collections::HashSet::new();
    for r in &grid.results {
        assert_eq!(r.status, TrialStatus::Terminated, "{r:?}");
        assert_eq!(r.metrics["gpus"], json!([0]), "every trial sees GPU 0: {}", r.metrics);
        assert_eq!(r.metrics["cuda"], "0");
        pids.insert(r.metrics["pid"].as_u64().unwrap());
    }
    assert_eq!(pids.len(), 4, "each trial is its own process");
    // All four ran at the same time: the latest start is before the earliest end.
    let latest_start = grid.results.iter().map(|r| r.metrics["start"].as_u64().unwrap()).max().unwrap();
    let earliest_end = grid.results.iter().map(|r| r.metrics["end"].as_u64().unwrap()).min().unwrap();
    assert!(latest_start < earliest_end, "the four 0.25-GPU trials overlapped on the one GPU");
    let _ = std::fs::remove_dir_all(dir);
}

fn grid_trial(ctx: &mut TrialContext) -> R {
    let c = ctx.config().clone();
    ctx.report(json!({"score": c["a"].as_i64().unwrap_or(0) as f64 + c["m"]["x"].as_f64().unwrap_or(0.0)}), None)?;
    Ok(())
}

#[test]
fn grid_search_covers_the_cross_product_times_num_samples() {
    init();
    let dir = storage("grid");
    let space = ParamSpace::new()
        .set("a", grid_search([1, 2, 3]))
        .set("b", grid_search(["x", "y"]))
        .nest("m", ParamSpace::new().set("x", uniform(0.0, 1.0)));
    let grid = Tuner::new(grid_trial as flare_tune::Trainable, space)
        .tune_config(TuneConfig { metric: Some("score".into()), mode: Mode::Max, num_samples: 2, ..Default::default() })
        .run_config(quiet("grid", &dir))
        .fit()
        .unwrap();
    assert_eq!(grid.results.len(), 12);
    let mut seen = std::collections::HashMap::new();
    for r in &grid.results {
        assert_eq!(r.status, TrialStatus::Terminated);
        *seen.entry((r.config["a"].as_i64().unwrap(), r.config["b"].as_str().unwrap().to_string())).or_insert(0) += 1;
        let x = r.config["m"]["x"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x));
    }
    assert_eq!(seen.len(), 6);
    assert!(seen.values().all(|&n| n == 2), "{seen:?}");
    let best = grid.get_best_result(None, None).unwrap();
    assert_eq!(best.config["a"], 3);
    // Exports and per-trial files.
    grid.to_csv(&dir.join("results.csv")).unwrap();
    grid.to_json(&dir.join("results.json")).unwrap();
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13);
    assert!(csv.lines().next().unwrap().contains("config/a"));
    for r in &grid.results {
        assert!(r.path.join("params.json").exists() && r.path.join("result.jsonl").exists());
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn curve_trial(ctx: &mut TrialContext) -> R {
    let q = ctx.config()["q"].as_f64().unwrap_or(0.0);
    for t in 1..=9u32 {
        ctx.report(json!({"acc": q * (1.0 - 1.0 / (t as f64 + 1.0))}), None)?;
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[test]
fn asha_stops_the_trials_a_known_order_says() {
    init();
    let dir = storage("asha");
    // Trials run one at a time, each worse than all before it: ASHA keeps the first to max_t
    // and stops every other at its first rung (iteration 1).
    let grid =
        Tuner::new(curve_trial as flare_tune::Trainable, ParamSpace::new().set("q", grid_search([9.0, 8.0, 7.0, 6.0, 5.0])))
            .tune_config(TuneConfig {
                metric: Some("acc".into()),
                mode: Mode::Max,
                max_concurrent_trials: Some(1),
                scheduler: Some(Box::new(Asha::new(9, 1, 3.0, 1))),
                ..Default::default()
            })
            .run_config(quiet("asha", &dir))
            .fit()
            .unwrap();
    let first = &grid.results[0];
    assert_eq!(first.iterations, 9, "{first:?}");
    for r in &grid.results[1..] {
        assert_eq!(r.status, TrialStatus::Stopped, "{r:?}");
        assert!(r.iterations < 3, "stopped at the first rung, not later: {} iterations", r.iterations);
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn flaky_trial(ctx: &mut TrialContext) -> R {
    let marker = ctx.trial_dir().join("failed_once");
    if ctx.checkpoint().is_none() {
        let ck = ctx.save_checkpoint(|d| Ok(std::fs::write(d.join("state"), "1")?))?;
        ctx.report(json!({"v": 1}), Some(ck))?;
    }
    if !marker.exists() {
        std::fs::write(&marker, "")?;
        return Err("injected failure".into());
    }
    let resumed = ctx.checkpoint().map(|c| std::fs::read_to_string(c.join("state")).unwrap_or_default());
    ctx.report(json!({"v": 2, "resumed": resumed}), None)?;
    Ok(())
}

#[test]
fn a_failed_trial_is_retried_from_its_checkpoint() {
    init();
    let dir = storage("retry");
    let grid = Tuner::new(flaky_trial as flare_tune::Trainable, ParamSpace::new())
        .run_config(RunConfig { failure: flare_tune::FailureConfig { max_failures: 1 }, ..quiet("retry", &dir) })
        .fit()
        .unwrap();
    let r = &grid.results[0];
    assert_eq!(r.status, TrialStatus::Terminated, "{r:?}");
    assert_eq!(r.failures, 1);
    assert_eq!(r.metrics["resumed"], "1", "the retry started from the saved checkpoint");
    assert_eq!(r.iterations, 2);
    let grid =
        Tuner::new(flaky_trial as flare_tune::Trainable, ParamSpace::new()).run_config(quiet("noretry", &dir)).fit().unwrap();
    assert_eq!(grid.results[0].status, TrialStatus::Error);
    assert!(grid.results[0].error.as_deref().unwrap_or("").contains("injected failure"));
    let _ = std::fs::remove_dir_all(dir);
}

fn slow_trial(ctx: &mut TrialContext) -> R {
    let start = ctx.iteration();
    for _ in start..4 {
        std::thread::sleep(Duration::from_millis(150));
        let ck = ctx.save_checkpoint(|_| Ok(()))?;
        ctx.report(json!({"x": ctx.config()["x"]}), Some(ck))?;
    }
    Ok(())
}

fn restore_space() -> ParamSpace {
    ParamSpace::new().set("x", grid_search((0..8).collect::<Vec<i32>>()))
}

/// The driver that the restore test SIGKILLs (run as a child process of the test binary).
#[test]
fn child_driver_for_restore() {
    let Ok(dir) = std::env::var("FLARE_TUNE_CHILD_DIR") else { return };
    flare_core::init_with(flare_core::Config::new().num_cpus(2.0).log_to_driver(false)).unwrap();
    let _ = Tuner::new(slow_trial as flare_tune::Trainable, restore_space())
        .run_config(quiet("exp", std::path::Path::new(&dir)))
        .fit();
}

#[test]
fn restore_after_a_killed_driver_accounts_for_every_trial_once() {
    init();
    let dir = storage("restore");
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_driver_for_restore", "--nocapture"])
        .env("FLARE_TUNE_CHILD_DIR", &dir)
        .spawn()
        .unwrap();
    // Kill it once some trials finished and others are running.
    let journal = dir.join("exp").join(flare_tune::tuner_journal_name());
    let t0 = Instant::now();
    loop {
        let done = std::fs::read_to_string(&journal).map(|s| s.matches("\"event\":\"done\"").count()).unwrap_or(0);
        if done >= 2 || t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let before = std::fs::read_to_string(&journal).unwrap();
    let done_before = before.matches("\"event\":\"done\"").count();
    assert!((2..8).contains(&done_before), "killed mid-sweep ({done_before} done)");
    let grid = Tuner::restore(&dir.join("exp"), slow_trial as flare_tune::Trainable, restore_space(), false)
        .unwrap()
        .run_config(quiet("exp", &dir))
        .fit()
        .unwrap();
    assert_eq!(grid.results.len(), 8);
    let mut xs: Vec<i64> = grid.results.iter().map(|r| r.config["x"].as_i64().unwrap()).collect();
    xs.sort();
    assert_eq!(xs, (0..8).collect::<Vec<_>>(), "every grid point exactly once");
    for r in &grid.results {
        assert_eq!(r.status, TrialStatus::Terminated, "{r:?}");
        assert_eq!(r.iterations, 4, "{r:?}");
        let lines = std::fs::read_to_string(r.path.join("result.jsonl")).unwrap().lines().count();
        assert!(lines >= 4, "{lines} results for {}", r.trial_id);
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn quad_trial(ctx: &mut TrialContext) -> R {
    let x = ctx.config()["x"].as_f64().unwrap_or(0.0);
    ctx.report(json!({"loss": (x - 0.3) * (x - 0.3)}), None)?;
    Ok(())
}

#[test]
fn tpe_drives_the_tuner_and_invalid_setups_fail_with_a_message() {
    init();
    let dir = storage("tpe");
    let grid = Tuner::new(quad_trial as flare_tune::Trainable, ParamSpace::new().set("x", uniform(-2.0, 2.0)))
        .tune_config(TuneConfig {
            metric: Some("loss".into()),
            num_samples: 30,
            search_alg: Some(Box::new(flare_tune::ConcurrencyLimiter::new(
                flare_tune::Tpe::new(flare_tune::TpeConfig { seed: 2, ..Default::default() }),
                2,
            ))),
            ..Default::default()
        })
        .run_config(quiet("tpe", &dir))
        .fit()
        .unwrap();
    assert_eq!(grid.results.len(), 30);
    let best = grid.get_best_result(None, None).unwrap();
    assert!(best.metrics["loss"].as_f64().unwrap() < 0.01, "{:?}", best.metrics);
    let e = Tuner::new(with_resources(quad_trial, Resources { cpu: 64.0, gpu: 0.0, memory: 0 }), ParamSpace::new())
        .run_config(quiet("big", &dir))
        .fit()
        .unwrap_err();
    assert!(e.to_string().contains("CPU: 64"), "{e}");
    let e = Tuner::new(quad_trial as flare_tune::Trainable, ParamSpace::new().set("x", uniform(1.0, 0.0)))
        .run_config(quiet("bad", &dir))
        .fit()
        .unwrap_err();
    assert!(e.to_string().contains("`x`"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

fn pbt_trial(ctx: &mut TrialContext) -> R {
    // State: an accumulated score and who wrote the checkpoint it came from.
    let (mut score, mut owner) = (0.0f64, ctx.trial_id().to_string());
    let mut cloned_from = String::new();
    if let Some(c) = ctx.checkpoint() {
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.join("state.json"))?)?;
        score = s["score"].as_f64().unwrap_or(0.0);
        owner = s["owner"].as_str().unwrap_or_default().to_string();
        if owner != ctx.trial_id() {
            cloned_from = owner.clone();
        }
    }
    // Start together (other tests share the cluster): wait until all four trials are up.
    let exp = ctx.trial_dir().parent().unwrap().to_path_buf();
    std::fs::write(exp.join(format!("up_{}", ctx.trial_id())), "")?;
    let t0 = Instant::now();
    while std::fs::read_dir(&exp)?.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("up_")).count() < 4
        && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let lr = ctx.config()["lr"].as_f64().unwrap_or(0.0);
    while ctx.iteration() < 12 {
        std::thread::sleep(Duration::from_millis(60));
        score += lr;
        let me = ctx.trial_id().to_string();
        let ck =
            ctx.save_checkpoint(|d| Ok(std::fs::write(d.join("state.json"), json!({"score": score, "owner": me}).to_string())?))?;
        ctx.report(json!({"score": score, "cloned_from": cloned_from, "first_owner": owner}), Some(ck))?;
    }
    Ok(())
}

#[test]
fn pbt_restarts_the_worst_trial_from_a_better_trials_checkpoint() {
    init();
    let dir = storage("pbt");
    let pbt = flare_tune::Pbt::new(3, ParamSpace::new().set("lr", uniform(0.1, 10.0)), 0).unwrap();
    let grid = Tuner::new(pbt_trial as flare_tune::Trainable, ParamSpace::new().set("lr", grid_search([0.1, 1.0, 2.0, 9.0])))
        .tune_config(TuneConfig {
            metric: Some("score".into()),
            mode: Mode::Max,
            scheduler: Some(Box::new(pbt)),
            ..Default::default()
        })
        .run_config(quiet("pbt", &dir))
        .fit()
        .unwrap();
    let journal = std::fs::read_to_string(grid.path.join(flare_tune::JOURNAL)).unwrap();
    let exploits: Vec<serde_json::Value> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "exploit")
        .collect();
    assert!(!exploits.is_empty(), "no exploit happened:\n{journal}");
    // The slowest learner (lr 0.1, trial 00000) was sent to a better trial's checkpoint and
    // resumed from it: its results say whose checkpoint it continued from.
    let worst = grid.results.iter().find(|r| r.trial_id == "00000").unwrap();
    let e = exploits.iter().find(|e| e["id"] == "00000").expect("the worst trial exploited");
    let donor = e["from"].as_str().unwrap();
    assert_ne!(donor, "00000");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(worst.path.join("result.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["cloned_from"] == donor), "resumed from {donor}'s checkpoint");
    assert_ne!(worst.config["lr"], 0.1, "its config was explored from the donor's");
    assert!(grid.results.iter().all(|r| r.status == TrialStatus::Terminated && r.iterations == 12), "{:?}", grid.results);
    let _ = std::fs::remove_dir_all(dir);
}

fn hb_trial(ctx: &mut TrialContext) -> R {
    let q = ctx.config()["q"].as_f64().unwrap_or(0.0);
    let mut t = 0u64;
    if let Some(c) = ctx.checkpoint() {
        t = std::fs::read_to_string(c.join("t"))?.trim().parse()?;
    }
    while t < 9 {
        t += 1;
        let ck = ctx.save_checkpoint(|d| Ok(std::fs::write(d.join("t"), t.to_string())?))?;
        ctx.report(json!({"acc": q * (1.0 - 1.0 / (t as f64 + 1.0)), "t": t}), Some(ck))?;
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[test]
fn hyperband_pauses_at_each_milestone_and_keeps_the_best_third() {
    init();
    let dir = storage("hyperband");
    let grid = Tuner::new(
        hb_trial as flare_tune::Trainable,
        ParamSpace::new().set("q", grid_search((1..=9).map(|q| q as f64).collect::<Vec<_>>())),
    )
    .tune_config(TuneConfig {
        metric: Some("acc".into()),
        mode: Mode::Max,
        scheduler: Some(Box::new(flare_tune::HyperBand::new(9, 3.0))),
        ..Default::default()
    })
    .run_config(quiet("hyperband", &dir))
    .fit()
    .unwrap();
    // One bracket of 9 at milestone 1: the best 3 (q 9, 8, 7) go to 3, the best of those to 9.
    for r in &grid.results {
        let q = r.config["q"].as_f64().unwrap() as u64;
        let want = match q {
            9 => 9,
            7 | 8 => 3,
            _ => 1,
        };
        assert_eq!(r.metrics["t"].as_u64().unwrap(), want, "trial q={q}: {r:?}");
        assert!(r.status.is_done(), "{r:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
