//! The history of a test in Jepsen's shape: one JSON object per line with
//! `index`, `type` (invoke / ok / fail / info), `f`, `value`, `process` and
//! `time` (nanoseconds since the test started).
//!
//! An `invoke` by a process is completed by that process's next `ok`, `fail`
//! or `info`. `fail` means "definitely not applied", `info` "outcome unknown":
//! the process then retires and a fresh process (a new number) takes its
//! place. The nemesis is the process `"nemesis"`; its entries are `info`.

use std::io::BufRead;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

/// Kind of a history entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// Who made an entry: a client process (a number) or the nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    Client(u64),
    Named(Named),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Named {
    Nemesis,
}

impl Process {
    pub const NEMESIS: Process = Process::Named(Named::Nemesis);
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub index: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub f: String,
    pub value: Value,
    pub process: Process,
    /// Nanoseconds since the start of the test.
    pub time: u64,
}

/// One operation of a client process: its invocation and, when it came back,
/// its completion (`None` for an invocation cut off by the end of the test,
/// which counts as `info`).
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub process: u64,
    pub f: String,
    pub invoke: Event,
    pub completion: Option<Event>,
}

impl Operation {
    /// The completion kind; a missing completion is `info`.
    pub fn kind(&self) -> Kind {
        self.completion.as_ref().map_or(Kind::Info, |c| c.kind)
    }

    /// Completion time, or `None` when the outcome is unknown.
    pub fn completed_at(&self) -> Option<u64> {
        match &self.completion {
            Some(c) if c.kind != Kind::Info => Some(c.time),
            _ => None,
        }
    }

    /// Field `name` of the invocation value.
    pub fn arg(&self, name: &str) -> Option<&Value> {
        self.invoke.value.get(name)
    }

    /// Field `name` of the completion value.
    pub fn result(&self, name: &str) -> Option<&Value> {
        self.completion.as_ref().and_then(|c| c.value.get(name))
    }

    pub fn sku(&self) -> Option<&str> {
        self.arg("sku").and_then(Value::as_str)
    }

    pub fn is_final(&self) -> bool {
        self.arg("final").and_then(Value::as_bool).unwrap_or(false)
    }
}

/// Pairs every client invocation with its completion, in invocation order.
/// Nemesis entries are left out. Errors on a completion without invocation or
/// on a process that invokes twice without completing.
pub fn operations(events: &[Event]) -> anyhow::Result<Vec<Operation>> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut ops: Vec<Operation> = Vec::new();
    for event in events {
        let Process::Client(process) = event.process else { continue };
        match event.kind {
            Kind::Invoke => {
                anyhow::ensure!(!open.contains_key(&process), "process {process} invoked twice without completion (index {})", event.index);
                open.insert(process, ops.len());
                ops.push(Operation { process, f: event.f.clone(), invoke: event.clone(), completion: None });
            }
            _ => {
                let at = open.remove(&process).with_context(|| format!("completion without invocation at index {}", event.index))?;
                anyhow::ensure!(ops[at].f == event.f, "completion f {} does not match invocation f {} (index {})", event.f, ops[at].f, event.index);
                ops[at].completion = Some(event.clone());
            }
        }
    }
    Ok(ops)
}

/// Writes events as JSON lines.
pub fn write_jsonl(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for event in events {
        serde_json::to_writer(&mut out, event).context("encode an event")?;
        out.write_all(b"\n").context("write the history")?;
    }
    out.flush().context("flush the history")?;
    Ok(())
}

/// Reads a history written by [`write_jsonl`].
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut events = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.context("read the history")?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(serde_json::from_str(&line).with_context(|| format!("parse line {} of {}", n + 1, path.display()))?);
    }
    Ok(events)
}

/// Appends events with increasing indexes; shared by the client processes
/// and the nemesis through a mutex.
#[derive(Debug)]
pub struct Recorder {
    started: std::time::Instant,
    events: Vec<Event>,
}

impl Recorder {
    pub fn new(started: std::time::Instant) -> Self {
        Self { started, events: Vec::new() }
    }

    pub fn record(&mut self, kind: Kind, f: &str, value: Value, process: Process) -> u64 {
        let index = self.events.len() as u64;
        let time = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.events.push(Event { index, kind, f: f.to_owned(), value, process, time });
        index
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn into_events(self) -> Vec<Event> {
        self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jsonl_round_trip_keeps_jepsen_fields() {
        let events = vec![
            Event {
                index: 0,
                kind: Kind::Invoke,
                f: "reserve".into(),
                value: json!({"sku": "a", "id": "r1", "qty": 2}),
                process: Process::Client(3),
                time: 10,
            },
            Event { index: 1, kind: Kind::Info, f: "kill".into(), value: json!({"nodes": [1]}), process: Process::NEMESIS, time: 11 },
            Event { index: 2, kind: Kind::Ok, f: "reserve".into(), value: json!({"outcome": "ok"}), process: Process::Client(3), time: 12 },
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("history.jsonl");
        write_jsonl(&path, &events).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.lines().next().expect("a line").contains(r#""type":"invoke""#));
        assert!(text.contains(r#""process":"nemesis""#));
        assert_eq!(read_jsonl(&path).expect("read back"), events);
        let ops = operations(&events).expect("pairs");
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].kind(), Kind::Ok);
        assert_eq!(ops[0].completed_at(), Some(12));
    }

    #[test]
    fn a_double_invocation_is_an_invalid_history() {
        let e = |index, kind| Event { index, kind, f: "read".into(), value: json!({}), process: Process::Client(1), time: index };
        assert!(operations(&[e(0, Kind::Invoke), e(1, Kind::Invoke)]).is_err());
        assert!(operations(&[e(0, Kind::Ok)]).is_err());
    }
}
