"""The pod's images for the tests that run them: ``scripts/build-images.sh`` with no registry."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_images(archives: Path) -> list[tuple[str, str, str]]:
    """Build the images from Debian's packages and this project's files (buildah's storage: vfs unless
    STORAGE_DRIVER says otherwise), written as OCI archives ``archives/<name>.tar``; what the script printed:
    ``(name, reference, digest)`` per image."""
    built = subprocess.run(
        ["bash", "scripts/build-images.sh", "--local-base", "--host-certs", "--pause",
         "--oci-dir", str(archives)],
        cwd=REPO, env={**os.environ, "STORAGE_DRIVER": os.environ.get("STORAGE_DRIVER", "vfs")},
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-4000:]
    return [
        (name, reference, digest) for name, reference, digest in map(str.split, built.stdout.splitlines())
    ]
