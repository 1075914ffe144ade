"""Open a page in headless Chromium and report what a person's browser would have shown.

A tiny Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (commands on fd 3,
replies and events on fd 4, each a JSON text ended by a NUL byte): no websocket, no extra
package, and the protocol events are exact where scraping ``--enable-logging`` output is not.
It records console errors, uncaught exceptions, log entries (e.g. a resource that failed to
load), requests that leave the machine, and JavaScript dialogs (an ``alert`` that escaping
should have prevented), then asks the page how many of its images loaded.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LOCAL_SCHEMES = ("file:", "data:", "about:", "chrome:", "devtools:")
IMAGES_JS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight})),
  scripts: document.scripts.length,
  title: document.title,
  text: document.body ? document.body.innerText.length : 0,
  width: document.documentElement.scrollWidth
})"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    console_errors: list[str] = field(default_factory=list)
    console_warnings: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    scripts: int = 0
    title: str = ""
    text_length: int = 0
    page_width: int = 0
    screenshot_png: bytes | None = None

    @property
    def problems(self) -> list[str]:
        return ([f"console error: {m}" for m in self.console_errors]
                + [f"uncaught exception: {m}" for m in self.exceptions]
                + [f"log error: {m}" for m in self.log_errors]
                + [f"request off the machine: {u}" for u in self.external_requests]
                + [f"javascript dialog: {m}" for m in self.dialogs])

    @property
    def loaded_images(self) -> list[dict]:
        return [i for i in self.images if i["complete"] and i["width"] > 0]


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int) -> None:
        self._write = os.fdopen(write_fd, "wb", buffering=0)
        self._read = os.fdopen(read_fd, "rb", buffering=0)
        self.messages: queue.Queue = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buffer = b""
        while True:
            chunk = self._read.read(65536)
            if not chunk:
                self.messages.put(None)
                return
            buffer += chunk
            while b"\0" in buffer:
                message, buffer = buffer.split(b"\0", 1)
                self.messages.put(json.loads(message))

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._write.write(json.dumps(message).encode() + b"\0")
        return self._next_id

    def close(self) -> None:
        for f in (self._write, self._read):
            try:
                f.close()
            except OSError:
                pass


class Browser:
    """One headless Chromium; ``inspect(path)`` loads a file in a fresh tab."""

    def __init__(self, executable: str, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._profile = tempfile.mkdtemp(prefix="attnbench-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # the child's ends, numbered 10 or above so that mapping them onto the fds the browser
        # expects (3: commands, 4: replies) never clobbers one with the other
        child_read, child_write = fd_above_9(to_browser_r), fd_above_9(from_browser_w)

        def map_fds():  # in the child, before exec; dup2 leaves 3 and 4 inheritable
            os.dup2(child_read, 3)
            os.dup2(child_write, 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-sync",
             "--disable-background-networking", "--disable-component-update",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,1000",
             f"--user-data-dir={self._profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=map_fds, close_fds=False)
        for fd in (to_browser_r, from_browser_w, child_read, child_write):
            os.close(fd)
        self.pipe = _Pipe(to_browser_w, from_browser_r)
        self._events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        wanted = self.pipe.send(method, params, session)
        deadline = time.monotonic() + self.timeout_s
        while True:
            message = self._next(deadline, f"reply to {method}")
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._events.append(message)

    def _next(self, deadline: float, waiting_for: str) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"chromium: no {waiting_for} within {self.timeout_s} s")
        try:
            message = self.pipe.messages.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError(f"chromium: no {waiting_for} within {self.timeout_s} s") from None
        if message is None:
            stderr = self.process.stderr.read().decode(errors="replace")[-2000:] \
                if self.process.poll() is not None else ""
            raise RuntimeError(f"chromium closed the pipe while waiting for {waiting_for}\n"
                               f"{stderr}")
        return message

    def inspect(self, path: str | Path, settle_s: float = 0.5,
                screenshot: bool = False) -> PageReport:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session=session)
        self._events.clear()
        report = PageReport()
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        deadline = time.monotonic() + self.timeout_s
        loaded_at = None
        pending = list(self._events)
        self._events.clear()
        while True:
            if pending:
                event = pending.pop(0)
            else:
                if loaded_at is not None and time.monotonic() - loaded_at > settle_s:
                    break
                try:
                    event = self._next(min(deadline, time.monotonic() + settle_s), "page load")
                except TimeoutError:
                    if loaded_at is None and time.monotonic() >= deadline:
                        raise
                    continue
            if event.get("sessionId") not in (None, session):
                continue
            loaded_at = self._record(event, report, session) or loaded_at
        state = json.loads(self.call("Runtime.evaluate", {"expression": IMAGES_JS,
                                                          "returnByValue": True},
                                     session=session)["result"]["value"])
        report.images, report.scripts = state["images"], state["scripts"]
        report.title, report.text_length = state["title"], state["text"]
        report.page_width = state["width"]
        if screenshot:
            data = self.call("Page.captureScreenshot",
                             {"format": "png", "captureBeyondViewport": True},
                             session=session)["data"]
            report.screenshot_png = base64.b64decode(data)
        self.call("Target.closeTarget", {"targetId": target})
        return report

    def _record(self, event: dict, report: PageReport, session: str) -> float | None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Page.loadEventFired":
            return time.monotonic()
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", "")))
                            for a in params.get("args", []))
            if params.get("type") in ("error", "assert"):
                report.console_errors.append(text)
            elif params.get("type") == "warning":
                report.console_warnings.append(text)
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            report.exceptions.append(exception.get("description") or details.get("text", "?"))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                report.log_errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith(LOCAL_SCHEMES):
                report.external_requests.append(url)
        elif method == "Page.javascriptDialogOpening":
            report.dialogs.append(f"{params.get('type')}: {params.get('message')}")
            self.pipe.send("Page.handleJavaScriptDialog", {"accept": True}, session)
        return None

    def close(self) -> None:
        try:
            self.pipe.send("Browser.close")
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            self.pipe.close()
            if self.process.stderr:
                self.process.stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)


def fd_above_9(fd: int) -> int:
    """A close-on-exec copy of fd numbered 10 or above."""
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)


INSTALL_SCRIPT = Path(__file__).with_name("install_chromium.sh")


def chromium_or_skip() -> str:
    """Chromium's executable for a browser test: installed first when CI runs as root, a
    failure in CI without it, a skip elsewhere."""
    import pytest

    from tests.report.conftest import in_ci

    executable = find_chromium()
    if executable is None and in_ci() and os.geteuid() == 0:
        subprocess.run(["bash", str(INSTALL_SCRIPT)], check=False, timeout=900)
        executable = find_chromium()
    if executable is None:
        message = f"chromium is not installed (run: bash {INSTALL_SCRIPT})"
        if in_ci():
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return executable
