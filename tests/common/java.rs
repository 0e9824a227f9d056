//! ActiveMQ's JMS client for the OpenWire tests: Debian's
//! libactivemq-java 5.17 and what it needs (ops/test.sh installs them),
//! and test programs under tests/openwire_java/ compiled with javac.

use std::path::Path;
use std::process::Command;

pub const JARS: [&str; 6] = [
    "/usr/share/java/activemq-client.jar",
    "/usr/share/java/geronimo-jms_1.1_spec.jar",
    "/usr/share/java/hawtbuf.jar",
    "/usr/share/java/slf4j-api.jar",
    "/usr/share/java/slf4j-nop.jar",
    // Without it the client fails with NoClassDefFoundError
    // javax/management/j2ee/statistics/Stats.
    "/usr/share/java/geronimo-j2ee-management-1.1-spec.jar",
];

/// Compiles tests/openwire_java/`source` into `classes`; the classpath to
/// run it with.
pub fn compile(source: &str, classes: &Path) -> String {
    for jar in JARS {
        assert!(
            Path::new(jar).exists(),
            "{jar} is missing: install libactivemq-java, libgeronimo-jms-1.1-spec-java, \
             libhawtbuf-java, libslf4j-java and libgeronimo-j2ee-management-1.1-spec-java \
             (ops/test.sh does)"
        );
    }
    std::fs::create_dir_all(classes).unwrap();
    let jars = JARS.join(":");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/openwire_java")
        .join(source);
    let out = Command::new("javac")
        .arg("-d")
        .arg(classes)
        .args(["-cp", &jars])
        .arg(&src)
        .output()
        .expect("javac runs (Java 17 is on the machine image)");
    assert!(
        out.status.success(),
        "javac {source} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{jars}:{}", classes.display())
}
