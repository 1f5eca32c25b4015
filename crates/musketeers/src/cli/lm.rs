//! `musketeers lm ...`: run a language model from the command line.

use crate::cli::backend::DeviceKind;
use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use clap::{Args, Subcommand};
use musketeers_lm::Pretrained;
use musketeers_lm::generate::{GenerationConfig, StopStrings, generate_until};
use musketeers_lm::pretrained::load_tokenizer;
use musketeers_lm::sampling::SamplingConfig;
use musketeers_lm::tokenizer::{ChatMessage, TextTokenizer};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum LmCommand {
    /// One forward pass; writes f32 `logits` [T, vocab] and `hidden_states` [layers+1, T, hidden].
    Forward {
        #[command(flatten)]
        model: ModelArgs,
        /// Token ids, comma separated (no BOS is added).
        #[arg(
            long,
            value_delimiter = ',',
            conflicts_with = "prompt",
            required_unless_present = "prompt"
        )]
        token_ids: Option<Vec<u32>>,
        /// Text, tokenized with the model's tokenizer.
        #[arg(long)]
        prompt: Option<String>,
        /// Output safetensors file.
        #[arg(long)]
        dump: PathBuf,
    },
    /// Write a model (a .gguf file, a fetched name, or a directory) as a Hugging Face
    /// directory: config.json, f32 model.safetensors, tokenizer.json, tokenizer_config.json.
    Convert {
        #[arg(long, value_parser = resolve_model)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
    },
    /// Give a model directory's config.json random weights (model.safetensors, f32): a
    /// stand-in of the real model's shape where its weights cannot travel (the GPU check).
    Randomize {
        /// A directory with config.json (and tokenizer.json, kept as it is).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the token ids of a text as a JSON array.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        text: String,
    },
    /// Generate completions, then print prefill and decode tokens per second.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt as a user message in the model's chat template.
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long)]
        top_p: Option<f32>,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        num_return_sequences: usize,
        /// Stop a completion once its text contains this string (repeatable).
        #[arg(long = "stop")]
        stop: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json), a .gguf
    /// file, or the name of a model `cargo xtask models fetch` fetched (e.g. smollm2-135m).
    #[arg(long, value_parser = resolve_model)]
    model: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

pub fn run(command: LmCommand) -> Result<()> {
    let device = match &command {
        LmCommand::Forward { model, .. }
        | LmCommand::Tokenize { model, .. }
        | LmCommand::Generate { model, .. } => model.device,
        LmCommand::Convert { .. } | LmCommand::Randomize { .. } => DeviceKind::Cpu,
    };
    crate::cli::backend::on_backend!(device, B = plain, run_on::<B>(command, &Default::default()))
}

/// Load a model directory or `.gguf` file, saying on stderr how long it took (stdout stays
/// machine-readable).
fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<Pretrained<B>> {
    let start = Instant::now();
    let pretrained = Pretrained::<B>::load(path, device)
        .with_context(|| format!("loading model {}", path.display()))?;
    writeln!(
        std::io::stderr(),
        "loaded {} in {:.2}s",
        path.display(),
        start.elapsed().as_secs_f64()
    )?;
    Ok(pretrained)
}

fn resolve_model(spec: &str) -> Result<PathBuf, String> {
    musketeers_lm::catalog::resolve(spec).map_err(|e| e.to_string())
}

fn tokenizer(path: &Path) -> Result<TextTokenizer> {
    load_tokenizer(path).with_context(|| format!("loading the tokenizer of {}", path.display()))
}

fn run_on<B: Backend>(command: LmCommand, device: &B::Device) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        LmCommand::Randomize { dir } => randomize::<B>(&mut out, &dir, device),
        LmCommand::Convert { from, to } => {
            let start = Instant::now();
            let pretrained = load::<B>(&from, device)?;
            musketeers_lm::export::save_pretrained(&pretrained, &to)
                .with_context(|| format!("writing {}", to.display()))?;
            writeln!(
                out,
                "wrote {} ({} layers, f32) in {:.1}s",
                to.display(),
                pretrained.config.num_layers,
                start.elapsed().as_secs_f64()
            )?;
            Ok(())
        }
        LmCommand::Tokenize { model, text } => {
            let ids = tokenizer(&model.model)?.encode(&text, false)?;
            writeln!(out, "{}", serde_json::to_string(&ids)?)?;
            Ok(())
        }
        LmCommand::Forward {
            model,
            token_ids,
            prompt,
            dump,
        } => forward::<B>(&mut out, &model.model, token_ids, prompt, &dump, device),
        LmCommand::Generate {
            model,
            prompt,
            chat,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            num_return_sequences,
            stop,
        } => {
            let request = GenerateRequest {
                prompt,
                chat,
                max_new_tokens,
                num_return_sequences,
                sampling: SamplingConfig {
                    temperature,
                    top_k,
                    top_p,
                    seed,
                },
                stop,
            };
            generate::<B>(&mut out, &model.model, request, device)
        }
    }
}

/// `lm randomize`: fresh random weights for the config in `dir`, written beside it.
fn randomize<B: Backend>(out: &mut impl Write, dir: &Path, device: &B::Device) -> Result<()> {
    let start = Instant::now();
    let config = musketeers_lm::LlamaConfig::from_file(&dir.join("config.json"))?;
    let tokenizer = dir
        .join("tokenizer.json")
        .exists()
        .then(|| TextTokenizer::load(dir, config.vocab_size))
        .transpose()?;
    let pretrained = Pretrained {
        dir: dir.to_path_buf(),
        model: config.init::<B>(device),
        eos_token_ids: musketeers_lm::config::generation_eos_ids(dir)?,
        config,
        tokenizer,
    };
    musketeers_lm::export::save_pretrained(&pretrained, dir)
        .with_context(|| format!("writing {}", dir.display()))?;
    writeln!(
        out,
        "randomized {} ({} layers) in {:.1}s",
        dir.display(),
        pretrained.config.num_layers,
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// `lm forward`: the logits and every hidden state of one prompt, dumped as safetensors.
fn forward<B: Backend>(
    out: &mut impl Write,
    path: &Path,
    token_ids: Option<Vec<u32>>,
    prompt: Option<String>,
    dump: &Path,
    device: &B::Device,
) -> Result<()> {
    let Pretrained {
        config,
        model: llama,
        tokenizer: tok,
        ..
    } = load::<B>(path, device)?;
    let ids = match (token_ids, prompt) {
        (Some(ids), _) => ids,
        (None, Some(text)) => tok
            .with_context(|| format!("{} has no tokenizer", path.display()))?
            .encode(&text, true)?,
        (None, None) => bail!("give --token-ids or --prompt"),
    };
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        bail!(
            "--token-ids: id {bad} is outside the vocabulary of {}",
            config.vocab_size
        );
    }
    if ids.is_empty() {
        bail!("--token-ids: at least one token is needed");
    }
    let t = ids.len();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(
            ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
            [1, t],
        ),
        device,
    );
    let output = llama.forward(input, None, true);
    let logits = output
        .logits
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut hidden = Vec::new();
    for state in output.hidden_states {
        hidden.extend(
            state
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
    }
    write_dump(
        dump,
        &[
            ("logits", vec![t, config.vocab_size], logits),
            (
                "hidden_states",
                vec![config.num_layers + 1, t, config.hidden_size],
                hidden,
            ),
        ],
    )?;
    writeln!(out, "wrote {}", dump.display())?;
    Ok(())
}

/// What `lm generate` asks for.
struct GenerateRequest {
    prompt: String,
    chat: bool,
    max_new_tokens: usize,
    num_return_sequences: usize,
    sampling: SamplingConfig,
    stop: Vec<String>,
}

/// `lm generate`: completions of one prompt, with the prefill and decode rates.
fn generate<B: Backend>(
    out: &mut impl Write,
    path: &Path,
    request: GenerateRequest,
    device: &B::Device,
) -> Result<()> {
    let pretrained = load::<B>(path, device)?;
    let tok = pretrained.tokenizer()?;
    let text = if request.chat {
        tok.apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: request.prompt,
            }],
            true,
        )?
    } else {
        request.prompt
    };
    let ids = tok.encode(&text, !request.chat)?;
    let generation_config = GenerationConfig {
        max_new_tokens: request.max_new_tokens,
        num_return_sequences: request.num_return_sequences,
        eos_token_ids: pretrained.eos_token_ids.clone(),
        sampling: request.sampling,
    };
    let stop = StopStrings::new(tok, request.stop);
    let result = generate_until(
        &pretrained.model,
        &[ids],
        &generation_config,
        Some(&stop),
        device,
    )?;
    for (i, tokens) in result.tokens.iter().enumerate() {
        writeln!(out, "--- completion {i} ---\n{}", tok.decode(tokens, true)?)?;
    }
    writeln!(
        out,
        "prefill: {} tokens at {:.1} tokens/s; decode: {} tokens at {:.1} tokens/s",
        result.prefill_tokens,
        result.prefill_tokens as f64 / result.prefill_seconds.max(1e-9),
        result.decode_tokens,
        result.decode_tokens as f64 / result.decode_seconds.max(1e-9)
    )?;
    Ok(())
}

/// Write f32 tensors to a safetensors file.
fn write_dump(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                n.to_string(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    musketeers_lm::weights::save_f32_safetensors(path, &tensors)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
