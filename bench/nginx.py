"""nginx as the reference proxy of ``make bench``: Debian's package, its config made here.

The gateway's data plane is judged against what a C reverse proxy costs on the
same machine, in the same run (issue 20), so the ratio is measured, not
remembered. The config is the one a careful operator would write for an SSE
upstream: ``proxy_buffering off`` (each chunk forwarded as it arrives),
HTTP/1.1 to the upstream with a pool of idle keep-alive connections (no
connect per request), no access log (the gateway's own request log is on in
the bench, which only makes the comparison harder for the gateway), one
worker process, like the gateway's one uvicorn worker.

Everything lives in a temporary directory the caller owns (config, pid file, error log, temp
paths), so nothing of the system's nginx (``/etc/nginx``, port 80) is touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from deploy.local.harness import Stack
from deploy.local.procs import Proc, free_port, http_ok

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
{user}pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    upstream backend {{
        server {upstream};
        keepalive 256;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def binary() -> str:
    """Debian's nginx (``deploy/local/system-packages.sh bench`` installs it)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("nginx is not installed: deploy/local/system-packages.sh bench")
    return found


def config(upstream: str, port: int, tmp: Path) -> str:
    """The config for ``upstream`` (``host:port``) served on ``127.0.0.1:port``.

    As root the worker would switch to nginx's default user, which cannot
    enter a private temporary directory; it stays root instead (loopback only).
    """
    user = "user root;\n" if os.geteuid() == 0 else ""
    return CONFIG.format(user=user, tmp=tmp, upstream=upstream, port=port)


def start(
    stack: Stack, upstream_url: str, tmp: Path, ready_path: str = "/health"
) -> tuple[Proc, str]:
    """nginx in front of ``upstream_url`` (``http://host:port``), in ``stack``, its files
    in ``tmp`` (the caller removes it after the stack stopped): (the master process,
    whose children are its worker; the proxy's URL)."""
    os.chmod(tmp, 0o755)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(config(upstream_url.removeprefix("http://"), port, tmp))
    argv = [binary(), "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    proc = Proc("nginx", argv, log_dir=stack.log_dir)
    url = f"http://127.0.0.1:{port}"
    stack.start(proc, lambda: http_ok(url + ready_path), timeout=10.0)
    return proc, url
