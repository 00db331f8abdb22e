//! Search spaces, as Ray Tune writes them: `uniform`, `quniform`, `loguniform`,
//! `qloguniform`, `randint`, `qrandint`, `choice`, `grid_search`, `sample_from`, constants and
//! nested maps. A resolved config is a `serde_json::Value` object of the same shape.

use crate::rng::Rng;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A value computed from the config (`sample_from`).
pub type Derive = fn(&Value) -> Value;

/// One parameter's domain.
#[derive(Clone, Debug)]
pub enum Domain {
    /// A float in `[lo, hi]`, log-uniform when `log`, rounded to a multiple of `q` if given.
    Float { lo: f64, hi: f64, log: bool, q: Option<f64> },
    /// An integer in `[lo, hi)` (`randint`) or, with `q`, a multiple of `q` in `[lo, hi]` (`qrandint`).
    Int { lo: i64, hi: i64, log: bool, q: Option<i64> },
    /// One of the values.
    Choice(Vec<Value>),
    /// Every value, each in its own trial (the cross product with other grids).
    Grid(Vec<Value>),
    /// A value computed from the rest of the config (resolved after every other parameter).
    SampleFrom(Derive),
    /// A fixed value.
    Const(Value),
    /// A nested space.
    Space(ParamSpace),
}

pub fn uniform(lo: f64, hi: f64) -> Domain {
    Domain::Float { lo, hi, log: false, q: None }
}
pub fn quniform(lo: f64, hi: f64, q: f64) -> Domain {
    Domain::Float { lo, hi, log: false, q: Some(q) }
}
pub fn loguniform(lo: f64, hi: f64) -> Domain {
    Domain::Float { lo, hi, log: true, q: None }
}
pub fn qloguniform(lo: f64, hi: f64, q: f64) -> Domain {
    Domain::Float { lo, hi, log: true, q: Some(q) }
}
/// An integer in `[lo, hi)`, as Ray's `randint`.
pub fn randint(lo: i64, hi: i64) -> Domain {
    Domain::Int { lo, hi, log: false, q: None }
}
/// A multiple of `q` in `[lo, hi]`, as Ray's `qrandint`.
pub fn qrandint(lo: i64, hi: i64, q: i64) -> Domain {
    Domain::Int { lo, hi, log: false, q: Some(q) }
}
pub fn lograndint(lo: i64, hi: i64) -> Domain {
    Domain::Int { lo, hi, log: true, q: None }
}
pub fn choice<T: Into<Value>>(values: impl IntoIterator<Item = T>) -> Domain {
    Domain::Choice(values.into_iter().map(Into::into).collect())
}
pub fn grid_search<T: Into<Value>>(values: impl IntoIterator<Item = T>) -> Domain {
    Domain::Grid(values.into_iter().map(Into::into).collect())
}
pub fn sample_from(f: Derive) -> Domain {
    Domain::SampleFrom(f)
}

impl<T: Into<Value>> From<T> for Domain {
    fn from(v: T) -> Self {
        Domain::Const(v.into())
    }
}

/// A nested map of domains.
#[derive(Clone, Debug, Default)]
pub struct ParamSpace(pub BTreeMap<String, Domain>);

impl ParamSpace {
    pub fn new() -> Self {
        ParamSpace::default()
    }
    /// Sets `key` (a domain, a nested [`ParamSpace`] or a constant).
    pub fn set(mut self, key: &str, d: impl Into<Domain>) -> Self {
        self.0.insert(key.to_string(), d.into());
        self
    }
    pub fn nest(self, key: &str, space: ParamSpace) -> Self {
        self.set(key, Domain::Space(space))
    }
}

/// A dimension the searcher samples: its path in the config and its domain.
#[derive(Clone, Debug)]
pub struct Dim {
    pub path: Vec<String>,
    pub domain: Domain,
}

impl Dim {
    pub fn name(&self) -> String {
        self.path.join("/")
    }
}

/// The space, flattened: searched dimensions, grid dimensions, constants and derived values.
#[derive(Clone, Debug, Default)]
pub struct Flat {
    pub searched: Vec<Dim>,
    pub grids: Vec<Dim>,
    pub consts: Vec<(Vec<String>, Value)>,
    pub derived: Vec<(Vec<String>, Derive)>,
}

impl ParamSpace {
    /// Checks every domain and flattens the space.
    pub fn flatten(&self) -> Result<Flat> {
        let mut f = Flat::default();
        walk(&self.0, &mut Vec::new(), &mut f)?;
        Ok(f)
    }
}

fn walk(m: &BTreeMap<String, Domain>, path: &mut Vec<String>, f: &mut Flat) -> Result<()> {
    for (k, d) in m {
        path.push(k.clone());
        let name = path.join("/");
        match d {
            Domain::Float { lo, hi, log, q } => {
                if !(lo.is_finite() && hi.is_finite() && lo < hi) || (*log && *lo <= 0.0) || q.is_some_and(|q| q <= 0.0) {
                    return Err(Error::Config(format!("`{name}`: invalid float range [{lo}, {hi}] (log {log}, q {q:?})")));
                }
                f.searched.push(Dim { path: path.clone(), domain: d.clone() });
            }
            Domain::Int { lo, hi, log, q } => {
                let empty = if q.is_some() { lo > hi } else { lo >= hi };
                if empty || (*log && *lo <= 0) || q.is_some_and(|q| q <= 0) {
                    return Err(Error::Config(format!("`{name}`: invalid integer range {lo}..{hi} (log {log}, q {q:?})")));
                }
                f.searched.push(Dim { path: path.clone(), domain: d.clone() });
            }
            Domain::Choice(v) => {
                if v.is_empty() {
                    return Err(Error::Config(format!("`{name}`: choice() needs at least one value")));
                }
                f.searched.push(Dim { path: path.clone(), domain: d.clone() });
            }
            Domain::Grid(v) => {
                if v.is_empty() {
                    return Err(Error::Config(format!("`{name}`: grid_search() needs at least one value")));
                }
                f.grids.push(Dim { path: path.clone(), domain: d.clone() });
            }
            Domain::SampleFrom(g) => f.derived.push((path.clone(), *g)),
            Domain::Const(v) => f.consts.push((path.clone(), v.clone())),
            Domain::Space(s) => walk(&s.0, path, f)?,
        }
        path.pop();
    }
    Ok(())
}

/// Sets `value` at `path` in a JSON object, creating nested objects.
pub fn set_path(root: &mut Value, path: &[String], value: Value) {
    let mut cur = root;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let obj = cur.as_object_mut().expect("an object");
        if i + 1 == path.len() {
            obj.insert(k.clone(), value);
            return;
        }
        cur = obj.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Quantizes and clamps a float as its domain says.
pub fn finish_float(v: f64, lo: f64, hi: f64, q: Option<f64>) -> f64 {
    let v = match q {
        Some(q) => (v / q).round() * q,
        None => v,
    };
    v.clamp(lo.min(hi), hi.max(lo))
}

/// A uniform draw from a dimension (what random search does).
pub fn sample_dim(d: &Domain, rng: &mut Rng) -> Value {
    match d {
        Domain::Float { lo, hi, log, q } => {
            let u = rng.uniform();
            let v = if *log { (lo.ln() + u * (hi.ln() - lo.ln())).exp() } else { lo + u * (hi - lo) };
            Value::from(finish_float(v, *lo, *hi, *q))
        }
        Domain::Int { lo, hi, log, q } => Value::from(int_from_unit(rng.uniform(), *lo, *hi, *log, *q)),
        Domain::Choice(v) => v[rng.below(v.len() as u64) as usize].clone(),
        Domain::Grid(v) => v[0].clone(),
        Domain::SampleFrom(_) | Domain::Space(_) => Value::Null,
        Domain::Const(v) => v.clone(),
    }
}

/// Maps `u` in [0, 1) onto an integer domain.
pub fn int_from_unit(u: f64, lo: i64, hi: i64, log: bool, q: Option<i64>) -> i64 {
    match q {
        Some(q) => {
            let steps = (hi - lo) / q;
            lo + q * ((u * (steps + 1) as f64).floor() as i64).min(steps)
        }
        None if log => {
            let v = ((lo as f64).ln() + u * ((hi as f64).ln() - (lo as f64).ln())).exp().floor() as i64;
            v.clamp(lo, hi - 1)
        }
        None => (lo + (u * (hi - lo) as f64).floor() as i64).min(hi - 1),
    }
}

/// The grid's cross product, last grid varying fastest (as Ray's variant generator).
pub fn grid_points(grids: &[Dim]) -> Vec<Vec<Value>> {
    let mut points = vec![Vec::new()];
    for g in grids {
        let Domain::Grid(values) = &g.domain else { continue };
        let mut next = Vec::with_capacity(points.len() * values.len());
        for p in &points {
            for v in values {
                let mut q = p.clone();
                q.push(v.clone());
                next.push(q);
            }
        }
        points = next;
    }
    points
}

/// A full config from the searched values, one grid point, constants and derived values.
pub fn build_config(flat: &Flat, searched: &[Value], grid: &[Value]) -> Value {
    let mut c = Value::Object(Map::new());
    for (p, v) in &flat.consts {
        set_path(&mut c, p, v.clone());
    }
    for (d, v) in flat.grids.iter().zip(grid) {
        set_path(&mut c, &d.path, v.clone());
    }
    for (d, v) in flat.searched.iter().zip(searched) {
        set_path(&mut c, &d.path, v.clone());
    }
    for (p, f) in &flat.derived {
        let v = f(&c);
        set_path(&mut c, p, v);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cross_and_domains_stay_in_range() {
        let s = ParamSpace::new()
            .set("a", grid_search([1, 2, 3]))
            .nest("m", ParamSpace::new().set("b", grid_search(["x", "y"])).set("lr", loguniform(1e-4, 1e-1)))
            .set("k", randint(0, 3))
            .set("q", qrandint(2, 10, 4))
            .set("c", 7)
            .set("d", sample_from(|c| Value::from(c["a"].as_i64().unwrap_or(0) * 10)));
        let flat = s.flatten().unwrap();
        let points = grid_points(&flat.grids);
        assert_eq!(points.len(), 6);
        let mut rng = Rng::new(1);
        for p in &points {
            let vals: Vec<Value> = flat.searched.iter().map(|d| sample_dim(&d.domain, &mut rng)).collect();
            let c = build_config(&flat, &vals, p);
            assert_eq!(c["d"], Value::from(c["a"].as_i64().unwrap() * 10));
            assert_eq!(c["c"], 7);
            let lr = c["m"]["lr"].as_f64().unwrap();
            assert!((1e-4..=1e-1).contains(&lr));
            assert!((0..3).contains(&c["k"].as_i64().unwrap()));
            assert!([2, 6, 10].contains(&c["q"].as_i64().unwrap()));
        }
        assert!(ParamSpace::new().set("x", uniform(1.0, 0.0)).flatten().is_err());
        assert!(ParamSpace::new().set("x", loguniform(0.0, 1.0)).flatten().is_err());
        assert!(ParamSpace::new().set("x", choice(Vec::<i32>::new())).flatten().is_err());
    }
}
