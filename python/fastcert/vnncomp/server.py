"""The warm VNN-COMP server (``fastcert vnncomp --server`` / ``fastcert serve``): one JSON request line
per connection on a Unix socket, every loaded network kept."""

from __future__ import annotations

import math
import os
from typing import Any

from fastcert.vnncomp.instance import (
    load_instance,
    load_network,
    resolve_path,
    result_record,
    write_result,
)
from fastcert.vnncomp.pipeline import solve_instance

__all__ = ["handle_request", "serve"]


def handle_request(req: dict[str, Any], cache: dict[tuple, tuple]) -> dict[str, Any]:
    """Serve one request ``{"onnx", "vnnlib", "timeout", "out"?, "seed"?, "use_mip"?}`` (absolute paths):
    solve, write ``out`` if given, return :func:`result_record`; ``{"error", "kind"}`` on failure
    (kind "usage" for a bad request or path, "internal" otherwise)."""
    try:
        onnx, vnn = str(req["onnx"]), str(req["vnnlib"])
        timeout = float(req.get("timeout", 60.0))
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite number > 0, got {timeout}")
        inst = load_instance(onnx, vnn, cache=cache)
    except (KeyError, TypeError, ValueError, FileNotFoundError) as exc:
        return {"error": str(exc) if not isinstance(exc, KeyError) else f"missing field {exc}", "kind": "usage"}
    try:
        res = solve_instance(inst, timeout, seed=int(req.get("seed", 0)), use_mip=bool(req.get("use_mip", True)))
        out = req.get("out")
        if out:
            write_result(out, res)
        return result_record(inst, res, timeout, out)
    except Exception as exc:  # noqa: BLE001 - the server keeps running; the client reports the error
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0], "kind": "internal"}


def _bind(path: str, idle_timeout: float | None) -> Any:
    """A listening Unix socket at ``path`` (a stale socket file is removed; a live server is an error)."""
    import socket

    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            raise RuntimeError(f"a server is already listening on {path}; stop it with "
                               f"'fastcert serve --socket {path} --stop'")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # a stale socket file
        finally:
            probe.close()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    srv.settimeout(idle_timeout)
    return srv


def _answer(conn: Any, cache: dict[tuple, tuple]) -> bool:
    """Read one request line from ``conn`` and send the reply; True for a shutdown request."""
    import json

    conn.settimeout(None)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    try:
        req = json.loads(data.decode() or "null")
        if not isinstance(req, dict):
            raise TypeError("expected a JSON object")
    except (TypeError, ValueError) as exc:
        reply: dict[str, Any] = {"error": f"bad request: {exc}", "kind": "usage"}
    else:
        cmd = req.get("cmd", "solve")
        if cmd == "shutdown":
            conn.sendall(b'{"ok": true}\n')
            return True
        reply = {"ok": True, "pid": os.getpid()} if cmd == "ping" else handle_request(req, cache)
    try:
        conn.sendall((json.dumps(reply) + "\n").encode())
    except OSError:
        pass  # the client went away (its own timeout); keep serving
    return False


def serve(socket_path: str | os.PathLike[str], *, idle_timeout: float | None = None,
          preload: tuple[str, ...] = (), log: Any = None) -> int:
    """A warm process for ``fastcert vnncomp --server SOCKET``: listen on a Unix socket, answer one JSON
    request line per connection with one JSON line, keep every loaded network. Stops on a
    ``{"cmd": "shutdown"}`` request, after ``idle_timeout`` seconds without requests, or on SIGTERM /
    Ctrl-C; the socket file is removed. ``preload``: ONNX files to load before listening."""
    import signal
    import sys
    import threading

    log = log if log is not None else sys.stderr
    cache: dict[tuple, tuple] = {}
    from fastcert import mip  # noqa: F401  (warm every import a request may need)

    for p in preload:
        rp = resolve_path(p)
        st = rp.stat()
        cache[(rp.resolve(), st.st_mtime_ns, st.st_size)] = load_network(rp)
    path = os.fspath(socket_path)
    srv = _bind(path, idle_timeout)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()  # signals: main thread only
    prev = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    print(f"fastcert serve: listening on {path} ({len(cache)} networks preloaded)", file=log, flush=True)
    try:
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                print(f"fastcert serve: idle for {idle_timeout:g} s, stopping", file=log)
                return 0
            with conn:
                if _answer(conn, cache):
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, prev)
        srv.close()
        if os.path.exists(path):
            os.unlink(path)
