//! The architecture map's boundaries (src/lib.rs), checked on the source so that they stay true:
//! only `rpc` and `daemon` know JSON-RPC and sockets, and every event name is spelled in one place.

use std::path::{Path, PathBuf};

use herdctld::fleet::{event_names, FleetEvent};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A file's code without its unit tests: test modules are last in a file by this project's convention,
/// and a module file named `tests.rs` is all test code.
fn non_test_code(path: &Path) -> String {
    if path.file_name().is_some_and(|name| name == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let code = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn only_rpc_and_daemon_know_json_rpc_and_sockets() {
    let root = src();
    let allowed = [root.join("rpc"), root.join("daemon"), root.join("bin")];
    let forbidden = [
        "jsonrpsee",
        "UnixListener",
        "UnixStream",
        "UnixDatagram",
        "TcpListener",
        "TcpStream",
        "std::os::unix::net",
    ];
    let mut offenders = Vec::new();
    for file in rust_files(&root) {
        if allowed.iter().any(|dir| file.starts_with(dir)) {
            continue;
        }
        let code = non_test_code(&file);
        for word in forbidden {
            if code.contains(word) {
                offenders.push(format!("{} uses {word}", file.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn every_event_name_is_spelled_once() {
    let sources: Vec<(PathBuf, String)> = rust_files(&src())
        .into_iter()
        .map(|file| {
            let code = non_test_code(&file);
            (file, code)
        })
        .collect();
    // Single words (`error`, `started`) are also log levels and states; the namespaced ones are only events.
    let names = FleetEvent::TYPE_NAMES
        .iter()
        .copied()
        .filter(|name| name.contains(':'))
        .chain([event_names::LAGGED, event_names::REPLAYED]);
    let mut problems = Vec::new();
    for name in names {
        let quoted = format!("\"{name}\"");
        let places: Vec<String> = sources
            .iter()
            .flat_map(|(file, code)| {
                code.matches(&quoted)
                    .map(move |_| file.display().to_string())
            })
            .collect();
        if places.len() != 1 {
            problems.push(format!("{quoted} is spelled in {places:?}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_boundary_check_sees_code_and_skips_tests() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.rs");
    std::fs::write(
        &file,
        "use jsonrpsee::x;\n// UnixStream in a comment\n#[cfg(test)]\nmod tests {\n    use std::net::TcpStream;\n}\n",
    )
    .unwrap();
    let code = non_test_code(&file);
    assert!(code.contains("jsonrpsee"));
    assert!(!code.contains("UnixStream") && !code.contains("TcpStream"));
}
