//! `musketeers serve` end to end on a tiny trained run: chat and completions, streaming,
//! `n` > 1, stop strings, the greedy answer equal to the run's own evaluation, the team's
//! utilization per request; then 30+ malformed or hostile requests, each a 4xx, after which
//! the server still answers correctly. Raw sockets: hostile requests need them.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn train_tiny_run(temp: &Path) -> PathBuf {
    // save_steps at its default: one checkpoint, at the end.
    let config = common::write_tiny_run(
        temp,
        "run.toml",
        r#"
        [[team]]
        name = "qwen3"
        model = "fixture:qwen3-qk-norm"
        readout = "all"
        [[team]]
        name = "qwen3-last"
        model = "fixture:qwen3-qk-norm"
        readout = "last"
        [grpo]
        steps = 2
        max_completion_length = 6
        save_steps = 25
        [eval]
        problems = 3
        "#,
    );
    let run = temp.join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_musketeers"))
        .args(["train", "--progress", "plain", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .stderr(Stdio::null())
        .status()
        .expect("train");
    assert!(status.success());
    run
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(run: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_musketeers"))
        .args(["serve", "--port", "0", "--name", "tiny", "--run"])
        .arg(run)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server says where it listens")
            .expect("line");
        if let Some(rest) = line.strip_prefix("serving on http://") {
            break rest
                .split('/')
                .next()
                .expect("addr")
                .parse()
                .expect("socket address");
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

/// Send raw bytes; the status code and the body.
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn post(addr: SocketAddr, path: &str, body: &[u8], headers: &str) -> (u16, String) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw(addr, &request)
}

fn json(body: &str) -> serde_json::Value {
    // A chunked body: take the JSON object in it.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    serde_json::from_str(&body[start..end]).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn chat(addr: SocketAddr, question: &str, extra: &str) -> serde_json::Value {
    let body = format!(
        r#"{{"model": "tiny", "messages": [{{"role": "user", "content": {}}}]{extra}}}"#,
        serde_json::Value::String(question.into())
    );
    let (status, body) = post(addr, "/v1/chat/completions", body.as_bytes(), "");
    assert_eq!(status, 200, "{body}");
    json(&body)
}

/// The tiny run, trained, and a server on it with `extra` arguments (the temp dir holds both).
/// One tiny trained run for every test here (trained by the first that asks; serving only
/// reads it).
fn shared_run() -> &'static Path {
    static RUN: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, run) = RUN.get_or_init(|| {
        let temp = tempfile::tempdir().expect("temp");
        let run = train_tiny_run(temp.path());
        (temp, run)
    });
    run
}

fn serve_tiny_run(extra: &[&str]) -> (&'static Path, Server) {
    let run = shared_run();
    (run, start(run, extra))
}

/// The run's own greedy held-out evaluation (`eval.json`).
fn run_evaluation(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).expect("eval"))
        .expect("json")
}

#[test]
fn health_and_models_are_listed() {
    let (_run, server) = serve_tiny_run(&[]);
    let addr = server.addr;

    // Health and models.
    let (status, body) = raw(
        addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = raw(
        addr,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(json(&body)["data"][0]["id"], "tiny");
}

#[test]
fn greedy_chat_equals_the_runs_evaluation_and_reports_utilization() {
    let (run, server) = serve_tiny_run(&[]);
    let addr = server.addr;
    let eval = run_evaluation(run);

    // Greedy chat == the run's own greedy evaluation of the same question.
    for example in eval["examples"].as_array().expect("examples") {
        let question = example["question"].as_str().expect("question");
        let reply = chat(addr, question, r#", "temperature": 0"#);
        assert_eq!(
            reply["choices"][0]["message"]["content"], example["completion"],
            "served greedy answer vs the run's evaluation of {question:?}"
        );
        let team = &reply["musketeers"];
        assert_eq!(team["system"], "fused");
        let shares = team["utilization"].as_object().expect("utilization");
        assert_eq!(shares.len(), 2);
        let sum: f64 = shares.values().map(|v| v.as_f64().expect("share")).sum();
        assert!((sum - 1.0).abs() < 1e-4, "utilization sums to {sum}");
        let usage = &reply["usage"];
        assert!(usage["prompt_tokens"].as_u64().expect("usage") > 0);
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["prompt_tokens"].as_u64().unwrap()
                    + usage["completion_tokens"].as_u64().unwrap()
            )
        );
    }
}

#[test]
fn seeded_sampling_of_n_choices_is_reproducible() {
    let (_run, server) = serve_tiny_run(&[]);
    let addr = server.addr;

    // n > 1 with a seed: n choices, reproducible.
    let extra = r#", "n": 3, "temperature": 1.0, "seed": 7, "max_tokens": 5"#;
    let a = chat(addr, "w1 w2 w3", extra);
    let b = chat(addr, "w1 w2 w3", extra);
    assert_eq!(a["choices"].as_array().map(Vec::len), Some(3));
    assert_eq!(a["choices"], b["choices"]);
}

#[test]
fn completions_end_before_a_stop_string() {
    let (_run, server) = serve_tiny_run(&[]);
    let addr = server.addr;

    // Completions, and a stop string: the text ends before it.
    let (status, body) = post(
        addr,
        "/v1/completions",
        br#"{"model": "tiny", "prompt": "w5 w6 w7", "max_tokens": 6, "temperature": 0}"#,
        "",
    );
    assert_eq!(status, 200, "{body}");
    let full = json(&body)["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(!words.is_empty(), "6 greedy tokens of text: {full:?}");
    {
        let stop = words[words.len().min(3) - 1];
        let request = format!(
            r#"{{"model": "tiny", "prompt": "w5 w6 w7", "max_tokens": 6, "temperature": 0, "stop": [{}]}}"#,
            serde_json::Value::String(stop.into())
        );
        let (status, body) = post(addr, "/v1/completions", request.as_bytes(), "");
        assert_eq!(status, 200, "{body}");
        let stopped = json(&body);
        let text = stopped["choices"][0]["text"].as_str().expect("text");
        assert_eq!(text, &full[..full.find(stop).expect("stop in text")]);
        assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    }
}

#[test]
fn a_stream_sends_the_same_text_then_done() {
    let (_run, server) = serve_tiny_run(&[]);
    let addr = server.addr;

    // Streaming: chunks of the same text, then [DONE].
    let (status, body) = post(
        addr,
        "/v1/chat/completions",
        br#"{"model": "tiny", "messages": [{"role": "user", "content": "w5 w6 w7"}], "max_tokens": 6, "temperature": 0, "stream": true}"#,
        "",
    );
    assert_eq!(status, 200);
    let mut streamed = String::new();
    let mut finished = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            finished = true;
            break;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).expect("chunk");
        if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(content);
        }
    }
    assert!(finished, "ends with [DONE]: {body}");
    let whole = chat(addr, "w5 w6 w7", r#", "max_tokens": 6, "temperature": 0"#);
    assert_eq!(
        streamed,
        whole["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
}

#[test]
fn malformed_and_hostile_requests_get_4xx_and_the_server_still_answers() {
    let (run, server) = serve_tiny_run(&[]);
    let addr = server.addr;
    let eval = run_evaluation(run);

    // Hostile and malformed requests: each a 4xx with an error object.
    let chat_path = "/v1/chat/completions";
    let ok = r#""model": "tiny", "messages": [{"role": "user", "content": "w1"}]"#;
    let bad_bodies: Vec<(String, &str)> = vec![
        ("{".into(), "truncated JSON"),
        ("not json".into(), "not JSON"),
        ("[]".into(), "an array"),
        ("null".into(), "null"),
        ("{}".into(), "empty object"),
        (r#"{"model": "tiny"}"#.into(), "no messages"),
        (
            r#"{"model": "tiny", "messages": []}"#.into(),
            "empty messages",
        ),
        (
            r#"{"model": "tiny", "messages": "hi"}"#.into(),
            "messages a string",
        ),
        (
            r#"{"model": "tiny", "messages": [{"role": "user"}]}"#.into(),
            "no content",
        ),
        (
            r#"{"model": "tiny", "messages": [{"role": "pirate", "content": "x"}]}"#.into(),
            "bad role",
        ),
        (
            r#"{"model": "tiny", "messages": [{"role": "user", "content": 5}]}"#.into(),
            "content a number",
        ),
        (
            r#"{"model": "tiny", "messages": [{"role": "assistant", "content": "x"}]}"#.into(),
            "no user message last",
        ),
        (
            r#"{"model": "tiny", "messages": [{"role": "user", "content": "  "}]}"#.into(),
            "blank question",
        ),
        (
            r#"{"model": "other", "messages": [{"role": "user", "content": "x"}]}"#.into(),
            "unknown model",
        ),
        (
            r#"{"model": 5, "messages": [{"role": "user", "content": "x"}]}"#.into(),
            "model a number",
        ),
        (
            format!("{{{ok}, \"max_tokens\": -1}}"),
            "negative max_tokens",
        ),
        (format!("{{{ok}, \"max_tokens\": 0}}"), "zero max_tokens"),
        (
            format!("{{{ok}, \"max_tokens\": 100000000000}}"),
            "huge max_tokens",
        ),
        (
            format!("{{{ok}, \"max_tokens\": \"10\"}}"),
            "max_tokens a string",
        ),
        (
            format!("{{{ok}, \"max_tokens\": 1.5}}"),
            "fractional max_tokens",
        ),
        (format!("{{{ok}, \"n\": 0}}"), "n zero"),
        (format!("{{{ok}, \"n\": 100000}}"), "huge n"),
        (
            format!("{{{ok}, \"temperature\": -1}}"),
            "negative temperature",
        ),
        (
            format!("{{{ok}, \"temperature\": \"hot\"}}"),
            "temperature a string",
        ),
        (format!("{{{ok}, \"top_p\": 0}}"), "top_p zero"),
        (format!("{{{ok}, \"top_p\": 7}}"), "top_p above 1"),
        (format!("{{{ok}, \"stop\": 5}}"), "stop a number"),
        (
            format!("{{{ok}, \"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}}"),
            "too many stops",
        ),
        (format!("{{{ok}, \"stop\": [\"\"]}}"), "empty stop"),
        (format!("{{{ok}, \"seed\": -3}}"), "negative seed"),
        (format!("{{{ok}, \"stream\": \"yes\"}}"), "stream a string"),
        (format!("{{{ok}, \"frobnicate\": true}}"), "unknown field"),
        (format!("{{{ok}}} trailing"), "trailing data"),
        (
            format!(
                "{{\"model\": \"tiny\", \"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
                "w1 ".repeat(20_000)
            ),
            "question too long",
        ),
    ];
    for (body, what) in &bad_bodies {
        let (status, reply) = post(addr, chat_path, body.as_bytes(), "");
        assert!((400..500).contains(&status), "{what}: {status} {reply}");
        assert!(
            json(&reply)["error"]["message"].is_string(),
            "{what}: {reply}"
        );
    }
    let mut refused = bad_bodies.len();
    // Not UTF-8.
    let (status, _) = post(addr, chat_path, b"{\"model\": \"tiny\xff\xfe\"}", "");
    assert_eq!(status, 400, "invalid UTF-8");
    // A body over the limit.
    let huge = vec![b' '; 2 << 20];
    let (status, _) = post(addr, chat_path, &huge, "");
    assert_eq!(status, 413, "huge body");
    // Completions: a list of prompts, and an empty one.
    let (status, _) = post(
        addr,
        "/v1/completions",
        br#"{"model": "tiny", "prompt": ["a", "b"]}"#,
        "",
    );
    assert_eq!(status, 400, "two prompts");
    let (status, _) = post(
        addr,
        "/v1/completions",
        br#"{"model": "tiny", "prompt": ""}"#,
        "",
    );
    assert_eq!(status, 400, "empty prompt");
    // Unknown route, wrong method.
    let (status, _) = raw(
        addr,
        b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404);
    let (status, _) = raw(
        addr,
        b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 405);
    // Slowloris: a body that promises more than it sends is dropped after the body timeout.
    let started = std::time::Instant::now();
    let (status, _) = raw(
        addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":",
    );
    assert_eq!(status, 408, "a partial body times out");
    assert!(started.elapsed() < Duration::from_secs(30));
    refused += 8;
    assert!(refused >= 30, "{refused} bad requests");

    // After all that, a correct answer still.
    let again = chat(
        addr,
        eval["examples"][0]["question"].as_str().expect("question"),
        r#", "temperature": 0"#,
    );
    assert_eq!(
        again["choices"][0]["message"]["content"],
        eval["examples"][0]["completion"]
    );
}

#[test]
fn an_api_key_is_required_when_set() {
    let (_run, server) = serve_tiny_run(&["--api-key", "s3cret"]);
    let body =
        br#"{"model": "tiny", "messages": [{"role": "user", "content": "w1"}], "max_tokens": 2}"#;
    let (status, reply) = post(server.addr, "/v1/chat/completions", body, "");
    assert_eq!(status, 401, "{reply}");
    let (status, _) = post(
        server.addr,
        "/v1/chat/completions",
        body,
        "Authorization: Bearer wrong\r\n",
    );
    assert_eq!(status, 401);
    let (status, reply) = post(
        server.addr,
        "/v1/chat/completions",
        body,
        "Authorization: Bearer s3cret\r\n",
    );
    assert_eq!(status, 200, "{reply}");
}

/// The real `openai` Python client against the server (`scripts/openai_client_check.py`):
/// runs where MUSKETEERS_OPENAI_PYTHON names a Python with `openai` (`.ci/run` makes one).
#[test]
fn the_openai_python_client_is_served() {
    let Ok(python) = std::env::var("MUSKETEERS_OPENAI_PYTHON") else {
        musketeers_testkit::skip(
            "set MUSKETEERS_OPENAI_PYTHON to a Python with `openai` installed",
        );
        return;
    };
    let (run, server) = serve_tiny_run(&[]);
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai_client_check.py");
    let output = Command::new(python)
        .arg(script)
        .args(["--base-url", &format!("http://{}/v1", server.addr)])
        .args(["--model", "tiny", "--eval"])
        .arg(run.join("eval.json"))
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("checks passed"));
}

/// With one queue slot and one decode row, a burst of requests gets 503s for the ones that
/// do not fit, never a hang, and the others their answers.
#[test]
fn a_full_queue_answers_503() {
    let (_run, server) =
        serve_tiny_run(&["--queue", "1", "--max-batch", "1", "--max-tokens", "4096"]);
    let addr = server.addr;
    // As many new tokens as the tiny policy's 512 positions leave room for.
    let body = br#"{"model": "tiny", "messages": [{"role": "user", "content": "w1 w2"}], "max_tokens": 480, "temperature": 1.0}"#;
    let burst: Vec<_> = (0..12)
        .map(|_| std::thread::spawn(move || post(addr, "/v1/chat/completions", body, "").0))
        .collect();
    let statuses: Vec<u16> = burst
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&503),
        "some were turned away: {statuses:?}"
    );
    assert!(statuses.contains(&200), "some were served: {statuses:?}");
}

/// Resident memory of process `pid` in KiB (Linux).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A prompt too long for a model (the policy's or an expert's context, or the server's
/// token limit) is a 400 naming the limit, answered at once, never a crash; meanwhile other
/// clients' short requests are answered, also while a maximal legal prompt is processed.
#[test]
fn prompts_beyond_a_models_context_are_refused_and_others_are_served() {
    let (_run, server) = serve_tiny_run(&["--max-prompt-tokens", "300"]);
    let addr = server.addr;
    let question = |words: usize| vec!["w7"; words].join(" ");
    let ask = move |words: usize, max_tokens: usize| {
        let body = format!(
            r#"{{"model": "tiny", "messages": [{{"role": "user", "content": "{}"}}], "max_tokens": {max_tokens}}}"#,
            question(words)
        );
        let started = std::time::Instant::now();
        let (status, body) = post(addr, "/v1/chat/completions", body.as_bytes(), "");
        (status, body, started.elapsed())
    };
    // Over the server's limit; over the policy's 512 positions with max_tokens; and as long
    // as the character limit allows.
    for (words, max_tokens, says) in [
        (400, 4, "limit of 300"),
        (200, 400, "context length"),
        (10_000, 4, ""),
    ] {
        let (status, body, took) = ask(words, max_tokens);
        assert_eq!(status, 400, "{words} words: {body}");
        assert!(body.contains(says), "{words} words: {body}");
        assert!(took < Duration::from_secs(5), "{words} words took {took:?}");
    }
    // A maximal legal prompt in flight while one-token requests come and go.
    let long = std::thread::spawn(move || ask(280, 100));
    for _ in 0..5 {
        let (status, body, took) = ask(2, 1);
        assert_eq!(status, 200, "{body}");
        assert!(
            took < Duration::from_secs(2),
            "a short request waited {took:?}"
        );
    }
    let (status, body, _) = long.join().expect("long");
    assert_eq!(status, 200, "{body}");
    assert!(chat(addr, "w1 w2", "")["choices"][0]["message"]["content"].is_string());
}

/// Serving a fused run records no autodiff graph: 1,000 identical requests leave resident
/// memory within 10% of where it stood after the first 100.
#[test]
fn repeated_requests_leave_memory_flat() {
    let (_run, server) = serve_tiny_run(&[]);
    let body = br#"{"model": "tiny", "messages": [{"role": "user", "content": "w3 w14 w15"}], "max_tokens": 4}"#;
    let mut after_100 = 0;
    for i in 1..=1000 {
        let (status, text) = post(server.addr, "/v1/chat/completions", body, "");
        assert_eq!(status, 200, "{text}");
        if i == 100 {
            after_100 = rss_kib(server.child.id());
        }
    }
    let after_1000 = rss_kib(server.child.id());
    assert!(after_100 > 0, "RSS readable");
    assert!(
        (after_1000 as f64) <= after_100 as f64 * 1.10,
        "RSS grew from {after_100} KiB after 100 requests to {after_1000} KiB after 1000"
    );
}

/// A client sending its headers a byte at a time is cut off once the header timeout passes.
#[test]
fn slow_headers_are_cut_off() {
    let (_run, server) = serve_tiny_run(&["--header-timeout", "2"]);
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaa"
    {
        std::thread::sleep(Duration::from_millis(500));
        if stream.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    if !closed {
        // Closed by the server: a read returns end of stream (or a timeout response).
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut rest = Vec::new();
        closed = stream.read_to_end(&mut rest).is_ok();
    }
    assert!(closed, "the connection stayed open");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "cut off after {:?}",
        started.elapsed()
    );
}

/// Ctrl-C (SIGINT) while a streamed request is in flight: the stream still ends properly
/// (`[DONE]`) and the server then exits successfully.
#[cfg(unix)]
#[test]
fn ctrl_c_drains_in_flight_requests_then_exits() {
    let mut server = start(shared_run(), &[]);
    let body = br#"{"model": "tiny", "messages": [{"role": "user", "content": "w1 w2"}], "max_tokens": 400, "stream": true}"#;
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    stream.write_all(body).expect("write");
    // The response has started: the request is in the engine.
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).expect("first bytes");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let status = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("the stream ends");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("[DONE]"),
        "the in-flight stream was finished: {text}"
    );
    let exit = server.child.wait().expect("exit");
    assert!(
        exit.success(),
        "the server exits cleanly after draining: {exit:?}"
    );
}

/// A run directory is a model of its own: loaded on the plain backend (no autodiff, no
/// trainer), it answers its evaluation's questions as the run's own evaluation did.
#[test]
fn a_run_directory_loads_as_a_model_without_its_trainer() {
    use musketeers::model::TeamModel;
    let run = shared_run();
    let model = TeamModel::<burn_flex::Flex>::from_run_dir(run, &Default::default())
        .expect("a model from the run directory");
    assert_eq!(model.step, 2);
    assert_eq!(model.system.name(), "fused");
    assert_eq!(model.expert_names(), ["qwen3", "qwen3-last"]);
    let eval = run_evaluation(run);
    let examples = eval["examples"].as_array().expect("examples");
    let questions: Vec<String> = examples
        .iter()
        .map(|e| e["question"].as_str().expect("question").to_string())
        .collect();
    let prompts = model.prompts(&questions).expect("prompts");
    let completions = model.complete_greedy(&prompts, true).expect("greedy");
    for (completion, example) in completions.iter().zip(examples) {
        assert_eq!(
            completion,
            example["completion"].as_str().expect("completion")
        );
    }
    assert!(!completions.is_empty());

    let empty = tempfile::tempdir().expect("temp");
    let error = TeamModel::<burn_flex::Flex>::from_run_dir(empty.path(), &Default::default())
        .expect_err("no checkpoint, no model")
        .to_string();
    assert!(error.contains("no checkpoint"), "{error}");
}
