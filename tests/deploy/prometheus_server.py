"""A real Prometheus server for a test: started from the Debian binary with a
configuration the test writes, its storage in a temporary folder, on a free
loopback port; queried through its HTTP API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from crm_runtime.stack import free_port


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.config_path = directory / "prometheus.yml"
        self.log_path = directory / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, config: dict[str, Any], timeout: float = 30.0) -> None:
        """Write ``config``, start the server on :attr:`address` and wait until
        it is ready (configuration and rule files loaded)."""
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [self.binary, f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address={self.address}", "--log.level=info"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._process.returncode}:\n"
                                      f"{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self._process = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def api(self, path: str, **params: str | float) -> Any:
        """GET ``/api/v1/<path>``; returns ``data`` or raises with the error."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:  # 400/422: a bad query, with the reason
            body = json.load(err)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result: the samples of a vector (a scalar or a
        string as one sample)."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        if data["resultType"] in ("vector", "matrix"):
            result: list[dict[str, Any]] = data["result"]
            return result
        return [{"metric": {}, "value": data["result"]}]
