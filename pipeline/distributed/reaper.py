"""Stopping what is left of a local Ray instance once the driver that started it has exited, however it died.

`watch(session_dir)` starts this module as a process of its own session that waits for the end of a pipe only
the driver holds. The pipe ends when the driver exits (even SIGKILLed) or, on a normal exit, while it is still
shutting down; so the watcher then waits for the driver's process to be gone before it kills every process of this
user that holds a file open in the instance's session folder: the Ray processes that outlived the driver. It
finds them through /proc, so elsewhere than Linux it stops nothing.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROUNDS = 10  # sweeps of /proc, half a second apart, while the instance's processes are still exiting
DRIVER_EXIT_S = 120.0  # the longest the watcher waits for a driver that closed the pipe to finish exiting
_WATCHERS: list = []  # the watchers' pipes: each closes, and its watcher acts, when this process exits


def watch(session_dir: str) -> None:
    _WATCHERS.append(
        subprocess.Popen(
            [sys.executable, "-m", "pipeline.distributed.reaper", os.path.realpath(session_dir), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the driver's terminal does not stop the watcher before it acts
        )
    )


def holders(session_dir: str) -> set[int]:
    """The processes with a file open under `session_dir` (another user's /proc/PID/fd cannot be read)."""
    prefix, me, found = os.path.join(session_dir, ""), os.getpid(), set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != me and any(os.readlink(fd).startswith(prefix) for fd in (entry / "fd").iterdir()):
                found.add(int(entry.name))
        except OSError:
            continue  # the process exited, or is not ours
    return found


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not yet exited (a zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def reap(session_dir: str, driver: int) -> None:
    deadline = time.monotonic() + DRIVER_EXIT_S
    while running(driver) and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(ROUNDS):
        pids = holders(session_dir) - {driver}
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        time.sleep(0.5)


if __name__ == "__main__":
    sys.stdin.buffer.read()  # returns at end of file: the driver has exited
    reap(sys.argv[1], int(sys.argv[2]))
