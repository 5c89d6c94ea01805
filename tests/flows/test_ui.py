"""The Prefect UI, rendered by headless Debian chromium, shows the deployed pipeline's flow run."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
# Flags from docs/notes-stack: offline, no sandbox (containers), and a virtual time budget, without
# which the run list never renders.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=10000",
         "--window-size=1400,1600"]


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="cku-chromium-")
    try:
        return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                                                  "(apt-get install -y chromium; CI installs it)")
def test_ui_shows_the_flow_run(prefect_server, deployed_pipeline_run, test_artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    run = deployed_pipeline_run
    pages = {"runs": f"{prefect_server.url}/runs",
             "flow-run": f"{prefect_server.url}/runs/flow-run/{run.flow_run_id}"}
    # The run list shows the newest runs first, and later tests on this session's server add runs:
    # the list page must show the newest ones, the flow-run page this run. A loaded machine can
    # need more than one render, so each page gets a few tries.
    newest = [r["name"] for sort in ("START_TIME_DESC", "EXPECTED_START_TIME_DESC")
              for r in prefect_server.request("POST", "/flow_runs/filter", {"sort": sort, "limit": 3})]
    expected = {"runs": [*newest, run.name], "flow-run": [run.name]}
    for page, url in pages.items():
        for _ in range(3):
            dom = chromium("--dump-dom", url).stdout
            if any(name in dom for name in expected[page]):
                break
        (test_artifacts_dir / f"prefect-ui-{page}.html").write_text(dom)
        assert any(name in dom for name in expected[page]), \
            f"none of {expected[page]} in the rendered {url} (see {test_artifacts_dir})"
    for page, url in pages.items():  # kept for humans: what the UI showed
        shot = test_artifacts_dir / f"prefect-ui-{page}.png"
        shot.unlink(missing_ok=True)
        chromium(f"--screenshot={shot}", url)
        assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {url}"
