//! Searchers on their own: determinism, quality against random search, the wrappers.

use flare_tune::search::{ConcurrencyLimiter, Mode, RandomSearch, Repeater, Searcher, Suggestion, Tpe, TpeConfig};
use flare_tune::{bench, choice, randint, uniform, ParamSpace};
use serde_json::json;

#[test]
fn tpe_is_deterministic_per_seed_and_beats_random_search() {
    let f = bench::function("branin").unwrap();
    let a = bench::study(&f, "tpe", 3, 60).unwrap();
    let b = bench::study(&f, "tpe", 3, 60).unwrap();
    assert_eq!(a, b, "same seed, same trials");
    assert_ne!(a, bench::study(&f, "tpe", 4, 60).unwrap());
    // Median best after 60 trials over 9 seeds: TPE well below random search.
    let med = |s: &str| {
        let mut v: Vec<f64> = (0..9).map(|seed| *bench::study(&f, s, seed, 60).unwrap().last().unwrap()).collect();
        v.sort_by(f64::total_cmp);
        v[4]
    };
    let (tpe, random) = (med("tpe"), med("random"));
    assert!(tpe < 0.8 && tpe < 0.8 * random, "tpe {tpe} random {random}");
}

#[test]
fn tpe_handles_integers_choices_and_maximization() {
    let space = ParamSpace::new().set("k", randint(0, 10)).set("c", choice(["a", "b", "c"])).set("x", uniform(0.0, 1.0));
    let flat = space.flatten().unwrap();
    let mut s = Tpe::new(TpeConfig { seed: 1, ..Default::default() });
    s.set_search_properties(&flat.searched, "score", Mode::Max);
    let mut best = f64::NEG_INFINITY;
    for t in 0..60 {
        let id = t.to_string();
        let Suggestion::Config(v) = s.suggest(&id) else { panic!() };
        // Dimensions come in name order: c, k, x.
        let names: Vec<String> = flat.searched.iter().map(|d| d.name()).collect();
        assert_eq!(names, ["c", "k", "x"]);
        let c = v[0].as_str().unwrap().to_string();
        let k = v[1].as_i64().unwrap();
        assert!((0..10).contains(&k));
        let x = v[2].as_f64().unwrap();
        // Best at k = 7, c = "b", x = 0.5.
        let score = -((k - 7) as f64).abs() - if c == "b" { 0.0 } else { 2.0 } - (x - 0.5).abs();
        best = best.max(score);
        s.on_trial_complete(&id, Some(&json!({"score": score})), false);
    }
    assert!(best > -0.5, "best {best}");
}

#[test]
fn the_limiter_waits_and_the_repeater_averages() {
    let flat = ParamSpace::new().set("x", uniform(0.0, 1.0)).flatten().unwrap();
    let mut l = ConcurrencyLimiter::new(RandomSearch::new(0), 2);
    l.set_search_properties(&flat.searched, "m", Mode::Min);
    assert!(matches!(l.suggest("a"), Suggestion::Config(_)));
    assert!(matches!(l.suggest("b"), Suggestion::Config(_)));
    assert_eq!(l.suggest("c"), Suggestion::Wait);
    l.on_trial_complete("a", Some(&json!({"m": 1.0})), false);
    assert!(matches!(l.suggest("c"), Suggestion::Config(_)));

    /// Records what it hears.
    struct Spy(Vec<(String, Option<f64>)>, RandomSearch);
    impl Searcher for Spy {
        fn set_search_properties(&mut self, d: &[flare_tune::space::Dim], m: &str, mode: Mode) {
            self.1.set_search_properties(d, m, mode)
        }
        fn suggest(&mut self, id: &str) -> Suggestion {
            self.1.suggest(id)
        }
        fn on_trial_complete(&mut self, id: &str, r: Option<&serde_json::Value>, _e: bool) {
            self.0.push((id.to_string(), r.and_then(|r| r["m"].as_f64())));
        }
    }
    let mut r = Repeater::new(Spy(Vec::new(), RandomSearch::new(0)), 3);
    r.set_search_properties(&flat.searched, "m", Mode::Min);
    let configs: Vec<Suggestion> = ["t1", "t2", "t3", "t4"].iter().map(|id| r.suggest(id)).collect();
    assert_eq!(configs[0], configs[1]);
    assert_eq!(configs[1], configs[2]);
    assert_ne!(configs[2], configs[3]);
    for (id, m) in [("t1", 1.0), ("t2", 2.0), ("t3", 6.0)] {
        r.on_trial_complete(id, Some(&json!({"m": m})), false);
    }
    assert_eq!(r.inner().0, vec![("t1".to_string(), Some(3.0))], "one completion with the mean of the three");
}
