//! The Cluster page: this broker and every peer named in `admin.peers`,
//! each asked for its public `/status` (a standby answers it too).

use std::time::Duration;

use serde::Serialize;

use super::AdminState;

#[derive(Debug, Serialize)]
pub struct Member {
    pub url: String,
    pub this_broker: bool,
    pub reachable: bool,
    pub role: Option<String>,
    pub mode: Option<String>,
    pub version: Option<String>,
    pub uptime_secs: Option<u64>,
    pub connections: Option<u64>,
    pub error: Option<String>,
}

/// How long one peer may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn view(state: &AdminState) -> Vec<Member> {
    let mut members = vec![Member {
        url: "(this broker)".into(),
        this_broker: true,
        reachable: true,
        role: Some(state.role.get().as_str().into()),
        mode: Some(state.mode.clone()),
        version: Some(env!("CARGO_PKG_VERSION").into()),
        uptime_secs: Some(state.started.elapsed().as_secs()),
        connections: None,
        error: None,
    }];
    let asks: Vec<_> = state
        .console
        .peers
        .iter()
        .cloned()
        .map(|url| tokio::task::spawn_blocking(move || ask(url)))
        .collect();
    for a in asks {
        if let Ok(m) = a.await {
            members.push(m);
        }
    }
    members
}

/// A blocking HTTP GET (ureq), run on tokio's blocking pool.
fn ask(url: String) -> Member {
    let agent = ureq::AgentBuilder::new().timeout(PEER_TIMEOUT).build();
    let status = format!("{}/status", url.trim_end_matches('/'));
    let answer = agent
        .get(&status)
        .call()
        .map_err(|e| e.to_string())
        .and_then(|r| {
            r.into_json::<serde_json::Value>()
                .map_err(|e| e.to_string())
        });
    match answer {
        Ok(v) => Member {
            url,
            this_broker: false,
            reachable: true,
            role: v["role"].as_str().map(String::from),
            mode: v["mode"].as_str().map(String::from),
            version: v["version"].as_str().map(String::from),
            uptime_secs: v["uptime_secs"].as_u64(),
            connections: v["connections"].as_u64(),
            error: None,
        },
        Err(e) => Member {
            url,
            this_broker: false,
            reachable: false,
            role: None,
            mode: None,
            version: None,
            uptime_secs: None,
            connections: None,
            error: Some(e),
        },
    }
}
