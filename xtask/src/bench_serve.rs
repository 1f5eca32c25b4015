//! `cargo xtask bench serve`: a bounded load test of `musketeers serve` on 127.0.0.1. One
//! client sending requests one after another is the reference; then C concurrent clients
//! (half of them streaming) send N requests: failures, p50/p99 latency, completion tokens
//! per second, and the throughput against one client's (continuous batching at work).

use crate::util::{root, run as run_cmd};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request; its completion tokens (from `usage`).
fn request(addr: SocketAddr, i: usize, max_tokens: usize, stream: bool) -> Result<usize> {
    let body = serde_json::json!({
        "model": "bench",
        "messages": [{"role": "user", "content": format!("What is {} plus {}?", i % 50, i % 7)}],
        "max_tokens": max_tokens, "temperature": 1.0, "seed": i, "stream": stream,
    })
    .to_string();
    let mut socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(600)))?;
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    socket.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).unwrap_or("0");
    if status != "200" {
        bail!("status {status}: {}", response.lines().last().unwrap_or(""));
    }
    // The usage is in the JSON body, or in the last data chunk of a stream.
    let usage = response
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").or(Some(l)))
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter_map(|v| v["usage"]["completion_tokens"].as_u64())
        .next_back()
        .context("no usage in the response")?;
    Ok(usage as usize)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What the concurrent clients saw: each answered request's latency and completion tokens,
/// each failure's message, and the wall time of the whole load.
struct Load {
    results: Vec<(f64, usize)>,
    failures: Vec<String>,
    wall: f64,
}

pub fn serve(model: &str, clients: usize, requests: usize, max_tokens: usize) -> Result<()> {
    let (server, addr) = start_server(model, requests)?;
    let mut out = std::io::stdout();
    for i in 0..2 {
        request(addr, i, max_tokens, false)?;
    }
    // One client, one request at a time.
    let single_requests = (requests / 16).max(8);
    writeln!(out, "1 client x {single_requests} requests ...")?;
    let single_rate = single_client_rate(addr, single_requests, max_tokens)?;
    writeln!(
        out,
        "{clients} clients x {requests} requests (half streaming) ..."
    )?;
    let Load {
        results,
        failures,
        wall,
    } = concurrent_load(addr, clients, requests, max_tokens);
    drop(server);
    let mut latencies: Vec<f64> = results.iter().map(|(s, _)| *s).collect();
    latencies.sort_by(f64::total_cmp);
    let tokens: usize = results.iter().map(|(_, t)| t).sum();
    let rate = tokens as f64 / wall;
    writeln!(
        out,
        "\n{model}, max_tokens {max_tokens}, temperature 1\n\
         | clients | requests | failed | p50 s | p99 s | completion tokens/s | vs 1 client |\n\
         |---|---|---|---|---|---|---|\n\
         | 1 | {single_requests} | 0 | - | - | {single_rate:.1} | 1.00 |\n\
         | {clients} | {requests} | {} | {:.2} | {:.2} | {rate:.1} | {:.2} |",
        failures.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        rate / single_rate
    )?;
    if let Some(first) = failures.first() {
        bail!("{} requests failed, first: {first}", failures.len());
    }
    Ok(())
}

/// Build the release CLI and start `musketeers serve` on a free port; the server (killed when
/// dropped) and the address it listens on.
fn start_server(model: &str, requests: usize) -> Result<(Server, SocketAddr)> {
    run_cmd(
        "cargo",
        &["build", "--release", "-p", "musketeers", "--locked"],
    )?;
    let mut child = Command::new(root().join("target/release/musketeers"))
        .args(["serve", "--port", "0", "--name", "bench", "--model", model])
        .args(["--queue", &requests.to_string(), "--max-batch", "64"])
        .current_dir(root())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let server = Server(child);
    let addr: SocketAddr = loop {
        let line = lines
            .next()
            .context("the server ended before listening")??;
        if let Some(rest) = line.strip_prefix("serving on http://") {
            break rest.split('/').next().context("address")?.parse()?;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((server, addr))
}

/// Completion tokens per second of one client sending `requests` one after another.
fn single_client_rate(addr: SocketAddr, requests: usize, max_tokens: usize) -> Result<f64> {
    let started = Instant::now();
    let mut tokens = 0;
    for i in 0..requests {
        tokens += request(addr, 1000 + i, max_tokens, i % 2 == 1)?;
    }
    Ok(tokens as f64 / started.elapsed().as_secs_f64())
}

/// `clients` threads sharing `requests` requests, half of them streaming.
fn concurrent_load(addr: SocketAddr, clients: usize, requests: usize, max_tokens: usize) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (next, results, failures) = (next.clone(), results.clone(), failures.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return;
                    }
                    let begun = Instant::now();
                    match request(addr, 2000 + i, max_tokens, i % 2 == 0) {
                        Ok(tokens) => results
                            .lock()
                            .map(|mut r| r.push((begun.elapsed().as_secs_f64(), tokens)))
                            .unwrap_or(()),
                        Err(e) => failures
                            .lock()
                            .map(|mut f| f.push(e.to_string()))
                            .unwrap_or(()),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    let wall = started.elapsed().as_secs_f64();
    Load {
        results: results.lock().map(|r| r.clone()).unwrap_or_default(),
        failures: failures.lock().map(|f| f.clone()).unwrap_or_default(),
        wall,
    }
}
