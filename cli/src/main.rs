//! The `flare` command line. Thin: parse arguments, call into the library.

mod bench_cluster;
mod bench_collectives;
mod bench_train;
mod bench_tune;
mod cluster;
mod microbenchmark;
mod serve;

use clap::{Parser, Subcommand};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "flare", version, about = "Flare: a GPU-first distributed runtime for ML")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum ServeCommand {
    /// Serves a config in the foreground (Ctrl-C or `flare serve shutdown` stops it).
    Run { config: std::path::PathBuf },
    /// Applies a config to the running Serve instance, starting one in the background if none runs.
    Deploy { config: std::path::PathBuf },
    /// Applications, deployments and replicas.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stops Serve after it answers the requests it accepted.
    Shutdown,
}

#[derive(Subcommand)]
enum Command {
    /// Starts a head (`--head`): the Jobs API on 127.0.0.1:8265 behind a cluster token.
    Start {
        #[arg(long)]
        head: bool,
        /// A head's gRPC address (HOST:PORT) to join as a worker node; the token comes from FLARE_TOKEN.
        #[arg(long)]
        address: Option<String>,
        /// The address servers bind (default 127.0.0.1: only this machine can reach them).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The head's gRPC port for node agents (0 picks a free port).
        #[arg(long, default_value_t = 6379)]
        port: u16,
        /// This node's id when joining (default: hostname-pid).
        #[arg(long)]
        node_id: Option<String>,
        /// Port of the Jobs API and dashboard (0 picks a free port).
        #[arg(long, default_value_t = 8265)]
        dashboard_port: u16,
        #[arg(long)]
        num_cpus: Option<f64>,
        #[arg(long)]
        num_gpus: Option<f64>,
        /// Custom resources as JSON, e.g. '{"TPU": 4}'.
        #[arg(long)]
        resources: Option<String>,
        /// Node labels, k=v,k2=v2.
        #[arg(long)]
        labels: Option<String>,
        /// Where the session directory goes (default ~/.flare; the session is DIR/session_latest).
        #[arg(long)]
        temp_dir: Option<std::path::PathBuf>,
    },
    /// Stops what `flare start` started in the session directory.
    Stop {
        #[arg(long)]
        temp_dir: Option<std::path::PathBuf>,
    },
    /// Prints the cluster token.
    Token {
        #[arg(long)]
        temp_dir: Option<std::path::PathBuf>,
    },
    /// Nodes, resources and jobs of a running cluster.
    Status {
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        temp_dir: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Tables of nodes, jobs, and the actors, tasks and placement groups of the live drivers.
    List {
        kind: String,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        temp_dir: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Jobs through the head's Ray-compatible Jobs API.
    Job {
        #[command(subcommand)]
        command: JobCommand,
        /// The head, http://HOST:PORT (default: FLARE_ADDRESS, else the session's head).
        #[arg(long, global = true)]
        address: Option<String>,
        #[arg(long, global = true)]
        temp_dir: Option<std::path::PathBuf>,
    },
    /// Model serving from Ray-style config files (`flare serve deploy config.yaml`).
    Serve {
        #[command(subcommand)]
        command: ServeCommand,
        #[arg(long, global = true)]
        temp_dir: Option<std::path::PathBuf>,
        /// The session directory itself (default: <temp-dir or ~/.flare>/session_latest).
        #[arg(long, global = true, hide = true)]
        session_dir: Option<std::path::PathBuf>,
    },
    /// The head process (started by `flare start --head`).
    #[command(name = "__head", hide = true)]
    Head {
        #[arg(long)]
        session_dir: std::path::PathBuf,
        #[arg(long)]
        host: String,
        #[arg(long)]
        dashboard_port: u16,
        #[arg(long, default_value_t = 6379)]
        grpc_port: u16,
        #[arg(long)]
        num_cpus: f64,
        #[arg(long)]
        num_gpus: f64,
        #[arg(long)]
        resources: String,
        #[arg(long, default_value = "")]
        labels: String,
    },
    /// A node agent process (started by `flare start --address`).
    #[command(name = "__node", hide = true)]
    Node {
        #[arg(long)]
        head: String,
        #[arg(long)]
        node_id: String,
        #[arg(long)]
        address: String,
        #[arg(long)]
        session_dir: std::path::PathBuf,
        #[arg(long)]
        resources: String,
        #[arg(long, default_value = "")]
        labels: String,
    },
    /// Benchmarks against their peers (collectives vs gloo; see benches/).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The GPUs this machine has, as Flare finds them (NVML or the CUDA driver, loaded at run time).
    Gpus {
        #[arg(long)]
        json: bool,
    },
    /// One rank of `flare bench collectives` (started by it).
    #[command(name = "__collective-rank", hide = true)]
    CollectiveRank {
        #[arg(long)]
        store: String,
        #[arg(long)]
        rank: usize,
        #[arg(long)]
        world_size: usize,
        #[arg(long)]
        backend: String,
        #[arg(long, value_enum)]
        op: bench_collectives::Op,
        #[arg(long)]
        sizes: String,
        #[arg(long)]
        iters: usize,
        #[arg(long)]
        warmup: usize,
    },
    /// Runs the cases of `ray microbenchmark` on an embedded local cluster.
    Microbenchmark {
        /// Only cases whose name contains this text.
        #[arg(long, default_value = "")]
        filter: String,
        /// Seconds per timed trial (Ray uses 2; four trials follow a warm-up of half a trial).
        #[arg(long, default_value_t = 2.0)]
        trial_secs: f64,
        /// One JSON object per case instead of text lines.
        #[arg(long)]
        json: bool,
        /// CPUs the embedded node offers (default: the machine's).
        #[arg(long)]
        num_cpus: Option<f64>,
        /// Run against a running cluster (its head, http://HOST:PORT; FLARE_ADDRESS does the same):
        /// this process joins as the driver and the work runs on the cluster's nodes.
        #[arg(long)]
        address: Option<String>,
    },
    /// Reinforcement learning tools.
    Rl {
        #[command(subcommand)]
        command: RlCommand,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Submits a job: `flare job submit [--working-dir DIR] [--no-wait] -- CMD ARGS...`.
    Submit {
        #[arg(long)]
        working_dir: Option<std::path::PathBuf>,
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        submission_id: Option<String>,
        #[arg(long)]
        entrypoint_num_cpus: Option<f64>,
        #[arg(long)]
        entrypoint_num_gpus: Option<f64>,
        /// Custom resources for the entrypoint, as JSON (`{"special": 1}`), as Ray's flag takes.
        #[arg(long)]
        entrypoint_resources: Option<String>,
        /// Environment variables for the entrypoint, KEY=VALUE (repeatable).
        #[arg(long)]
        env: Vec<String>,
        #[arg(last = true, required = true)]
        entrypoint: Vec<String>,
    },
    Status {
        id: String,
    },
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    Stop {
        id: String,
        #[arg(long)]
        no_wait: bool,
    },
    Delete {
        id: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Collective bandwidth with N ranks as processes, printed as nccl-tests prints it.
    Collectives {
        #[arg(long, value_enum, default_value = "all-reduce")]
        op: bench_collectives::Op,
        /// ring, shm or nccl.
        #[arg(long, default_value = "ring")]
        backend: String,
        #[arg(long, default_value_t = 2)]
        world_size: usize,
        /// Buffer sizes in bytes, comma-separated (K, M, G suffixes: powers of two).
        #[arg(long, default_value = "1K,64K,1M,16M")]
        sizes: String,
        /// Timed operations per size (after `--warmup` untimed ones).
        #[arg(long, default_value_t = 20)]
        iters: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// One JSON object per size.
        #[arg(long)]
        json: bool,
    },
    /// Search quality on a test function (Optuna anchor layout): best value after 25/50/100 trials over seeds.
    Tune {
        /// branin, hartmann6 or rosenbrock5.
        #[arg(long, default_value = "branin")]
        function: String,
        /// tpe (multivariate), tpe-univariate (Optuna's default) or random.
        #[arg(long, default_value = "tpe")]
        searcher: String,
        #[arg(long, default_value_t = 100)]
        trials: usize,
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// Print the JSON object (otherwise a summary line).
        #[arg(long)]
        json: bool,
    },
    /// The Tuner's own cost with trivial trainables (the cases benches/vs_ray_tune.sh compares).
    TuneOverhead {
        /// trivial (200 one-report trials at 0.5 CPU) or asha (20 trials x 100 reports under ASHA).
        #[arg(long, default_value = "trivial")]
        case: String,
        #[arg(long, default_value_t = 2.0)]
        num_cpus: f64,
        #[arg(long)]
        json: bool,
    },
    /// A head and two node agents on this machine: cross-node object transfer and tasks/s on 1 vs 2 nodes.
    Cluster {
        /// Object size in bytes (K, M, G suffixes: powers of two).
        #[arg(long, default_value = "1G")]
        size: String,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 2000)]
        tasks: usize,
    },
    /// Data-parallel training step time (forward, backward, all-reduce, optimizer) per world size.
    Train {
        /// World sizes, comma-separated.
        #[arg(long, default_value = "1,2")]
        ranks: String,
        /// MLP layer widths, comma-separated (input first, classes last).
        #[arg(long, default_value = "784,1024,1024,10")]
        widths: String,
        /// The global batch, split over the ranks.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// ring or shm (default: shm on one node).
        #[arg(long)]
        backend: Option<String>,
        /// Gradients by candle's autograd instead of the MLP's explicit backprop.
        #[arg(long)]
        autograd: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RlCommand {
    /// Trains a policy; with --json the last line is {"solved","env_steps","mean_return","wall_s"}.
    Train {
        #[arg(long, default_value = "ppo")]
        algo: String,
        #[arg(long, default_value = "CartPole-v1")]
        env: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 500_000)]
        max_env_steps: u64,
        /// Env-runner actors sampling in their own processes (0: sample in this process).
        #[arg(long, default_value_t = 0)]
        num_env_runners: usize,
        /// Environments each env runner steps (default: ppo 4, a2c 8, dqn 1, sac 1; ppo and a2c
        /// also use it without runners).
        #[arg(long)]
        num_envs_per_runner: Option<usize>,
        /// Where the learner runs: auto (its GPU if it has one, else the CPU), cpu, cuda, cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// With --num-env-runners: the learner in an actor of its own with this many GPUs (a
        /// fraction shares one), on the GPU the scheduler assigns.
        #[arg(long, default_value_t = 0.0)]
        learner_gpus: f64,
        /// CPU threads of a learner on the CPU (candle's; sets RAYON_NUM_THREADS). Default 1, or
        /// RAYON_NUM_THREADS where set: these networks are too small to gain from more (PPO on
        /// CartPole, 2 cores: 16.8 s with one thread, 21.6 s with two).
        #[arg(long)]
        learner_threads: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Steps a built-in environment with random actions and reports env steps per second.
    Bench {
        #[arg(long, default_value = "CartPole-v1")]
        env: String,
        /// Total environment steps (over all copies).
        #[arg(long, default_value_t = 1_000_000)]
        steps: u64,
        /// Copies stepped together as a vector environment.
        #[arg(long, default_value_t = 1)]
        num_envs: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Replays a recorded gymnasium trace through the built-in environment it names and reports
    /// the largest error and any flag mismatch; exits non-zero on a mismatch.
    Replay {
        /// The trace (the layout of shared/oracles/gym/*.json).
        #[arg(long)]
        trace: String,
        /// Largest error in an observation or reward that still counts as a match.
        #[arg(long, default_value_t = 1e-6)]
        tolerance: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Start {
            head,
            address,
            host,
            port,
            node_id,
            dashboard_port,
            num_cpus,
            num_gpus,
            resources,
            labels,
            temp_dir,
        } => {
            let a = cluster::StartArgs {
                head,
                address,
                host,
                port,
                dashboard_port,
                node_id,
                num_cpus,
                num_gpus,
                resources,
                labels,
                temp_dir,
            };
            cluster::start(a)?;
        }
        Command::Head { session_dir, host, dashboard_port, grpc_port, num_cpus, num_gpus, resources, labels } => {
            cluster::head(cluster::HeadArgs {
                session_dir,
                host,
                dashboard_port,
                grpc_port,
                num_cpus,
                num_gpus,
                resources,
                labels,
            })?;
        }
        Command::Node { head, node_id, address, session_dir, resources, labels } => {
            cluster::node(cluster::NodeArgs { head, node_id, address, session_dir, resources, labels })?;
        }
        Command::Stop { temp_dir } => cluster::stop(temp_dir.as_deref())?,
        Command::Serve { command, temp_dir, session_dir } => {
            let session = session_dir.unwrap_or_else(|| cluster::session_dir(temp_dir.as_deref()));
            match command {
                ServeCommand::Run { config } => serve::run(&config, &session)?,
                ServeCommand::Deploy { config } => serve::deploy(&config, &session)?,
                ServeCommand::Status { json } => serve::status(&session, json)?,
                ServeCommand::Shutdown => serve::shutdown(&session)?,
            }
        }
        Command::Token { temp_dir } => cluster::token(temp_dir.as_deref())?,
        Command::Status { address, temp_dir, json } => {
            cluster::status(&cluster::client(address.as_deref(), temp_dir.as_deref())?, json)?
        }
        Command::List { kind, address, temp_dir, json } => {
            cluster::list(&cluster::client(address.as_deref(), temp_dir.as_deref())?, &kind, json)?
        }
        Command::Job { command, address, temp_dir } => {
            let c = cluster::client(address.as_deref(), temp_dir.as_deref())?;
            match command {
                JobCommand::Submit {
                    working_dir,
                    no_wait,
                    submission_id,
                    entrypoint_num_cpus,
                    entrypoint_num_gpus,
                    entrypoint_resources,
                    env,
                    entrypoint,
                } => cluster::submit(
                    &c,
                    cluster::SubmitArgs {
                        working_dir,
                        no_wait,
                        submission_id,
                        num_cpus: entrypoint_num_cpus,
                        num_gpus: entrypoint_num_gpus,
                        resources: entrypoint_resources,
                        env,
                        entrypoint,
                    },
                )?,
                JobCommand::Status { id } => cluster::status_of(&c, &id)?,
                JobCommand::Logs { id, follow } => cluster::logs(&c, &id, follow)?,
                JobCommand::Stop { id, no_wait } => cluster::stop_job(&c, &id, !no_wait)?,
                JobCommand::Delete { id } => cluster::delete_job(&c, &id)?,
                JobCommand::List { json } => cluster::list_jobs(&c, json)?,
            }
        }
        Command::Bench { command: BenchCommand::Collectives { op, backend, world_size, sizes, iters, warmup, json } } => {
            let backend = backend.parse().map_err(anyhow::Error::msg)?;
            let sizes = bench_collectives::parse_sizes(&sizes)?;
            bench_collectives::run(bench_collectives::Args { op, backend, world_size, sizes, iters, warmup, json })?;
        }
        Command::Bench { command: BenchCommand::Tune { function, searcher, trials, seeds, json } } => {
            if trials == 0 || seeds == 0 {
                anyhow::bail!("--trials and --seeds must be at least 1");
            }
            let r = flare::tune::bench::run(&function, &searcher, trials, seeds)?;
            if json {
                println!("{r}");
            } else {
                let b = &r["best_after"];
                let cell = |n: &str| {
                    b.get(n).map_or("-".to_string(), |s| format!("{:.4} [{:.4}, {:.4}]", s["median"], s["q1"], s["q3"]))
                };
                println!(
                    "{function} {searcher}: best after 25 {} | 50 {} | 100 {} (median [q1, q3] over {seeds} seeds)",
                    cell("25"),
                    cell("50"),
                    cell("100")
                );
            }
        }
        Command::Bench { command: BenchCommand::TuneOverhead { case, num_cpus, json } } => {
            let (wall, trials, reports) = bench_tune::run(&case, num_cpus)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"impl": "flare", "case": case, "wall_s": wall, "trials": trials, "reports": reports})
                );
            } else {
                println!("{case}: {trials} trials, {reports} reports in {wall:.3} s");
            }
        }
        Command::Bench { command: BenchCommand::Cluster { size, rounds, tasks } } => {
            let size = bench_collectives::parse_sizes(&size)?.first().copied().unwrap_or(1 << 30) as u64;
            println!("{}", bench_cluster::run(size, rounds, tasks)?);
        }
        Command::Bench { command: BenchCommand::Train { ranks, widths, batch, steps, warmup, backend, autograd, json } } => {
            let list = |s: &str, what: &str| -> anyhow::Result<Vec<usize>> {
                s.split(',')
                    .map(|v| v.trim().parse::<usize>().map_err(|_| anyhow::anyhow!("--{what}: `{v}` is not a number")))
                    .collect()
            };
            bench_train::run(bench_train::Args {
                ranks: list(&ranks, "ranks")?,
                widths: list(&widths, "widths")?,
                batch,
                steps,
                warmup,
                backend,
                autograd,
                json,
            })?;
        }
        Command::CollectiveRank { store, rank, world_size, backend, op, sizes, iters, warmup } => {
            bench_collectives::rank(bench_collectives::RankArgs {
                store,
                rank,
                world_size,
                backend: backend.parse().map_err(anyhow::Error::msg)?,
                op,
                sizes: bench_collectives::parse_sizes(&sizes)?,
                iters,
                warmup,
            })?;
        }
        Command::Gpus { json } => {
            let d = flare::gpu::discover();
            if json {
                println!("{}", serde_json::to_string_pretty(d)?);
                return Ok(());
            }
            println!("source: {:?}, driver: {}", d.source, d.driver_version.as_deref().unwrap_or("-"));
            if let Some(r) = &d.reason {
                println!("note: {r}");
            }
            for g in &d.gpus {
                let free = g.memory_free.map(|f| format!("{:.1} GiB free", f as f64 / (1u64 << 30) as f64)).unwrap_or_default();
                println!(
                    "GPU {}: {} ({}) sm_{}{} {:.1} GiB {free} [{}]",
                    g.index,
                    g.name,
                    g.accelerator_type(),
                    g.compute_capability.0,
                    g.compute_capability.1,
                    g.memory_total as f64 / (1u64 << 30) as f64,
                    g.uuid
                );
            }
            for l in &d.links {
                println!("link {} <-> {}: {:?}", l.a, l.b, l.kind);
            }
            if let Ok(procs) = flare::gpu::process_memory() {
                for p in procs {
                    let used = p.used_bytes.map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64));
                    println!("process {} on GPU {}: {}", p.pid, p.gpu, used.as_deref().unwrap_or("memory not reported"));
                }
            }
            println!("NCCL: {}", if flare::gpu::nccl_present() { "found" } else { "not found (libnccl.so)" });
        }
        Command::Microbenchmark { filter, trial_secs, json, num_cpus, address } => {
            if !(trial_secs.is_finite() && trial_secs > 0.0) {
                anyhow::bail!("--trial-secs must be a positive number of seconds, got {trial_secs}");
            }
            // Ray's benchmark declares a "custom" resource for its placement-group case.
            let mut config = flare::Config::new().resource("custom", 100.0);
            if let Some(n) = num_cpus {
                config = config.num_cpus(n);
            }
            if let Some(a) = address {
                config = config.address(a);
            }
            flare::init_with(config)?;
            let trial = Duration::from_secs_f64(trial_secs);
            let timing = microbenchmark::Timing { warmup: trial / 2, trial, trials: 4 };
            microbenchmark::run(timing, &filter, json)?;
        }
        Command::Rl {
            command:
                RlCommand::Train {
                    algo,
                    env,
                    seed,
                    max_env_steps,
                    num_env_runners,
                    num_envs_per_runner,
                    device,
                    learner_gpus,
                    learner_threads,
                    json,
                },
        } => {
            // Before any thread starts (candle reads it when it first sizes its pools).
            match learner_threads {
                Some(0) => anyhow::bail!("--learner-threads must be at least 1"),
                Some(n) => std::env::set_var("RAYON_NUM_THREADS", n.to_string()),
                None if std::env::var_os("RAYON_NUM_THREADS").is_none() => std::env::set_var("RAYON_NUM_THREADS", "1"),
                None => {}
            }
            let device: flare::rl::learner::LearnerDevice = device.parse()?;
            if !(learner_gpus >= 0.0 && learner_gpus.is_finite()) {
                anyhow::bail!("--learner-gpus must be a number of GPUs, 0 or more (got {learner_gpus})");
            }
            if num_envs_per_runner == Some(0) {
                anyhow::bail!("--num-envs-per-runner must be at least 1");
            }
            if learner_gpus > 0.0 && num_env_runners == 0 {
                anyhow::bail!("--learner-gpus puts the learner in an actor of its own: it needs --num-env-runners 1 or more");
            }
            let mut last_print = 0u64;
            let report = |p: &flare::rl::algo::Progress| {
                if !json && p.env_steps - last_print >= 20_000 {
                    last_print = p.env_steps;
                    println!(
                        "env steps {:>8}  mean return (last 100) {:>8.1}  {:>8.0} env steps/s  learner {:>6.1} s of {:.1} s",
                        p.env_steps,
                        p.mean_return,
                        p.env_steps as f64 / p.wall_s.max(1e-9),
                        p.learner_s,
                        p.wall_s
                    );
                }
            };
            let start_runtime = || flare::init_with(flare::Config::new().log_to_driver(false));
            use flare::rl::algo::{a2c, dqn, ppo, sac};
            let summary = match algo.as_str() {
                "ppo" => {
                    let defaults = ppo::PpoConfig::default();
                    let cfg = ppo::PpoConfig {
                        env_id: env.clone(),
                        seed,
                        total_env_steps: max_env_steps,
                        num_envs: num_envs_per_runner.unwrap_or(defaults.num_envs),
                        device,
                        learner_num_gpus: learner_gpus,
                        ..defaults
                    };
                    if num_env_runners == 0 {
                        ppo::train(&cfg, report)?.0
                    } else {
                        start_runtime()?;
                        ppo::train_distributed(&cfg, num_env_runners, report)?.0
                    }
                }
                "dqn" => {
                    let cfg = dqn::DqnConfig {
                        env_id: env.clone(),
                        seed,
                        total_env_steps: max_env_steps,
                        num_envs_per_runner: num_envs_per_runner.unwrap_or(1),
                        device,
                        learner_num_gpus: learner_gpus,
                        ..Default::default()
                    };
                    if num_env_runners == 0 {
                        dqn::train(&cfg, report)?.0
                    } else {
                        start_runtime()?;
                        dqn::train_distributed(&cfg, num_env_runners, report)?.0
                    }
                }
                "a2c" => {
                    let defaults = a2c::A2cConfig::default();
                    let cfg = a2c::A2cConfig {
                        env_id: env.clone(),
                        seed,
                        total_env_steps: max_env_steps,
                        num_envs: num_envs_per_runner.unwrap_or(defaults.num_envs),
                        device,
                        learner_num_gpus: learner_gpus,
                        ..defaults
                    };
                    if num_env_runners == 0 {
                        a2c::train(&cfg, report)?.0
                    } else {
                        start_runtime()?;
                        a2c::train_distributed(&cfg, num_env_runners, report)?.0
                    }
                }
                "sac" => {
                    let cfg = sac::SacConfig {
                        env_id: env.clone(),
                        seed,
                        total_env_steps: max_env_steps,
                        device,
                        num_envs_per_runner: num_envs_per_runner.unwrap_or(1),
                        learner_num_gpus: learner_gpus,
                        ..Default::default()
                    };
                    let (mut summary, learner) = if num_env_runners == 0 {
                        sac::train(&cfg, report)?
                    } else {
                        start_runtime()?;
                        sac::train_distributed(&cfg, num_env_runners, report)?
                    };
                    // Ten deterministic episodes with seeds the training never used.
                    summary.eval_return = Some(sac::evaluate(&learner, &env, 10, seed + 1_000_000)?);
                    summary
                }
                other => anyhow::bail!("--algo {other} is not one of ppo, dqn, a2c, sac"),
            };
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "{env}: solved={} after {} env steps, mean return {:.1}, {:.1} s ({:.1} s in the learner on {})",
                    summary.solved,
                    summary.env_steps,
                    summary.mean_return,
                    summary.wall_s,
                    summary.learner_s,
                    summary.learner_device.as_deref().unwrap_or("?")
                );
            }
        }
        Command::Rl { command: RlCommand::Bench { env, steps, num_envs, seed, json } } => {
            if num_envs == 0 {
                anyhow::bail!("--num-envs must be at least 1");
            }
            let (sps, episodes) = rl_bench(&env, steps, num_envs, seed)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"env": env, "num_envs": num_envs, "steps": steps, "steps_per_second": sps, "episodes": episodes})
                );
            } else {
                println!("{env} x{num_envs}: {sps:.0} env steps/s ({episodes} episodes)");
            }
        }
        Command::Rl { command: RlCommand::Replay { trace, tolerance, json } } => {
            let r = flare::rl::replay::replay_file(&trace)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{}: {} episodes, {} steps, {} bit-exact; max obs error {:e}, max reward error {:e}, {} flag mismatches",
                    r.env_id,
                    r.episodes,
                    r.steps,
                    r.exact_steps,
                    r.max_obs_error,
                    r.max_reward_error,
                    r.flag_mismatches.len()
                );
                for m in &r.flag_mismatches {
                    println!("  {m}");
                }
            }
            if !r.within(tolerance) {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// Random-action stepping throughput of a vector environment (actions drawn from its space).
fn rl_bench(id: &str, steps: u64, num_envs: usize, seed: u64) -> anyhow::Result<(f64, u64)> {
    use flare::rl::{rng::Rng, VectorEnv};
    let mut v = VectorEnv::new(id, num_envs)?;
    let space = v.envs()[0].action_space();
    let mut rng = Rng::new(seed);
    v.reset(Some(seed));
    let rounds = steps.div_ceil(num_envs as u64);
    let mut episodes = 0;
    let t0 = std::time::Instant::now();
    for _ in 0..rounds {
        let actions: Vec<_> = (0..num_envs).map(|_| space.sample(&mut rng)).collect();
        let s = v.step(&actions)?;
        episodes += s.episodes.iter().filter(|e| e.is_some()).count() as u64;
    }
    Ok(((rounds * num_envs as u64) as f64 / t0.elapsed().as_secs_f64(), episodes))
}
