//! Rewards written in any language: a program started once per run that reads a batch of
//! completions as one JSON line on stdin and answers one JSON line on stdout.
//!
//! ```text
//! -> {"batch": [{"prompt": "...", "completion": "...", "question": "...", "answer": "42",
//!                "task": "gsm8k", "metadata": {...}}, ...]}
//! <- {"rewards": [1.0, 0.0, ...]}
//! ```
//!
//! One reward per completion, in order, each a finite number. Anything else (a crash, a line
//! that is not that JSON, too few or too many rewards, NaN or infinity, no answer within the
//! timeout) is an error naming the program and what it did; the step is refused before any
//! update, so the run's last checkpoint stays as it was and the run resumes from it.

use crate::error::TrainError;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// What the program is told of one completion.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RewardItem<'a> {
    pub prompt: &'a str,
    pub completion: &'a str,
    pub question: &'a str,
    pub answer: Option<&'a str>,
    pub task: &'a str,
    pub metadata: &'a serde_json::Value,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
    /// The last lines the program wrote to stderr, for the error message.
    stderr: std::sync::Arc<Mutex<Vec<String>>>,
}

/// A reward program, started on first use.
pub struct RewardProgram {
    name: String,
    command: Vec<String>,
    timeout: Duration,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for RewardProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardProgram")
            .field("name", &self.name)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

/// The longest piece of a bad line quoted in an error.
const QUOTE: usize = 200;

fn quote(line: &str) -> String {
    let mut cut = line.len().min(QUOTE);
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut < line.len() {
        format!("{}...", &line[..cut])
    } else {
        line.to_string()
    }
}

impl RewardProgram {
    pub fn new(name: &str, command: Vec<String>, timeout: Duration) -> Self {
        Self {
            name: name.to_string(),
            command,
            timeout,
            running: Mutex::new(None),
        }
    }

    fn fail(&self, what: String, stderr: Option<&Mutex<Vec<String>>>) -> TrainError {
        let tail = stderr
            .and_then(|s| s.lock().ok().map(|l| l.join("\n")))
            .filter(|t| !t.is_empty())
            .map(|t| format!("; its stderr ended with:\n{t}"))
            .unwrap_or_default();
        TrainError::BadInput(format!(
            "reward `{}` ({}): {what}{tail}",
            self.name,
            self.command.join(" ")
        ))
    }

    fn start(&self) -> Result<Running, TrainError> {
        let mut child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.fail(format!("cannot start: {e}"), None))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(self.fail("no pipes to the program".into(), None));
        };
        // Lines are read on threads, so that a program that never answers times out instead
        // of blocking the run, and one that floods stderr never blocks on a full pipe.
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let tail = std::sync::Arc::new(Mutex::new(Vec::new()));
        let keep = tail.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.by_ref().take(64 * 1024).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Ok(mut lines) = keep.lock() {
                            lines.push(quote(String::from_utf8_lossy(&line).trim_end()));
                            let excess = lines.len().saturating_sub(5);
                            lines.drain(..excess);
                        }
                    }
                }
            }
        });
        Ok(Running {
            child,
            stdin,
            lines,
            stderr: tail,
        })
    }

    /// One reward per item, from the program.
    pub fn score(&self, items: &[RewardItem<'_>]) -> Result<Vec<f32>, TrainError> {
        let mut guard = self
            .running
            .lock()
            .map_err(|_| self.fail("an earlier call panicked".into(), None))?;
        if guard.is_none() {
            *guard = Some(self.start()?);
        }
        let result = match guard.as_mut() {
            Some(running) => self.exchange(running, items),
            None => Err(self.fail("not running".into(), None)),
        };
        if result.is_err() {
            // A program that misbehaved once is not trusted with the next batch.
            if let Some(mut running) = guard.take() {
                let _ = running.child.kill();
                let _ = running.child.wait();
            }
        }
        result
    }

    fn exchange(
        &self,
        running: &mut Running,
        items: &[RewardItem<'_>],
    ) -> Result<Vec<f32>, TrainError> {
        let stderr = Some(running.stderr.as_ref());
        let request = serde_json::json!({ "batch": items });
        writeln!(running.stdin, "{request}")
            .and_then(|()| running.stdin.flush())
            .map_err(|e| self.fail(format!("it stopped reading its input ({e})"), stderr))?;
        let line = match running.lines.recv_timeout(self.timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(self.fail(format!("reading its output: {e}"), stderr)),
            Err(RecvTimeoutError::Timeout) => {
                return Err(self.fail(
                    format!(
                        "no answer to a batch of {} within {:?}",
                        items.len(),
                        self.timeout
                    ),
                    stderr,
                ));
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = running
                    .child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                return Err(self.fail(format!("it exited without answering ({status})"), stderr));
            }
        };
        let bad = |what: &str| {
            self.fail(
                format!(
                    "{what}; it printed: {}\n(expected one line {{\"rewards\": [...]}} with one \
                     finite number per completion)",
                    quote(&line)
                ),
                stderr,
            )
        };
        if line.contains("NaN") || line.contains("Infinity") {
            return Err(bad("a reward is not finite"));
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let rewards = value["rewards"]
            .as_array()
            .ok_or_else(|| bad("no \"rewards\" list"))?;
        if rewards.len() != items.len() {
            return Err(bad(&format!(
                "{} rewards for {} completions",
                rewards.len(),
                items.len()
            )));
        }
        rewards
            .iter()
            .enumerate()
            .map(|(i, r)| match r.as_f64() {
                Some(v) if v.is_finite() && (v as f32).is_finite() => Ok(v as f32),
                _ => Err(bad(&format!("reward {i} is {r}, not a finite number"))),
            })
            .collect()
    }
}

impl Drop for RewardProgram {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.running.lock()
            && let Some(mut running) = guard.take()
        {
            // Closing stdin asks it to end; a program that ignores that is killed.
            drop(running.stdin);
            std::thread::sleep(Duration::from_millis(20));
            if !matches!(running.child.try_wait(), Ok(Some(_))) {
                let _ = running.child.kill();
            }
            let _ = running.child.wait();
        }
    }
}
