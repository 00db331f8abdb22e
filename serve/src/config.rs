//! Declarative Serve configs, shaped like Ray Serve's `serve deploy` config files (YAML or
//! JSON): `http_options` and `applications`, each with a route prefix, an `import_path` naming
//! a registered deployment type, its `args`, and per-deployment options (Ray's names:
//! `num_replicas`, `max_ongoing_requests`, `autoscaling_config`, `ray_actor_options`, ...).

use crate::deployment::{deployment, Application, Deployment, DeploymentOptions, DeploymentSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most bytes a config may have (file or REST body).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpOptions {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub request_timeout_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: String,
    #[serde(default = "root")]
    pub route_prefix: String,
    /// A deployment type registered with the server (`flare serve types` lists them).
    pub import_path: String,
    /// The deployment's config (its `Deployment::Config`, as JSON).
    #[serde(default)]
    pub args: serde_json::Value,
    /// Options of the ingress deployment (the first entry; Ray's list shape).
    #[serde(default)]
    pub deployments: Vec<serde_json::Value>,
}

fn root() -> String {
    "/".into()
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    #[serde(default)]
    pub http_options: HttpOptions,
    #[serde(default)]
    pub applications: Vec<AppConfig>,
    /// Ray's field; only "http" is served.
    #[serde(default)]
    pub proxy_location: Option<String>,
}

impl ServeConfig {
    /// Parses a YAML or JSON config (JSON is YAML), saying where it is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(format!("the config is {} bytes; the limit is {MAX_CONFIG_BYTES}", text.len()));
        }
        let c: ServeConfig = serde_yaml_ng::from_str(text).map_err(|e| format!("the Serve config is not valid: {e}"))?;
        let mut names = std::collections::BTreeSet::new();
        let mut prefixes = std::collections::BTreeSet::new();
        for a in &c.applications {
            if !names.insert(a.name.as_str()) {
                return Err(format!("application '{}' appears twice", a.name));
            }
            if !prefixes.insert(crate::deployment::normalize_prefix(&a.route_prefix)) {
                return Err(format!("route prefix '{}' is used by two applications", a.route_prefix));
            }
        }
        Ok(c)
    }
}

type Maker = fn(&str, serde_json::Value) -> Result<DeploymentSpec, String>;

/// Deployment types by import path, for configs.
#[derive(Clone, Default)]
pub struct Registry {
    types: BTreeMap<String, Maker>,
}

fn make<D: Deployment>(name: &str, args: serde_json::Value) -> Result<DeploymentSpec, String> {
    let bad = |e: serde_json::Error| format!("the args of deployment '{name}' do not fit its config: {e}");
    let config: D::Config = match serde_json::from_value(args.clone()) {
        Ok(c) => c,
        // No args for a deployment without a config (`()`).
        Err(e) if args.is_null() || args.as_object().is_some_and(|m| m.is_empty()) => {
            serde_json::from_value(serde_json::json!({}))
                .or_else(|_| serde_json::from_value(serde_json::Value::Null))
                .map_err(|_| bad(e))?
        }
        Err(e) => return Err(bad(e)),
    };
    Ok(deployment::<D>(name, config))
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Makes deployment type `D` available to configs as `import_path`.
    pub fn register<D: Deployment>(&mut self, import_path: &str) -> &mut Self {
        self.types.insert(import_path.to_string(), make::<D>);
        self
    }

    pub fn import_paths(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    /// The application a config entry describes.
    pub fn application(&self, a: &AppConfig) -> Result<Application, String> {
        let maker = self.types.get(&a.import_path).ok_or_else(|| {
            format!(
                "application '{}': import_path '{}' is not a known deployment type (known: {})",
                a.name,
                a.import_path,
                self.import_paths().join(", ")
            )
        })?;
        if a.deployments.len() > 1 {
            return Err(format!(
                "application '{}' lists {} deployments; only its ingress deployment is configured here",
                a.name,
                a.deployments.len()
            ));
        }
        let entry = a.deployments.first().cloned().unwrap_or_else(|| serde_json::json!({}));
        let (name, options) = deployment_options(&a.name, entry)?;
        let spec = maker(&name, a.args.clone())?.options(options);
        let app = Application::new(&a.route_prefix, spec).name(&a.name);
        app.validate()?;
        Ok(app)
    }
}

/// A deployment entry's name and options; `ray_actor_options` fields are lifted into the options.
fn deployment_options(app: &str, entry: serde_json::Value) -> Result<(String, DeploymentOptions), String> {
    let serde_json::Value::Object(mut m) = entry else {
        return Err(format!("application '{app}': each deployments entry must be a mapping"));
    };
    let name = match m.remove("name") {
        None => app.to_string(),
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(format!("application '{app}': a deployment's name must be a string")),
    };
    if let Some(actor) = m.remove("ray_actor_options") {
        let serde_json::Value::Object(actor) = actor else {
            return Err(format!("deployment '{name}': ray_actor_options must be a mapping"));
        };
        for (k, v) in actor {
            if !matches!(k.as_str(), "num_cpus" | "num_gpus" | "memory" | "resources") {
                return Err(format!(
                    "deployment '{name}': ray_actor_options.{k} is not supported (num_cpus, num_gpus, memory, resources are)"
                ));
            }
            m.insert(k, v);
        }
    }
    let options: DeploymentOptions =
        serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| format!("deployment '{name}': {e}"))?;
    options.validate(&name)?;
    Ok((name, options))
}
