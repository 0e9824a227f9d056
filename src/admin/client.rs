//! The admin CLI (`brokk dstat | browse | purge | send`), like ActiveMQ's
//! `activemq dstat|browse|purge`: a client of a running broker's JSON API.

use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Api(String),
    #[error("cannot reach {url}: {message}")]
    Transport { url: String, message: String },
}

/// Where the broker's admin API is and who asks.
pub struct AdminClient {
    base: String,
    auth: Option<String>,
    agent: ureq::Agent,
}

impl AdminClient {
    /// `base`: `http://host:8161` or `host:8161`.
    pub fn new(base: &str, user: Option<&str>, password: Option<&str>) -> AdminClient {
        let base = if base.starts_with("http://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        let auth = user.map(|u| {
            let pair = format!("{u}:{}", password.unwrap_or_default());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        AdminClient {
            base,
            auth,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(70))
                .build(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.request(method, &url);
        if let Some(a) = &self.auth {
            req = req.set("Authorization", a);
        }
        if method != "GET" {
            // Any value: a script is not a cross-site form (see admin::auth).
            req = req.set("X-Brokk-CSRF", "cli");
        }
        let answer = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match answer {
            Ok(r) => r.into_json().map_err(|e| ClientError::Api(e.to_string())),
            Err(ureq::Error::Status(code, r)) => {
                let v: Value = r.into_json().unwrap_or(Value::Null);
                let msg = v["error"].as_str().unwrap_or("no message").to_string();
                Err(ClientError::Api(format!("HTTP {code}: {msg}")))
            }
            Err(e) => Err(ClientError::Transport {
                url,
                message: e.to_string(),
            }),
        }
    }

    pub fn status(&self) -> Result<Value, ClientError> {
        self.call("GET", "/status", None)
    }

    /// ActiveMQ's `dstat`: one line per destination.
    pub fn dstat(&self) -> Result<String, ClientError> {
        let mut rows = self.call("GET", "/api/queues", None)?;
        let topics = self.call("GET", "/api/topics", None)?;
        if let (Some(q), Some(t)) = (rows.as_array_mut(), topics.as_array()) {
            q.extend(t.iter().cloned());
        }
        let mut out = format!(
            "{:<40} {:>12} {:>10} {:>12} {:>12} {:>10}\n",
            "Name", "Queue Size", "Consumers", "Enqueued", "Dequeued", "In flight"
        );
        for d in rows.as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let n = |k: &str| d[k].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<40} {:>12} {:>10} {:>12} {:>12} {:>10}",
                d["destination"].as_str().unwrap_or(""),
                n("pending"),
                n("consumers"),
                n("enqueued"),
                n("dequeued"),
                n("in_flight")
            );
        }
        Ok(out)
    }

    pub fn browse(&self, queue: &str, max: usize) -> Result<Value, ClientError> {
        self.call(
            "GET",
            &format!("/api/queues/{}/messages?max={max}", encode(queue)),
            None,
        )
    }

    pub fn purge(&self, queue: &str) -> Result<Value, ClientError> {
        self.call(
            "POST",
            &format!("/api/queues/{}/purge", encode(queue)),
            None,
        )
    }

    pub fn send(&self, request: Value) -> Result<Value, ClientError> {
        self.call("POST", "/api/send", Some(request))
    }
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
