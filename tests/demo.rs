//! `pollgate demo` start-up: a busy port is named with the flag that moves it, at once.

mod common;

use common::BIN;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the demo with the given flags and waits for it to exit. pingora alone would retry a busy
/// port for 30 s and then keep running without that listener, so an exit within the deadline is
/// part of what is tested.
fn demo_exit(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("demo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "demo {args:?} still running after 15 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn busy() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

#[test]
fn each_busy_port_is_named_with_its_flag() {
    for flag in ["--listen", "--metrics-listen", "--backend-listen"] {
        let (_held, taken) = busy();
        // The other two on port 0, free by construction (the backend's too: nothing connects to
        // it before the demo has exited).
        let mut args = Vec::new();
        for f in ["--listen", "--metrics-listen", "--backend-listen"] {
            args.push(f);
            args.push(if f == flag {
                taken.as_str()
            } else {
                "127.0.0.1:0"
            });
        }
        let out = demo_exit(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains(&taken))
            .unwrap_or_else(|| panic!("{flag}: no line names {taken}:\n{err}"));
        assert!(
            line.starts_with(&format!("pollgate demo: cannot listen on {taken} for "))
                && line.contains(&format!("({flag})"))
                && line.contains("in use"),
            "{flag}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{flag}: one line expected:\n{err}");
    }
}

#[test]
fn every_busy_port_is_named_in_one_run() {
    let (_a, gateway) = busy();
    let (_b, admin) = busy();
    let (_c, backend) = busy();
    let out = demo_exit(&[
        "--listen",
        &gateway,
        "--metrics-listen",
        &admin,
        "--backend-listen",
        &backend,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for (addr, flag) in [
        (&gateway, "--listen"),
        (&admin, "--metrics-listen"),
        (&backend, "--backend-listen"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(addr.as_str()) && l.contains(&format!("({flag})"))),
            "{flag} {addr} not named:\n{err}"
        );
    }
}

#[test]
fn a_bad_or_shared_address_is_refused_before_anything_starts() {
    let out = demo_exit(&["--listen", "nowhere"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--listen nowhere: not an ip:port address"),
        "{err}"
    );

    // Refused before anything binds, so the port need not be free.
    let out = demo_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:1",
        "--backend-listen",
        "127.0.0.1:1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--metrics-listen and --backend-listen are both 127.0.0.1:1"),
        "{err}"
    );
}

/// The demo's "before pollgate" backend answers HTTP/1.0 as RFC 9112 §9.3 says, so ApacheBench
/// and other HTTP/1.0 clients that read to the close can measure it directly too.
#[test]
fn the_sample_backend_closes_after_an_http10_answer_unless_asked_to_keep_alive() {
    use std::io::{Read, Write};
    let (mut child, addr) = common::spawn_sample_backend(&["--topics", "btc"]);
    let exchange = |request: &str| -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        // Read to the close: a timeout here is the hang ApacheBench used to meet.
        let r = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(
            r.is_ok(),
            "no close after the answer ({r:?}); received:\n{text}"
        );
        text
    };
    let plain = exchange("GET /stats HTTP/1.0\r\n\r\n");
    assert!(
        plain.starts_with("HTTP/1.1 200") && plain.contains("connection: close\r\n"),
        "{plain}"
    );
    let closing = exchange("GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(closing.starts_with("HTTP/1.1 200"), "{closing}");
    // HTTP/1.0 with keep-alive: a second request on the same connection is answered too.
    let two = exchange(
        "GET /stats HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /stats HTTP/1.0\r\n\r\n",
    );
    assert_eq!(two.matches("HTTP/1.1 200 OK").count(), 2, "{two}");
    assert!(two.contains("connection: keep-alive\r\n"), "{two}");
    child.kill().unwrap();
    let _ = child.wait();
}
