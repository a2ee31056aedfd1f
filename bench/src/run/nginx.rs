//! nginx and Nchan: the server blocks each scenario runs them with, the config around a block,
//! and starting them.

use super::env::Env;
use super::servers::Svc;
use crate::procs::{self, Procs};
use std::time::Duration;

impl Env {
    /// nginx in the foreground with its own prefix and config in the scratch directory.
    pub(super) fn start_nginx(
        &self,
        p: &mut Procs,
        server_block: &str,
        nchan: bool,
    ) -> Result<Svc, String> {
        self.start_nginx_on(p, server_block, nchan, 1, self.server_cpu.as_deref())
    }

    /// [`Self::start_nginx`] with `workers` worker processes pinned to `cpu` (`None`: free).
    pub(super) fn start_nginx_on(
        &self,
        p: &mut Procs,
        server_block: &str,
        nchan: bool,
        workers: usize,
        cpu: Option<&str>,
    ) -> Result<Svc, String> {
        let nginx = self.nginx.as_ref().ok_or("nginx is not installed")?;
        let addr = procs::free_addr()?;
        let name = self.name("nginx");
        let prefix = self.dir.join(&name);
        std::fs::create_dir_all(prefix.join("logs")).map_err(|e| e.to_string())?;
        let d = prefix.display();
        let load = match (nchan, &self.nchan_module) {
            (true, Some(m)) => format!("load_module {};", m.display()),
            (true, None) => return Err("the Nchan module is not installed".into()),
            _ => String::new(),
        };
        let user = if self.root { "user root;" } else { "" };
        let conf = format!(
            r#"{user}
worker_processes {workers};
worker_rlimit_nofile 20000;
error_log {d}/logs/error.log warn;
pid {d}/nginx.pid;
{load}
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp_body;
  proxy_temp_path {d}/tmp_proxy;
  fastcgi_temp_path {d}/tmp_fastcgi;
  uwsgi_temp_path {d}/tmp_uwsgi;
  scgi_temp_path {d}/tmp_scgi;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
{block}
}}
"#,
            block = server_block.replace("@LISTEN@", &addr)
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let mut cmd = procs::command(nginx, cpu);
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"]);
        let pid = p.spawn(&name, cmd)?;
        if !procs::wait_tcp(&addr, Duration::from_secs(20)) {
            return Err(format!(
                "nginx did not start on {addr}\n{}",
                p.log_tail(pid)
            ));
        }
        let mut worker = None;
        for _ in 0..100 {
            worker = procs::children_of(pid).into_iter().min();
            if worker.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Svc {
            addr,
            admin: None,
            pid,
            worker,
        })
    }
}

/// Scenario 1: `return 200` from memory with the body and the header set pollgate answers with.
pub(super) fn return_block(etag: &str, body: &[u8]) -> String {
    let body = String::from_utf8_lossy(body)
        .replace('\\', "\\\\")
        .replace('\'', "\\'");
    format!(
        r#"  server {{
    listen @LISTEN@;
    location / {{
      default_type application/json;
      add_header Cache-Control no-cache;
      add_header ETag '{etag}';
      add_header Age 0;
      return 200 '{body}';
    }}
  }}"#
    )
}

/// Scenario 3: Nchan's long-poll subscriber, its publisher and its stub status, by channel id.
pub(super) const NCHAN_BLOCK: &str = r#"  nchan_max_reserved_memory 256M;
  server {
    listen @LISTEN@;
    location ~ ^/pub/(.+)$ { nchan_publisher; nchan_channel_id $1; }
    location ~ ^/sub/(.+)$ { nchan_subscriber longpoll; nchan_channel_id $1; }
    location = /nchan_status { nchan_stub_status; }
  }"#;

/// Scenario 6: `proxy_pass` to the sample backend over a keepalive upstream.
pub(super) fn proxy_pass_block(backend: &str) -> String {
    r#"  upstream backend {
    server @BACKEND@;
    keepalive 64;
  }
  server {
    listen @LISTEN@;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }"#
    .replace("@BACKEND@", backend)
}

/// Scenario 5: WebSocket proxying as nginx documents it (`proxy_pass` over HTTP/1.1 with the
/// client's `Upgrade` passed on and `Connection: upgrade`), to the sample backend.
pub(super) fn websocket_block(backend: &str) -> String {
    r#"  server {
    listen @LISTEN@;
    location / {
      proxy_pass http://@BACKEND@;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }"#
    .replace("@BACKEND@", backend)
}
