//! The engine: one thread owns the trained system and a continuous decode batch. Requests
//! arrive through a bounded queue, join the batch at the next step (the team reads the
//! prompt once, the interface makes C, the policy prefills `[C ; prompt]`), stream their text
//! back as it decodes, and leave when they finish or their client goes away.

use burn::tensor::backend::Backend;
use musketeers_lm::batch::{DecodeBatch, Event, SequenceSpec};
use musketeers_lm::generate::FinishReason;
use musketeers_lm::sampling::SamplingConfig;
use musketeers_lm::tokenizer::TextTokenizer;
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

use super::api::{ApiError, Sampling, TeamReport, finish_reason};
use crate::method::model::TeamModel;

/// What the policy reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A chat question, wrapped as training wrapped its questions.
    Question(String),
    /// A completion prompt, read as it is.
    Raw(String),
}

#[derive(Debug)]
pub struct Job {
    pub input: Input,
    pub sampling: Sampling,
    pub events: UnboundedSender<JobEvent>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Started {
        prompt_tokens: usize,
        team: TeamReport,
    },
    Text {
        index: usize,
        delta: String,
    },
    Finished {
        index: usize,
        reason: &'static str,
        completion_tokens: usize,
    },
    Failed(ApiError),
}

/// The system being served and how the engine runs it.
#[derive(Debug)]
pub struct Served<B: Backend> {
    pub model: TeamModel<B>,
    /// Rows decoded together at most (the `n` samples of a request count each).
    pub max_rows: usize,
    /// Prompt tokens per request at most, in the policy's and every expert's tokenizer
    /// (each model's context length bounds it too).
    pub max_prompt_tokens: usize,
}

struct Sequence {
    job: u64,
    index: usize,
    tokens: Vec<u32>,
    /// Bytes of the decoded text already sent.
    sent: usize,
    stop: Vec<String>,
}

struct JobState {
    events: UnboundedSender<JobEvent>,
    open: usize,
}

/// Text decoded from `tokens`, cut before the first stop string; whether one was found.
fn decoded(tokenizer: &TextTokenizer, tokens: &[u32], stop: &[String]) -> (String, bool) {
    let text = tokenizer.decode(tokens, true).unwrap_or_default();
    match stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(cut) => (text[..cut].to_string(), true),
        None => (text, false),
    }
}

/// The part of `text` after `sent` bytes that is safe to send: not ending in a partial
/// character (a replacement character may still become a real one).
fn fresh(text: &str, sent: usize, finished: bool) -> Option<(String, usize)> {
    let end = if finished {
        text.len()
    } else {
        text.trim_end_matches('\u{FFFD}').len()
    };
    if end <= sent || !text.is_char_boundary(sent) {
        return None;
    }
    Some((text[sent..end].to_string(), end))
}

/// Run the engine until the queue closes and every sequence has finished.
pub fn run<B: Backend>(served: Served<B>, jobs: Receiver<Job>) {
    let mut engine = Engine::new(served);
    let mut closed = false;
    loop {
        let Some(admitted) = engine.take_jobs(&jobs, &mut closed) else {
            return;
        };
        engine.admit_all(admitted);
        if engine.batch.is_empty() {
            continue;
        }
        if let Some(events) = engine.decode_step() {
            engine.deliver(events);
        }
    }
}

/// The engine's state: the model, its decode batch and the open requests.
struct Engine<B: Backend> {
    model: TeamModel<B>,
    sampler: musketeers_lm::Llama<B>,
    device: B::Device,
    batch: DecodeBatch<B>,
    sequences: HashMap<u64, Sequence>,
    states: BTreeMap<u64, JobState>,
    next_job: u64,
    max_rows: usize,
    max_prompt_tokens: usize,
}

impl<B: Backend> Engine<B> {
    fn new(served: Served<B>) -> Self {
        let Served {
            model,
            max_rows,
            max_prompt_tokens,
        } = served;
        let device = model.policy.embed_tokens.weight.device();
        let sampler = model.sampler();
        let mut batch = DecodeBatch::new(&sampler, &device);
        if let Some(gates) = model.context_gates() {
            batch = batch.with_context_gates(gates);
        }
        Self {
            model,
            sampler,
            device,
            batch,
            sequences: HashMap::new(),
            states: BTreeMap::new(),
            next_job: 0,
            max_rows,
            max_prompt_tokens,
        }
    }

    /// Admit: wait for work when idle, take what is queued while busy. `None`: the queue
    /// closed and nothing is left to decode.
    fn take_jobs(&mut self, jobs: &Receiver<Job>, closed: &mut bool) -> Option<Vec<Job>> {
        let mut admitted = Vec::new();
        if self.batch.is_empty() {
            if *closed {
                return None;
            }
            match jobs.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => admitted.push(job),
                Err(RecvTimeoutError::Timeout) => return Some(admitted),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
        while self.batch.len() + admitted.iter().map(|j| j.sampling.n).sum::<usize>()
            < self.max_rows
        {
            match jobs.try_recv() {
                Ok(job) => admitted.push(job),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    *closed = true;
                    break;
                }
            }
        }
        Some(admitted)
    }

    /// Every admitted request is prefilled in one forward pass and joins the batch; a
    /// request that cannot is answered with its error.
    fn admit_all(&mut self, admitted: Vec<Job>) {
        let mut joining = Vec::new();
        let mut joined_jobs = Vec::new();
        for job in admitted {
            let id = self.next_job;
            self.next_job += 1;
            match admit(&self.model, &job, id, self.max_prompt_tokens) {
                Ok((specs, started)) => {
                    if job.events.send(started).is_err() {
                        continue;
                    }
                    self.open(&job, id, &specs);
                    joining.extend(specs);
                    joined_jobs.push(id);
                }
                Err(error) => {
                    let _ = job.events.send(JobEvent::Failed(error));
                }
            }
        }
        if let Err(e) = self.batch.join(&self.sampler, joining, &self.device) {
            for id in joined_jobs {
                if let Some(state) = self.states.remove(&id) {
                    let _ = state
                        .events
                        .send(JobEvent::Failed(ApiError::invalid("prompt", e.to_string())));
                }
                self.sequences.retain(|_, s| s.job != id);
            }
        }
    }

    /// Track `job`'s sequences until each has finished.
    fn open(&mut self, job: &Job, id: u64, specs: &[SequenceSpec<B>]) {
        for spec in specs {
            self.sequences.insert(
                spec.id,
                Sequence {
                    job: id,
                    index: (spec.id & 0xffff) as usize,
                    tokens: Vec::new(),
                    sent: 0,
                    stop: job.sampling.stop.clone(),
                },
            );
        }
        self.states.insert(
            id,
            JobState {
                events: job.events.clone(),
                open: specs.len(),
            },
        );
    }

    /// One decode step of the whole batch. A step that fails fails every request in it; the
    /// engine goes on.
    fn decode_step(&mut self) -> Option<Vec<Event>> {
        match self.batch.step(&self.sampler, &self.device) {
            Ok(events) => Some(events),
            Err(e) => {
                for state in self.states.values() {
                    let _ = state.events.send(JobEvent::Failed(ApiError::with_status(
                        500,
                        "server_error",
                        e.to_string(),
                    )));
                }
                let ids: Vec<u64> = self.sequences.keys().copied().collect();
                for id in ids {
                    self.batch.cancel(id);
                }
                self.sequences.clear();
                self.states.clear();
                None
            }
        }
    }

    /// Send each sequence's new text, and its end when it finished; forget the requests
    /// whose clients went away.
    fn deliver(&mut self, events: Vec<Event>) {
        let mut gone: Vec<u64> = Vec::new();
        for event in events {
            let (id, reason) = match event {
                Event::Token { id, token, .. } => {
                    if let Some(seq) = self.sequences.get_mut(&id) {
                        seq.tokens.push(token);
                    }
                    (id, None)
                }
                Event::Finished { id, reason } => (id, Some(reason)),
            };
            if let Some(job) = self.send(id, reason) {
                gone.push(job);
            }
        }
        for job in gone {
            self.drop_job(job);
        }
    }

    /// Sequence `id`'s new text, and its end when `reason` says it finished or a stop string
    /// ended it. `Some(job)`: the job's client went away.
    fn send(&mut self, id: u64, reason: Option<FinishReason>) -> Option<u64> {
        let seq = self.sequences.get_mut(&id)?;
        let job = seq.job;
        let (text, stopped) = decoded(&self.model.tokenizer, &seq.tokens, &seq.stop);
        let finished = reason.is_some() || stopped;
        let state = self.states.get_mut(&seq.job)?;
        let mut alive = true;
        if let Some((delta, end)) = fresh(&text, seq.sent, finished) {
            seq.sent = end;
            alive = state
                .events
                .send(JobEvent::Text {
                    index: seq.index,
                    delta,
                })
                .is_ok();
        }
        if alive && finished {
            let label = if stopped {
                "stop"
            } else {
                finish_reason(reason.unwrap_or(FinishReason::Length))
            };
            alive = state
                .events
                .send(JobEvent::Finished {
                    index: seq.index,
                    reason: label,
                    completion_tokens: seq.tokens.len(),
                })
                .is_ok();
            state.open -= 1;
            if reason.is_none() {
                // A stop string ended it; the batch still decodes it.
                self.batch.cancel(id);
            }
            self.sequences.remove(&id);
            if self.states.get(&job).is_some_and(|s| s.open == 0) {
                self.states.remove(&job);
            }
        }
        // The client went away: its rows are freed.
        (!alive).then_some(job)
    }

    fn drop_job(&mut self, job: u64) {
        let ids: Vec<u64> = self
            .sequences
            .iter()
            .filter(|(_, s)| s.job == job)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.batch.cancel(id);
            self.sequences.remove(&id);
        }
        self.states.remove(&job);
    }
}

/// A job's sequences, and the event that starts its response.
type Admitted<B> = (Vec<SequenceSpec<B>>, JobEvent);

/// The sequences of `job` (id `id`), and the event that starts its response.
fn admit<B: Backend>(
    model: &TeamModel<B>,
    job: &Job,
    id: u64,
    max_prompt_tokens: usize,
) -> Result<Admitted<B>, ApiError> {
    let param = match &job.input {
        Input::Question(_) => "messages",
        Input::Raw(_) => "prompt",
    };
    let bad = |e: crate::error::TrainError| ApiError::invalid(param, e.to_string());
    let prompt = match &job.input {
        Input::Question(q) => model.prompt(q).map_err(bad)?,
        Input::Raw(p) => p.clone(),
    };
    let max_new_tokens = job
        .sampling
        .max_tokens
        .unwrap_or(model.decoding.max_new_tokens);
    // Before any model runs: a prompt too long for a model would take minutes and gigabytes.
    model
        .check_prompt_fits(&prompt, max_new_tokens, max_prompt_tokens)
        .map_err(bad)?;
    let context = model.prompt_context(&prompt).map_err(bad)?;
    if context.ids.is_empty() {
        return Err(ApiError::invalid("prompt", "no tokens"));
    }
    let s = &job.sampling;
    let seed = s.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(id, |d| d.as_nanos() as u64 ^ id)
    });
    let specs = (0..s.n)
        .map(|index| SequenceSpec {
            id: (id << 16) | index as u64,
            prompt: context.ids.clone(),
            prefix: context.prefix.clone(),
            max_new_tokens: s.max_tokens.unwrap_or(model.decoding.max_new_tokens),
            eos_token_ids: model.decoding.eos_token_ids.clone(),
            sampling: SamplingConfig {
                temperature: s.temperature,
                top_k: None,
                top_p: s.top_p,
                seed,
            },
            stream: index as u64,
            stop: None,
        })
        .collect();
    let team = TeamReport {
        system: model.system.name().to_string(),
        utilization: model
            .expert_names()
            .into_iter()
            .zip(context.utilization.iter().copied())
            .collect(),
        routing_entropy: context.routing_entropy,
        routing_entropy_normalized: context.routing_entropy_normalized,
    };
    Ok((
        specs,
        JobEvent::Started {
            prompt_tokens: context.ids.len(),
            team,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::fresh;

    #[test]
    fn text_is_sent_in_whole_characters() {
        assert_eq!(fresh("abc", 1, false), Some(("bc".into(), 3)));
        assert_eq!(fresh("ab\u{FFFD}", 1, false), Some(("b".into(), 2)));
        assert_eq!(fresh("ab\u{FFFD}", 2, true), Some(("\u{FFFD}".into(), 5)));
        assert_eq!(fresh("ab", 2, false), None);
    }
}
