//! The `flare` command line. Thin: parse arguments, call into the library.

mod microbenchmark;

use clap::{Parser, Subcommand};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "flare", version, about = "Flare: a GPU-first distributed runtime for ML")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    },
    /// Reinforcement learning tools.
    Rl {
        #[command(subcommand)]
        command: RlCommand,
    },
}

#[derive(Subcommand)]
enum RlCommand {
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
        Command::Microbenchmark { filter, trial_secs, json, num_cpus } => {
            if !(trial_secs.is_finite() && trial_secs > 0.0) {
                anyhow::bail!("--trial-secs must be a positive number of seconds, got {trial_secs}");
            }
            // Ray's benchmark declares a "custom" resource for its placement-group case.
            let mut config = flare::Config::new().resource("custom", 100.0);
            if let Some(n) = num_cpus {
                config = config.num_cpus(n);
            }
            flare::init_with(config)?;
            let trial = Duration::from_secs_f64(trial_secs);
            let timing = microbenchmark::Timing { warmup: trial / 2, trial, trials: 4 };
            microbenchmark::run(timing, &filter, json)?;
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
