"""Helpers of the interception tests: a handler that redirects ``open`` of one path to
another file, the files it uses, a static Go program's source, and a script that runs the
engine in a separate process. (A module of its own: test modules import it by name.)"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mirrord_core.interception import DEFERRED, InjectFd, Notification

SOURCE_TEXT = "the original file\n"
TARGET_TEXT = "the file the supervisor opened instead\n"
OPEN_SYSCALLS = frozenset({"open", "openat", "openat2"})
BUSYBOX = "/usr/bin/busybox"


def open_arguments(notification: Notification) -> tuple[bytes, int]:
    """``(path, flags)`` of a trapped open/openat/openat2."""
    args = notification.args
    if notification.syscall == "open":
        return notification.read_string(args[0]), args[1]
    path = notification.read_string(args[1])
    if notification.syscall == "openat2":
        flags = int.from_bytes(notification.read_memory(args[2], 8), sys.byteorder)
        return path, flags
    return path, args[2]


@dataclass
class RedirectOpen:
    """Opens ``target`` in the supervisor whenever the tracee opens ``source``, and
    injects the fd; every other open continues. With ``delay`` the answer comes from
    another thread after that many seconds."""

    source: Path
    target: Path
    delay: float | None = None
    syscalls: frozenset[str] = OPEN_SYSCALLS
    redirected: list[int] = field(default_factory=list)
    paths: list[bytes] = field(default_factory=list)

    def handle(self, notification: Notification) -> object:
        path, flags = open_arguments(notification)
        self.paths.append(path)
        if path != os.fsencode(self.source):
            return None
        self.redirected.append(notification.pid)
        answer = InjectFd(os.open(self.target, os.O_RDONLY), cloexec=bool(flags & os.O_CLOEXEC))
        if self.delay is None:
            return answer

        def later() -> None:
            time.sleep(self.delay or 0)
            answer.deliver(notification)

        threading.Thread(target=later, daemon=True).start()
        return DEFERRED


@dataclass
class Files:
    source: Path
    target: Path

    def redirect(self, **kwargs: object) -> RedirectOpen:
        return RedirectOpen(self.source, self.target, **kwargs)  # type: ignore[arg-type]


GO_PROGRAM = """\
package main

// Prints the files (or http:// URLs) named on the command line while eight goroutines
// spin, so that the runtime keeps preempting them with signals (SIGURG) during the
// trapped syscalls.

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	runtime.GOMAXPROCS(4)
	var stop atomic.Bool
	var spins atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				spins.Add(1)
			}
		}()
	}
	time.Sleep(30 * time.Millisecond)
	status := 0
	for _, path := range os.Args[1:] {
		var data []byte
		var err error
		if strings.HasPrefix(path, "http://") {
			var response *http.Response
			response, err = http.Get(path)
			if err == nil {
				data, err = io.ReadAll(response.Body)
				response.Body.Close()
			}
		} else {
			data, err = os.ReadFile(path)
		}
		if err != nil {
			fmt.Println("error:", err)
			status = 2
			continue
		}
		fmt.Print(string(data))
	}
	stop.Store(true)
	wg.Wait()
	os.Exit(status)
}
"""


def has_interpreter(path: Path) -> bool:
    """Whether an ELF64 file asks for a dynamic loader (has a PT_INTERP header)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path} is not an ELF64 file"
    order = "little" if data[5] == 1 else "big"
    phoff = int.from_bytes(data[32:40], order)
    phentsize = int.from_bytes(data[54:56], order)
    phnum = int.from_bytes(data[56:58], order)
    pt_interp = 3
    return any(
        int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], order) == pt_interp
        for i in range(phnum)
    )


RUNNER = f"""\
import sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from interception_helpers import RedirectOpen
from mirrord_core.interception import run_intercepted
args = sys.argv[1:]
handlers = []
if args[0] == "--redirect":
    handlers.append(RedirectOpen(Path(args[1]), Path(args[2])))
    args = args[3:]
sys.exit(run_intercepted(args, handlers=handlers))
"""
