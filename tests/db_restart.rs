//! The database restarted under load (its own test binary: the restart
//! would disturb the other database tests, which run in parallel within
//! theirs). The master loses its connections and stops; the standby waits
//! out the outage, takes over once the database is back, and nothing
//! receipted is lost.

mod common;

use std::process::Command;

use common::db::{assert_all_present, drain, is_standby, Engine, Node, Producer, TestDb};

fn services(action: &str, service: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ops/services.sh");
    let ok = Command::new(script)
        .args([action, service])
        .status()
        .expect("ops/services.sh runs")
        .success();
    assert!(ok, "ops/services.sh {action} {service} failed");
}

fn restart_under_load(engine: Engine, service: &str) {
    let db = TestDb::new(engine);
    let dir = tempfile::tempdir().unwrap();
    let nodes = [Node::new(), Node::new()];
    let mut a = nodes[0].start(&db, dir.path());
    assert!(!is_standby(&a));
    let mut b = nodes[1].start(&db, dir.path());
    assert!(is_standby(&b));
    let producer = Producer::start([nodes[0].addr(), nodes[1].addr()]);
    producer.wait_more(300);
    services("stop", service);
    services("start", service);
    // Service resumes: by the master, or (it stopped when its session ended)
    // by the standby, which then prints that it serves.
    producer.wait_more(300);
    let master = if a.child.try_wait().unwrap().is_some() {
        b.wait_for_master();
        &b
    } else {
        &a
    };
    let receipted = producer.finish();
    assert_all_present(&receipted, &drain(master));
    drop(db);
    let _ = (&mut a, &mut b);
}

#[test]
fn a_database_restart_under_load_loses_nothing() {
    // One after the other: each restarts its server.
    restart_under_load(Engine::MariaDb, "mariadb");
    restart_under_load(Engine::Postgres, "postgres");
}
