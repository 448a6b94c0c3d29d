"""A real headless Chromium (Debian's `chromium`, installed by scripts/setup.sh), driven over the
DevTools protocol with websocket-client: open a page, wait for it, screenshot it, and list every
request it made. Shared by the viewer and report tests.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import websocket

# Software WebGL: CI has no GPU, and --disable-gpu alone turns WebGL off.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
         "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--remote-debugging-port=0"]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("chromium is not installed; run scripts/setup.sh (it apt-get installs Debian's chromium)")


class Chromium:
    """One browser with one page; use as a context manager."""

    def __init__(self, width: int = 640, height: int = 480, timeout: float = 30):
        self.width, self.height, self.timeout = width, height, timeout
        self.profile = Path(tempfile.mkdtemp(prefix="facesplat-chromium-"))
        # A file, not a pipe, for chromium's chatter: a full pipe would stall the browser.
        self.log = self.profile / "chromium.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([chromium_binary(), *FLAGS, f"--user-data-dir={self.profile}",
                                             f"--window-size={width},{height}", "about:blank"],
                                            stdout=log, stderr=subprocess.STDOUT)
        self.requests: list[str] = []  # every URL the page asked for (Network.requestWillBeSent)
        self.console: list[str] = []  # console messages and uncaught exceptions
        self._ids = itertools.count(1)
        self._socket = None
        try:
            self._socket = websocket.create_connection(self._page_socket_url(), timeout=timeout,
                                                       suppress_origin=True)
            for domain in ("Page", "Runtime", "Network", "Log"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def _page_socket_url(self) -> str:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.process.returncode}): "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as response:
                pages = [t for t in json.load(response) if t["type"] == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            if time.monotonic() > deadline:
                raise TimeoutError("chromium opened no page")
            time.sleep(0.05)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            self.console.append("exception: " + json.dumps(params["exceptionDetails"])[:2000])
        elif method == "Log.entryAdded":
            self.console.append(f"{params['entry']['level']}: {params['entry']['text']}")

    def send(self, method: str, params: dict | None = None) -> dict:
        ident = next(self._ids)
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self._event(message)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, ready: str = "document.readyState === 'complete'", failed: str = "null",
             timeout: float = 60) -> None:
        """Navigate and wait until the JavaScript `ready` is true; `failed` names an error, if any."""
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while not self.evaluate(ready):
            error = self.evaluate(failed)
            if error:
                raise RuntimeError(f"{url} failed: {error}; console: {self.console[-10:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout} s; console: {self.console[-10:]}")
            time.sleep(0.2)

    def screenshot(self) -> np.ndarray:
        """The page as an RGB uint8 array [height, width, 3]."""
        png = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        try:
            if self._socket is not None:
                self._socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
