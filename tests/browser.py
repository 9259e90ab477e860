"""A minimal headless-Chromium driver for tests, on the standard library only.

Chromium is started with ``--remote-debugging-pipe``: it reads DevTools-protocol (CDP) commands
on its fd 3 and writes responses and events on its fd 4, each message one JSON object
terminated by a NUL byte. :class:`Browser` spawns it (fds 3 and 4 mapped onto two pipes of
ours), speaks CDP over them and kills it (its whole process group) on close; :meth:`Browser.open`
loads one URL in a new tab attached in flat mode (``sessionId`` on every message) and returns a
:class:`Page`, which collects what a page reports as an error while it runs: console
``error``/``assert`` calls (``Runtime.consoleAPICalled``), uncaught exceptions
(``Runtime.exceptionThrown``) and error log entries (``Log.entryAdded``, e.g. a resource that
failed to load). Every read waits at most until the browser's deadline (``timeout`` seconds
after start), then raises :class:`CDPError` with the tail of Chromium's own log.

    exe = find_chromium()
    with Browser(exe, tmp_path) as browser:
        page = browser.open(Path("report.html").resolve().as_uri())
        assert page.errors == []
        assert page.evaluate("document.title") == "..."
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
"""The names looked for on PATH, in order."""

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--remote-debugging-pipe")


def find_chromium() -> str | None:
    """The first of :data:`CANDIDATES` on PATH, or None."""
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class CDPError(RuntimeError):
    """A CDP command failed, the browser exited, or a read timed out."""


class Page:
    """A tab attached in flat mode: :meth:`evaluate` runs JavaScript in it; :attr:`errors`
    lists what it reported as an error so far (console errors and failed asserts, uncaught
    exceptions, error log entries), one line each."""

    def __init__(self, browser: Browser, session_id: str):
        self.browser = browser
        self.session_id = session_id
        self.errors: list[str] = []

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a command to this tab and return its result."""
        return self.browser.send(method, params, session_id=self.session_id)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (returned by value: JSON-serializable)."""
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {_exception_text(result['exceptionDetails'])}")
        return result["result"].get("value")

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        """Record an event of this tab that reports an error."""
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in
                            params.get("args", []))
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            self.errors.append(f"exception: {_exception_text(params['exceptionDetails'])}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log ({entry.get('source')}): {entry.get('text')} "
                               f"{entry.get('url', '')}".rstrip())


def _exception_text(details: dict[str, Any]) -> str:
    exception = details.get("exception") or {}
    return f"{details.get('text', '')} {exception.get('description', '')}".strip()


class Browser:
    """Headless Chromium on a DevTools pipe, with a fresh profile under ``work_dir`` (its log:
    ``work_dir/chromium.log``); every read gives up ``timeout`` seconds after the start.
    Use as a context manager, or call :meth:`close` (which kills the browser) in a finally."""

    def __init__(self, executable: str, work_dir: str | Path, timeout: float = 60.0):
        self.deadline = time.monotonic() + timeout
        self.log = Path(work_dir, "chromium.log")
        profile = Path(work_dir, "chromium-profile")
        profile.mkdir(parents=True, exist_ok=True)
        # ours: write commands to `commands`, read replies from `replies`; the browser's ends
        # become its fds 3 and 4 (moved above 9 first so that mapping them cannot clobber one)
        cmd_r, self.commands = (_high(fd) for fd in os.pipe())
        self.replies, reply_w = (_high(fd) for fd in os.pipe())
        argv = [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, str(self.log), os.O_WRONLY | os.O_CREAT, 0o644),
                   (os.POSIX_SPAWN_DUP2, 1, 2),
                   (os.POSIX_SPAWN_DUP2, cmd_r, 3),
                   (os.POSIX_SPAWN_DUP2, reply_w, 4)]
        self.pid: int | None = None
        try:
            # its own session (process group): close() kills the browser and its children
            self.pid = os.posix_spawn(executable, argv, os.environ, file_actions=actions,
                                      setsid=True)
        except OSError:
            os.close(self.commands)
            os.close(self.replies)
            raise
        finally:
            os.close(cmd_r)
            os.close(reply_w)
        self.buffer = b""
        self.next_id = 0
        self.pages: dict[str, Page] = {}

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ protocol

    def send(self, method: str, params: dict[str, Any] | None = None,
             session_id: str | None = None) -> dict[str, Any]:
        """Send a command and return its result, handling the events that come first."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        try:
            os.write(self.commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise CDPError(f"{method}: the browser is gone{self._log_tail()}") from None
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_event(self, method: str, session_id: str | None = None) -> dict[str, Any]:
        """The params of the next event ``method`` (of that session), handling the others."""
        while True:
            message = self._read()
            if message.get("method") == method and message.get("sessionId") == session_id:
                return message.get("params", {})

    def _read(self) -> dict[str, Any]:
        """The next message; events of an open page go to its :meth:`Page.on_event` too."""
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.replies], [], [], left)[0]:
                raise CDPError(f"no reply from the browser in time{self._log_tail()}")
            chunk = os.read(self.replies, 1 << 16)
            if not chunk:
                raise CDPError(f"the browser closed its pipe{self._log_tail()}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        page = self.pages.get(message.get("sessionId", ""))
        if page is not None and "method" in message:
            page.on_event(message["method"], message.get("params", {}))
        return message

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            return "; chromium.log ends:\n" + self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ pages

    def open(self, url: str) -> Page:
        """A new tab with console, exceptions and log reported, navigated to ``url`` and
        loaded (its ``load`` event fired)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target,
                                                      "flatten": True})["sessionId"]
        page = self.pages[session] = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        navigated = page.send("Page.navigate", {"url": url})
        if navigated.get("errorText"):
            raise CDPError(f"navigating to {url}: {navigated['errorText']}")
        self.wait_event("Page.loadEventFired", session)
        return page

    def close(self) -> None:
        """Kill the browser (its process group), reap it and close our pipe ends."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        self.pid = None
        os.close(self.commands)
        os.close(self.replies)


def _high(fd: int) -> int:
    """``fd`` moved to a number above 9 (close-on-exec), the original closed."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved
