"""Headless Chromium, driven over the DevTools protocol on a pipe (no network, no new library).

Chromium started with ``--remote-debugging-pipe`` reads protocol messages (JSON, each ended by a
NUL byte) on its file descriptor 3 and writes replies and events on its descriptor 4; nothing
listens on a port. :class:`Browser` opens one page, and :meth:`Browser.check` loads a file at a
given window width and reports what the report tests assert: where elements are, whether every
image loaded, whether anything overflows horizontally, what the console said; it also saves a
screenshot of the first screen.

:func:`find_chromium` says where the browser is, or why there is none (the tests skip with it).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LAUNCHER = (
    "import fcntl, os, sys\n"
    "high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]\n"
    "os.dup2(high[0], 3)\n"
    "os.dup2(high[1], 4)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HEIGHT = 900  # the first screen's height at every width

# What the page looks like once loaded: boxes of the elements asked for (viewport coordinates),
# every image, and the widest element that sticks out of the page (outside scrolling boxes).
PROBE = """
(ids => {
  const root = document.scrollingElement || document.documentElement;
  const box = id => {
    const e = document.getElementById(id);
    if (!e) return null;
    const r = e.getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, left: r.left, right: r.right};
  };
  const scrolls = e => {
    for (let p = e.parentElement; p; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden') return true;
    }
    return false;
  };
  const width = root.clientWidth;
  const outside = [];
  for (const e of document.body.querySelectorAll('*')) {
    const r = e.getBoundingClientRect();
    if (r.width > 0 && (r.right > width + 1 || r.left < -1) && !scrolls(e)) {
      outside.push(e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                   (e.className && typeof e.className === 'string' ? '.' + e.className : '') +
                   ' ' + Math.round(r.left) + '..' + Math.round(r.right));
    }
  }
  return {
    width: width,
    height: window.innerHeight,
    scrollWidth: root.scrollWidth,
    boxes: Object.fromEntries(ids.map(id => [id, box(id)])),
    images: [...document.images].map(i => ({
      src: i.currentSrc.slice(0, 80), complete: i.complete, width: i.naturalWidth})),
    outside: outside.slice(0, 10),
  };
})
"""


def find_chromium() -> tuple[str | None, str]:
    """(path of a Chromium binary, "") or (None, why there is none)."""
    for name in (os.environ.get("PPL_MODELS_CHROMIUM"), *CANDIDATES):
        if name and shutil.which(name):
            return shutil.which(name), ""
    return None, (
        "headless Chromium not found (looked for "
        + ", ".join(CANDIDATES)
        + "; on Debian: apt-get install chromium, or set PPL_MODELS_CHROMIUM)"
    )


@dataclass
class PageCheck:
    """What :meth:`Browser.check` saw of one page at one width."""

    url: str
    width: int
    height: int
    scroll_width: int
    boxes: dict
    images: list[dict]
    outside: list[str]
    console_errors: list[str]
    screenshot: Path
    problems: list[str] = field(default_factory=list)

    def within_first_screen(self, element_id: str) -> bool:
        """Whether the element is wholly inside the first ``width`` x ``height`` viewport."""
        b = self.boxes.get(element_id)
        return (
            bool(b)
            and b["top"] >= 0
            and b["bottom"] <= self.height
            and b["right"] <= (self.width + 1)
        )


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, binary: str, profile: Path | None = None, timeout: float = 60.0):
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        command = [
            binary,
            "--headless",
            "--no-sandbox",  # root in a container has no user namespaces for the sandbox
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile or self._profile.name}",
            "about:blank",
        ]
        # the browser reads the protocol on fd 3 and writes it on fd 4: a small launcher puts
        # the pipe's ends there (a POSIX shell's redirections stop at fd 9)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(to_chrome_r), str(from_chrome_w), *command],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)

    # ------------------------------------------------------------------ the protocol

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._events.put(None)
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        box = self._replies.setdefault(message["id"], queue.Queue())
                    box.put(message)
                else:
                    self._events.put(message)

    def send(self, method: str, session: bool = False, **params) -> dict:
        """Call ``method`` and return its result (raises ``RuntimeError`` with its error)."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            box = self._replies.setdefault(ident, queue.Queue())
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        try:
            reply = box.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"Chromium did not answer {method} in {self.timeout} s") from None
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def _drain(self, until: str | None = None, timeout: float = 0.0) -> list[dict]:
        """Events received so far; with ``until``, wait (at most ``timeout`` s) for that one."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = (
                    self._events.get(timeout=max(remaining, 0.0))
                    if until
                    else (self._events.get_nowait())
                )
            except queue.Empty:
                if until:
                    raise TimeoutError(f"no {until} within {timeout} s") from None
                return seen
            if event is None:
                raise RuntimeError("Chromium closed the pipe")
            seen.append(event)
            if until and event.get("method") == until:
                return seen

    # ------------------------------------------------------------------ checks

    def check(self, path: Path, width: int, screenshot: Path, ids=("badge", "next-steps")):
        """Load ``path`` in a ``width`` x :data:`HEIGHT` window and report what it shows."""
        self._drain()
        self.send(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=width,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=width < 600,
        )
        url = Path(path).resolve().as_uri()
        self.send("Page.navigate", session=True, url=url)
        events = self._drain(until="Page.loadEventFired", timeout=self.timeout)
        time.sleep(0.2)  # late console messages
        events += self._drain()
        result = self.send(
            "Runtime.evaluate",
            session=True,
            expression=f"({PROBE})({json.dumps(list(ids))})",
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"the probe failed: {result['exceptionDetails']}")
        seen = result["result"]["value"]
        shot = self.send("Page.captureScreenshot", session=True, format="png")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return PageCheck(
            url=url,
            width=seen["width"],
            height=seen["height"],
            scroll_width=seen["scrollWidth"],
            boxes=seen["boxes"],
            images=seen["images"],
            outside=seen["outside"],
            console_errors=_console_errors(events),
            screenshot=screenshot,
        )

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _console_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the page's events."""
    out = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
    return out
