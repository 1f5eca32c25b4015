//! `musketeers serve`: load a run directory (or a model, with an optional PEFT adapter) and
//! serve it through [`musketeers::serve`].

use anyhow::{Context, Result};
use musketeers::model::TeamModel;
use musketeers::run_config::{Mode, RunConfig};
use musketeers::serve::api::Limits;
use musketeers::serve::engine::Served;
use musketeers::serve::{ServeOptions, serve};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::backend;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A run directory of `musketeers train` (its config.toml and last checkpoint).
    #[arg(long, conflicts_with = "model")]
    run: Option<PathBuf>,
    /// A plain model instead (a fetched name or a Hugging Face directory), the policy alone.
    #[arg(long)]
    model: Option<String>,
    /// With `--model`: a PEFT LoRA adapter directory to apply.
    #[arg(long, requires = "model")]
    adapter: Option<PathBuf>,
    /// Address to bind; 127.0.0.1 unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` (default: the MUSKETEERS_API_KEY variable, else none).
    #[arg(long)]
    api_key: Option<String>,
    /// The model name clients send (default: the run directory's or model's name).
    #[arg(long)]
    name: Option<String>,
    /// Requests waiting for the engine at most; more get 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Sequences decoded together at most (continuous batching).
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Prompt tokens a request may bring, in the policy's and each expert's tokenizer (each
    /// model's own context length also bounds it); longer prompts get a 400.
    #[arg(long, default_value_t = 4096)]
    max_prompt_tokens: usize,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Largest `n` a request may ask for.
    #[arg(long, default_value_t = 16)]
    max_n: usize,
    #[arg(long, value_enum, default_value_t = backend::DeviceKind::Cpu)]
    device: backend::DeviceKind,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let (config, run_dir) = what_to_serve(args)?;
    let name = args.name.clone().unwrap_or_else(|| {
        run_dir
            .as_ref()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| args.model.clone())
            .unwrap_or_else(|| "musketeers".into())
    });
    let options = serve_options(args, name);
    let adapter = args.adapter.clone();
    let max_rows = options.max_rows;
    let max_prompt_tokens = args.max_prompt_tokens.max(1);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let ready = |addr: SocketAddr| {
        let _ = writeln!(
            std::io::stderr(),
            "serving on http://{addr}/v1 (Ctrl-C drains and stops)"
        );
    };
    // Serving trains nothing: the plain backend, no autodiff.
    backend::on_backend!(args.device, B = plain, {
        let build = move || -> Result<Served<B>, String> {
            let device = Default::default();
            let fail = |e: musketeers::TrainError| e.to_string();
            let mut model = match &run_dir {
                Some(dir) => TeamModel::<B>::from_run_dir(dir, &device).map_err(fail)?,
                None => TeamModel::<B>::from_config(&config, &device).map_err(fail)?,
            };
            if let Some(dir) = &adapter {
                model.policy = model
                    .policy
                    .without_adapters()
                    .load_adapters(dir)
                    .map_err(|e| format!("{}: {e}", dir.display()))?
                    .0;
            }
            Ok(Served {
                model,
                max_rows,
                max_prompt_tokens,
            })
        };
        serve::<B, _>(options, build, ready, shutdown)?
    });
    Ok(())
}

/// The config to serve and its run directory: a run's, or (`--model`) the policy alone, prompts
/// as they come (no template) through its chat template.
fn what_to_serve(args: &ServeArgs) -> Result<(RunConfig, Option<PathBuf>)> {
    match (&args.run, &args.model) {
        (Some(run), _) => {
            let path = run.join("config.toml");
            let config = RunConfig::from_file(&path)
                .with_context(|| format!("{} is not a run directory", run.display()))?;
            Ok((config, Some(run.clone())))
        }
        (None, Some(model)) => {
            let text = format!(
                "mode = \"single\"\n[policy]\nmodel = {}\n[[tasks]]\nname = \"chain_sum\"\n",
                toml::Value::String(model.clone())
            );
            let config: RunConfig = toml::from_str(&text).context("a config for --model")?;
            debug_assert_eq!(config.mode, Mode::Single);
            Ok((config, None))
        }
        (None, None) => anyhow::bail!("say what to serve: --run DIR or --model NAME"),
    }
}

fn serve_options(args: &ServeArgs, model: String) -> ServeOptions {
    ServeOptions {
        addr: SocketAddr::new(args.host, args.port),
        api_key: args
            .api_key
            .clone()
            .or_else(|| std::env::var("MUSKETEERS_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        model,
        limits: Limits {
            max_tokens: args.max_tokens,
            max_n: args.max_n,
            ..Limits::default()
        },
        queue: args.queue,
        max_rows: args.max_batch.max(1),
        max_body_bytes: 1 << 20,
        body_timeout: Duration::from_secs(10),
        header_timeout: Duration::from_secs(args.header_timeout.max(1)),
    }
}
