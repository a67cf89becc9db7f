"""Screenshot the Prefect UI's graph of a real flow run (the image in docs/, linked from the README).

    python docs/prefect_ui_snapshot.py <checkout> docs/prefect-flow-run.png [--only STAGE ...]

Starts a throwaway Prefect server with its UI on 127.0.0.1, runs ``flows.pipeline.pipeline`` on ``<checkout>``
(DVC decides what is stale), then opens the flow run's page in headless Chromium (``/usr/bin/chromium``; Debian
package ``chromium``) and saves the screenshot. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("png")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--size", default="1600,1000")
    args = parser.parse_args()

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import pipeline
    from skinflow.orchestration.local_server import local_prefect_server

    with tempfile.TemporaryDirectory() as home, local_prefect_server(home, ui=True) as url:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            state = pipeline(str(Path(args.checkout).resolve()), only=args.only, return_state=True)
        run_id = state.state_details.flow_run_id
        page = url.removesuffix("/api") + f"/runs/flow-run/{run_id}"
        print(f"flow run {run_id} ended {state.type.value}; {page}")
        subprocess.run([args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={args.size}", "--virtual-time-budget=20000",
                        f"--screenshot={Path(args.png).resolve()}", page], check=True, timeout=180)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
