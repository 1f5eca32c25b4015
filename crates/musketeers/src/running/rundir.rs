//! The run directory's guarantees: one process at a time, checkpoints that are complete and
//! verified before the previous one goes, a resume that never falls back to a fresh start,
//! and a config that cannot change what the checkpoint's tensors mean.
//!
//! A checkpoint is `checkpoint/` with `state.json` = `{"step", "files": {path: sha256}}`
//! (every file of the checkpoint, hashed after it was written and synced). A save writes
//! `checkpoint.tmp/`, verifies it, moves the current one to `checkpoint.old/`, moves the new
//! one in, then deletes the old: a kill at any moment leaves a complete checkpoint under one
//! of the three names, and [`recover`] puts the newest complete one back in place.

use crate::error::TrainError;
use crate::run_config::RunConfig;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The file that says which step a checkpoint holds and what its files hash to.
pub const STATE_FILE: &str = "state.json";
/// The run's config as the checkpoint was trained under (what a resume is checked against).
pub const CONFIG_FILE: &str = "config.toml";

/// An I/O error as a [`TrainError`] naming the path.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::BadInput(format!("{}: {e}", path.display()))
}

/// The three names a checkpoint of `out_dir` may have: current, being written, previous.
fn names(out_dir: &Path) -> [PathBuf; 3] {
    let main = out_dir.join("checkpoint");
    [
        main.clone(),
        main.with_extension("tmp"),
        main.with_extension("old"),
    ]
}

/// A run directory held by this process: a lock on `run.lock` (released by the kernel when
/// the process ends, however it ends), and an entry in [`HELD_HERE`] while it lives.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    dir: PathBuf,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        held_here().remove(&self.dir);
    }
}

/// The run directories this process holds. A file lock alone cannot tell "held by this
/// process" from "released a moment ago": a child spawned by another thread holds a copy of
/// every descriptor between its fork and its exec, so a lock this process just released may
/// still read as taken for that instant. With this set, a lock that reads as taken by our own
/// pid but is not in it is such a leftover, and is waited for instead of refused.
static HELD_HERE: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());

fn held_here() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    HELD_HERE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a lock left over from this process's own spawns is waited for.
const INHERITED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Take `out_dir` for this process, or fail naming the process that holds it.
pub fn lock(out_dir: &Path) -> Result<RunLock, TrainError> {
    let path = out_dir.join("run.lock");
    let dir = std::fs::canonicalize(out_dir).map_err(io(out_dir))?;
    if held_here().contains(&dir) {
        return Err(TrainError::BadInput(format!(
            "{} is in use by another training run in this process: one run per run directory",
            out_dir.display()
        )));
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    let own_pid = std::process::id().to_string();
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let _ = file.rewind();
                let holder = holder.trim();
                if holder == own_pid && started.elapsed() < INHERITED_LOCK_WAIT {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                return Err(TrainError::BadInput(format!(
                    "{} is in use by another training process ({}): one process per run \
                     directory",
                    out_dir.display(),
                    match holder {
                        "" => "pid unknown".to_string(),
                        pid => format!("pid {pid}"),
                    }
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
    }
    file.set_len(0).map_err(io(&path))?;
    write!(file, "{own_pid}").map_err(io(&path))?;
    held_here().insert(dir.clone());
    Ok(RunLock { _file: file, dir })
}

fn sha256_file(path: &Path) -> Result<String, TrainError> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Every file under `dir` (relative, `/`-separated, sorted), except the state file.
fn files_under(dir: &Path) -> Result<Vec<String>, TrainError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).map_err(io(&at))? {
            let entry = entry.map_err(io(&at))?;
            let path = entry.path();
            if entry.file_type().map_err(io(&path))?.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                if name != STATE_FILE {
                    out.push(name);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn sync(path: &Path) -> Result<(), TrainError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Seal a checkpoint written into `staging`: sync every file, write `state.json` with the
/// step and every file's hash, then check it reads back complete.
pub fn seal(staging: &Path, step: u64) -> Result<(), TrainError> {
    let mut files = BTreeMap::new();
    for name in files_under(staging)? {
        let path = staging.join(&name);
        sync(&path)?;
        files.insert(name, sha256_file(&path)?);
    }
    let state = serde_json::json!({"step": step, "files": files});
    let path = staging.join(STATE_FILE);
    std::fs::write(&path, state.to_string()).map_err(io(&path))?;
    sync(&path)?;
    sync(staging)?;
    verify(staging).map(|_| ())
}

/// The step of the checkpoint in `dir`, after checking that every file its state lists is
/// there with the hash it had when saved. An error names the file that is wrong.
pub fn verify(dir: &Path) -> Result<u64, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        TrainError::BadInput(format!(
            "{}: the checkpoint's state cannot be read ({e})",
            path.display()
        ))
    })?;
    let state: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        TrainError::BadInput(format!(
            "{}: truncated or not JSON ({e}); the checkpoint is incomplete",
            path.display()
        ))
    })?;
    let step = state["step"]
        .as_u64()
        .ok_or_else(|| TrainError::BadInput(format!("{}: no \"step\" number", path.display())))?;
    // Checkpoints from before hashes were recorded carry none; their files are taken as
    // they are.
    if let Some(files) = state["files"].as_object() {
        for (name, want) in files {
            let file = dir.join(name);
            if !file.exists() {
                return Err(TrainError::BadInput(format!(
                    "{}: missing from the checkpoint (listed in {})",
                    file.display(),
                    path.display()
                )));
            }
            let got = sha256_file(&file)?;
            if want.as_str() != Some(got.as_str()) {
                return Err(TrainError::BadInput(format!(
                    "{}: its content changed since the checkpoint was saved (sha256 {got}, \
                     saved as {want})",
                    file.display()
                )));
            }
        }
    }
    Ok(step)
}

/// Replace the checkpoint of `out_dir` by the sealed one in `staging`
/// (`checkpoint.tmp`). The previous checkpoint is deleted only once the new one is in place.
pub fn install(out_dir: &Path) -> Result<(), TrainError> {
    let [main, staging, old] = names(out_dir);
    if main.exists() {
        if old.exists() {
            // A save killed after its last step left an older copy: the current one stands.
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(&main, &old).map_err(io(&main))?;
    }
    std::fs::rename(&staging, &main).map_err(io(&main))?;
    sync(out_dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// Where the staging checkpoint of `out_dir` is written; a leftover of a killed save goes
/// (a resume has already put the newest complete checkpoint in place: [`recover`]).
pub fn staging(out_dir: &Path) -> Result<PathBuf, TrainError> {
    let [_, staging, _] = names(out_dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    Ok(staging)
}

/// The step of the newest complete checkpoint of `out_dir` without changing anything:
/// `checkpoint/`, else a save's complete `checkpoint.tmp/`, else `checkpoint.old/`.
/// `Ok(None)`: the run never saved one. An error when one exists but none is complete.
pub fn find(out_dir: &Path) -> Result<Option<(PathBuf, u64)>, TrainError> {
    let [main, staging, old] = names(out_dir);
    if main.exists() {
        return verify(&main).map(|step| Some((main, step)));
    }
    let mut first_error = None;
    for dir in [staging, old] {
        if dir.exists() {
            match verify(&dir) {
                Ok(step) => return Ok(Some((dir, step))),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Put the newest complete checkpoint of `out_dir` in place as `checkpoint/` (after a save
/// killed between its renames) and return its step; `Ok(None)` when the run never saved one.
pub fn recover(out_dir: &Path) -> Result<Option<u64>, TrainError> {
    let Some((dir, step)) = find(out_dir)? else {
        return Ok(None);
    };
    let [main, _, old] = names(out_dir);
    if dir != main {
        std::fs::rename(&dir, &main).map_err(io(&dir))?;
        sync(out_dir)?;
    }
    // An older copy beside the complete current one is no longer needed.
    if old.exists() && dir != old {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(Some(step))
}

/// The settings that shape what a checkpoint holds: the system, the policy and its adapters,
/// the team and the interface. A resume that changes any of them would load tensors into a
/// model of another shape, or read them as something they are not.
fn value<T: serde::Serialize>(v: &T) -> Result<toml::Value, TrainError> {
    toml::Value::try_from(v).map_err(|e| TrainError::BadInput(format!("config: {e}")))
}

fn shaping(config: &RunConfig) -> Result<toml::Value, TrainError> {
    let mut interface = config.interface.clone();
    // How fast the interface trains does not change what it is.
    interface.learning_rate = None;
    let mut table = toml::map::Map::new();
    table.insert("mode".into(), value(&config.mode)?);
    table.insert("policy.model".into(), value(&config.policy.model)?);
    table.insert("policy.lora".into(), value(&config.policy.lora)?);
    table.insert("team".into(), value(&config.team)?);
    table.insert("interface".into(), value(&interface)?);
    Ok(toml::Value::Table(table))
}

/// Dotted keys where `a` and `b` differ, with both values.
fn differences(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => differences(&name, u, v, out),
                    (u, v) => out.push(format!(
                        "{name}: {} -> {}",
                        u.map_or("unset".into(), ToString::to_string),
                        v.map_or("unset".into(), ToString::to_string)
                    )),
                }
            }
        }
        _ if a != b => out.push(format!("{prefix}: {a} -> {b}")),
        _ => {}
    }
}

/// Check a resume of a checkpoint saved under `saved` with `config`: an error listing every
/// setting that shapes the trained state and changed; otherwise the other settings that
/// changed (to be recorded).
pub fn check_resume(saved: &RunConfig, config: &RunConfig) -> Result<Vec<String>, TrainError> {
    let mut shaping_changes = Vec::new();
    differences(
        "",
        &shaping(saved)?,
        &shaping(config)?,
        &mut shaping_changes,
    );
    if !shaping_changes.is_empty() {
        return Err(TrainError::BadInput(format!(
            "cannot resume: the config changes what the checkpoint holds ({}); resume with \
             the checkpoint's settings, or start a new run in another directory",
            shaping_changes.join("; ")
        )));
    }
    let mut changes = Vec::new();
    differences("", &value(saved)?, &value(config)?, &mut changes);
    Ok(changes)
}

/// The config a checkpoint was trained under: its own copy, or (checkpoints from before it
/// kept one) the run directory's `config.toml` as it was before this run wrote it.
pub fn saved_config(checkpoint: &Path, run_config: Option<&str>) -> Result<RunConfig, TrainError> {
    let own = checkpoint.join(CONFIG_FILE);
    let (text, from) = match std::fs::read_to_string(&own) {
        Ok(text) => (text, own),
        Err(_) => match run_config {
            Some(text) => (text.to_string(), checkpoint.with_file_name(CONFIG_FILE)),
            None => {
                return Err(TrainError::BadInput(format!(
                    "{}: no config to resume against (the checkpoint has none and the run \
                     directory has no config.toml)",
                    checkpoint.display()
                )));
            }
        },
    };
    toml::from_str(&text).map_err(|e| {
        TrainError::BadInput(format!(
            "{}: not a run config ({e}); cannot check the resume",
            from.display()
        ))
    })
}

/// Keep the lines of a JSONL log whose `step` is at most `step`: steps a killed run logged
/// after its last checkpoint are taken again, and a line torn by a kill mid-write goes.
/// Written to a new file and renamed over, so a kill here loses nothing either.
pub fn truncate_log(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let staging = path.with_extension("jsonl.tmp");
    std::fs::write(&staging, kept).map_err(io(&staging))?;
    std::fs::rename(&staging, path).map_err(io(path))
}

impl<B: burn::tensor::backend::Backend> crate::method::model::TeamModel<B> {
    /// The model a run directory holds: the config its newest complete checkpoint was
    /// trained under, with that checkpoint's adapters, interface and router.
    pub fn from_run_dir(dir: &Path, device: &B::Device) -> Result<Self, TrainError> {
        let Some((checkpoint, step)) = find(dir)? else {
            return Err(TrainError::BadInput(format!(
                "{}: no checkpoint to load a model from",
                dir.display()
            )));
        };
        let run_config = std::fs::read_to_string(dir.join(CONFIG_FILE)).ok();
        let config = saved_config(&checkpoint, run_config.as_deref())?;
        Self::from_checkpoint(&config, &checkpoint, step, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds `dir`'s lock file through a second open file description, as a child between
    /// its fork and its exec does, with `pid` written in it.
    fn hold_as(dir: &Path, pid: &str) -> File {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("run.lock"))
            .expect("open");
        file.try_lock().expect("lock");
        write!(file, "{pid}").expect("write");
        file
    }

    #[test]
    fn a_lock_left_over_from_our_own_spawn_is_waited_for() {
        let temp = tempfile::tempdir().expect("temp");
        let leftover = hold_as(temp.path(), &std::process::id().to_string());
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(leftover);
        });
        let held = lock(temp.path()).expect("taken once the leftover goes");
        release.join().expect("join");
        let err = lock(temp.path()).expect_err("held by this process");
        assert!(err.to_string().contains("this process"), "{err}");
        drop(held);
        drop(lock(temp.path()).expect("free again"));
    }

    #[test]
    fn a_lock_of_another_process_is_refused_at_once() {
        let temp = tempfile::tempdir().expect("temp");
        let _other = hold_as(temp.path(), "1");
        let started = std::time::Instant::now();
        let err = lock(temp.path()).expect_err("held by pid 1");
        assert!(err.to_string().contains("pid 1"), "{err}");
        assert!(started.elapsed() < INHERITED_LOCK_WAIT / 2);
    }
}
