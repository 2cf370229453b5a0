"""`hivemind-site demo` (what `make demo` runs), as a new user runs it: the real processes, until the
leaderboard credits alice, bob and carol and the charts have points; then Ctrl-C (SIGINT to the whole
process group, as a terminal sends it) or SIGTERM to the demo alone stops every process it started
(before, a `kill` of the demo left its site and peers running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from site_helpers import demo_port_pair


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _credited(base_url: str) -> dict[str, int]:
    try:
        response = httpx.get(f"{base_url}/api/v1/runs/demo/leaderboard", timeout=10)
    except httpx.HTTPError:
        return {}
    if response.status_code != 200:
        return {}
    return {row["name"]: row["samples"] for row in response.json()["items"]}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_demo_trains_with_three_credited_volunteers_and_stops_cleanly(tmp_path, stop):
    port = demo_port_pair()
    base_url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("HIVEMIND_")}
    env.pop("DATABASE_URL", None)
    log_path = tmp_path / "demo.out"
    with open(log_path, "wb") as log:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backend.cli",
                "demo",
                "--workdir",
                str(tmp_path / "demo"),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # the demo and everything it starts share one process group
        )
    try:
        deadline = time.monotonic() + 200
        credited: dict[str, int] = {}
        while time.monotonic() < deadline and demo.poll() is None:
            credited = _credited(base_url)
            if all(credited.get(name, 0) > 0 for name in ("alice", "bob", "carol")):
                break
            time.sleep(2)
        output = log_path.read_text()
        assert demo.poll() is None, f"the demo exited early:\n{output}"
        assert f"open {base_url}/runs/demo" in output
        assert all(credited.get(name, 0) > 0 for name in ("alice", "bob", "carol")), (credited, output)

        points = httpx.get(f"{base_url}/api/v1/runs/demo/metrics", timeout=10).json()["points"]
        assert any(point["peers"] >= 1 and point["loss"] is not None for point in points)
        page = httpx.get(f"{base_url}/runs/demo", timeout=10)
        assert page.status_code == 200 and "alice" in page.text

        if stop == "ctrl-c":
            os.killpg(demo.pid, signal.SIGINT)  # every process of the group, as a terminal does
        else:
            demo.send_signal(signal.SIGTERM)  # to the demo alone, as `kill PID` does
        assert demo.wait(timeout=90) == 0, log_path.read_text()
        deadline = time.monotonic() + 30
        while _group_members(demo.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group_members(demo.pid), "processes the demo started outlived it"
        assert "stopping the demo" in log_path.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
        try:
            os.killpg(demo.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
