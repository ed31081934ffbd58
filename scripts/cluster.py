"""`make cluster-up` / `cluster-down`: a real Kubernetes control plane on loopback, and its node agent.

    python -P scripts/cluster.py up [--dir DIR]     # prints the kubeconfig; leaves it running
    python -P scripts/cluster.py down [--dir DIR]
    python -P scripts/cluster.py node-agent ...     # the node agent itself (started by `up`)

The programs come from `make cluster-tools` (.tools/bin). See docs/testing.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Appended, not prepended: the checkout's `operator/` folder must not shadow the standard library.
sys.path.append(str(ROOT))

from tests.cluster import controlplane, nodeagent  # noqa: E402

DEFAULT_DIR = ROOT / ".mesial" / "cluster"


def main(argv: list[str]) -> int:
    if argv[:1] == ["node-agent"]:
        nodeagent.main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="cluster", description="A real control plane on loopback for the e2e tests.")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"data directory (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    state = args.dir / "state.json"
    if args.action == "down":
        stopped = controlplane.stop_recorded(state)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    if state.exists():
        print(f"a control plane is recorded in {state}: run `make cluster-down` first", file=sys.stderr)
        return 1
    try:
        plane = controlplane.ControlPlane(args.dir, tied_to_parent=False)
        info = plane.start()
    except controlplane.ControlPlaneError as exc:
        print(f"cluster-up: {exc}", file=sys.stderr)
        return 1
    info.save(state)
    print(f"API server: {info.server}")
    print(f"export KUBECONFIG={info.kubeconfig}")
    print(f"node agent pods and logs: {info.pods_dir}; process logs: {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
