"""`make demo`: Mesial's whole flow on embedded defaults, through the real API, step by step.

No cluster: OpenBao (the Vault API) and SeaweedFS (S3) run locally on free ports, the
database is SQLite, and the API (`mesial api serve`, a real HTTP server) runs jobs with
its local executor, which starts the same `mesial job run` a Kubernetes Job would.
Everything lives in a scratch directory removed at the end; the results a person wants
to open (report, pictures, the audit export) are copied into ./demo-out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mesial.aligner.io import read_mesh
from mesial.aligner.registration import relative_error
from mesial.aligner.samples import generate_case, write_case
from mesial.common.services import ServiceStack, free_port
from mesial.common.settings import VaultSettings
from mesial.common.vault import TenantKeys

ORG = "demo-lab"
OUT = Path("demo-out")
MESIAL = str(Path(sys.executable).parent / "mesial")
console = Console(highlight=False, width=120)
T = TypeVar("T")
_step = 0


def step(title: str, action: Callable[[], T]) -> T:
    global _step
    _step += 1
    started = time.perf_counter()
    with console.status(f"[{_step:>2}] {title}…"):
        result = action()
    console.print(f"[green]✓[/green] [{_step:>2}] {title} [dim]({time.perf_counter() - started:.1f} s)[/dim]")
    return result


def note(text: str) -> None:
    console.print(f"       {text}")


def mesial(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([MESIAL, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"demo failed: mesial {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextmanager
def api_server(env: dict[str, str], port: int, log: Path) -> Iterator[httpx.Client]:
    """`mesial api serve` in its own process, ready when /readyz (database, Vault, store) says so."""
    with log.open("wb") as out:
        server = subprocess.Popen([MESIAL, "api", "serve", "--port", str(port)], env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("demo failed: the API did not become ready:\n" + log.read_text()[-2000:])
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=60) as client:
            yield client
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def call(client: httpx.Client, method: str, path: str, key: str | None, expect: int, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))
    response = client.request(method, path, headers=headers, **kwargs)
    if response.status_code != expect:
        raise SystemExit(f"demo failed: {method} {path} answered {response.status_code}: {response.text[:300]}")
    return response


def upload_case(client: httpx.Client, key: str, files: dict[str, Path]) -> dict[str, str]:
    table = Table(title="Scans uploaded (encrypted with the tenant's key as they stream)", title_justify="left")
    for column in ("kind", "scan id", "bytes", "sha256"):
        table.add_column(column)
    ids: dict[str, str] = {}
    for role in ("upper", "lower", "bite", "bite2"):
        if role not in files:
            continue
        kind = "bite" if role.startswith("bite") else role
        scan = call(
            client, "POST", "/v1/scans", key, 201,
            params={"kind": kind}, content=files[role].read_bytes(),
            headers={"content-type": "application/octet-stream"},
        ).json()  # fmt: skip
        ids[role] = scan["id"]
        table.add_row(
            kind,
            scan["id"],
            f"{scan.get('size', files[role].stat().st_size):,}",
            str(scan.get("sha256", ""))[:16] + "…",
        )
    console.print(table)
    return ids


def run_job(client: httpx.Client, key: str, ids: dict[str, str]) -> dict[str, Any]:
    bites = [ids[r] for r in ("bite", "bite2") if r in ids]
    job = call(
        client, "POST", "/v1/jobs", key, 201, json={"upper": ids["upper"], "lower": ids["lower"], "bites": bites}
    ).json()
    columns = (
        TextColumn("       job {task.fields[job]}"),
        BarColumn(),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("job", total=1.0, job=job["id"], stage="queued")
        deadline = time.monotonic() + 600
        while True:
            job = call(client, "GET", f"/v1/jobs/{job['id']}", key, 200).json()
            bar.update(task, completed=float(job.get("progress") or 0.0), stage=job["state"])
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise SystemExit("demo failed: the job did not finish in 10 minutes")
            time.sleep(0.5)
    return dict(job)


def fetch_artifacts(client: httpx.Client, key: str, job_id: str) -> list[dict[str, Any]]:
    OUT.mkdir(exist_ok=True)
    artifacts: list[dict[str, Any]] = call(client, "GET", f"/v1/jobs/{job_id}/artifacts", key, 200).json()["items"]
    for artifact in artifacts:
        link = call(client, "POST", f"/v1/jobs/{job_id}/artifacts/{artifact['name']}/link", key, 201).json()
        content = httpx.get(
            link["url"] if link["url"].startswith("http") else str(client.base_url) + link["url"], timeout=60
        )
        if content.status_code != 200:
            raise SystemExit(f"demo failed: download of {artifact['name']} answered {content.status_code}")
        (OUT / artifact["name"]).write_bytes(content.content)
    return artifacts


def show_link_checks(client: httpx.Client, key: str, job_id: str, name: str, other_key: str) -> None:
    url = call(client, "POST", f"/v1/jobs/{job_id}/artifacts/{name}/link", key, 201).json()["url"]
    path = url.split(str(client.base_url), 1)[-1] if url.startswith("http") else url
    altered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    note(f"an altered link: {client.get(altered).status_code}; "
         f"another tenant asking for this job: {client.get(f'/v1/jobs/{job_id}', headers={'authorization': f'Bearer {other_key}'}).status_code}")  # fmt: skip


def registration_tre(result: dict[str, Any], truth_path: Path, lower_file: Path) -> float | None:
    """RMS TRE of the registered lower arch relative to the upper (before the bite optimisation)."""
    if "transforms" not in result:
        return None
    truth = json.loads(truth_path.read_text())
    vertices = read_mesh(lower_file, max_bytes=1 << 30, max_triangles=10_000_000).vertices
    est_u, est_l = (np.asarray(result["transforms"][k]) for k in ("upper", "lower"))
    correction = result.get("occlusion", {}).get("correction", {}).get("matrix")
    if correction is not None:  # the optimisation then moves the lower on purpose
        est_l = np.linalg.inv(np.asarray(correction)) @ est_l
    true_u, true_l = (np.asarray(truth["file_to_bite"][k]) for k in ("upper", "lower"))
    error = relative_error(np.linalg.inv(est_u) @ est_l, np.linalg.inv(true_u) @ true_l, vertices)
    return float(np.sqrt((error**2).mean()))


def summary(job: dict[str, Any], files: dict[str, Path]) -> None:
    result = json.loads((OUT / "result.json").read_text())
    table = Table(title=f"Occlusion ({result['status']})", title_justify="left")
    for column in (
        "arch",
        "contact area mm²",
        "left post.",
        "anterior",
        "right post.",
        "patches",
        "max penetration mm",
    ):
        table.add_column(column)
    for arch, values in result.get("occlusion", {}).get("after", {}).items():
        regions = values.get("area_by_region_mm2", {})
        table.add_row(
            arch, f"{values['contact_area_mm2']:.2f}",
            *(f"{regions.get(r, 0):.2f}" for r in ("left_posterior", "anterior", "right_posterior")),
            str(values["patches"]), f"{values['max_penetration_mm']:.3f}",
        )  # fmt: skip
    if table.row_count:
        console.print(table)
    if result["status"] != "ok":
        note(f"[yellow]{job.get('message', '')}[/yellow]")
    tre = registration_tre(result, files["truth"], files["lower"])
    if tre is not None:
        note(f"registration TRE of the lower arch against the generator's ground truth: {tre:.4f} mm RMS")
    timings = result.get("timings_s", {})
    if timings:
        note("timings: " + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items()))


def main() -> int:
    console.rule("Mesial demo — embedded defaults: SQLite, local OpenBao and SeaweedFS, no cluster")
    if OUT.exists():
        shutil.rmtree(OUT)
    with tempfile.TemporaryDirectory(prefix="mesial-demo-") as tmp:
        scratch = Path(tmp)
        stack = ServiceStack(scratch / "services", ["openbao", "seaweedfs"], tied_to_parent=True)
        services = step("start OpenBao (Vault API) and SeaweedFS (S3) on free loopback ports", stack.start)
        try:
            env = {**os.environ, "MESIAL_MODE": "local", "MESIAL_DATA_DIR": str(scratch / "data")}
            env["MESIAL_DATABASE_URL"] = f"sqlite://{scratch / 'data' / 'mesial.sqlite3'}"
            env["MESIAL_API__JOB_COMMAND"] = json.dumps([MESIAL, "job", "run"])
            for info in services.values():
                env.update(info.env)
            (scratch / "data").mkdir()
            platform = step(
                "bootstrap the platform admin (mesial admin bootstrap)", lambda: mesial(env, "admin", "bootstrap")
            )
            note(f"platform-admin key {platform[:12]}… (shown once, stored hashed)")
            port = free_port()
            with api_server(env, port, scratch / "api.log") as client:
                note(f"API at {client.base_url} (ready: database, Vault and store checked by /readyz)")
                step(f"create organization {ORG} (its Vault key is created with it)",
                     lambda: call(client, "POST", "/v1/orgs", platform, 201, json={"name": ORG}))  # fmt: skip
                admin = call(client, "POST", f"/v1/orgs/{ORG}/keys", platform, 201, json={"role": "org-admin"}).json()[
                    "key"
                ]
                clinician = call(client, "POST", "/v1/keys", admin, 201, json={"role": "clinician"}).json()["key"]
                auditor = call(client, "POST", "/v1/keys", admin, 201, json={"role": "auditor"}).json()["key"]
                note("keys issued: org-admin, clinician, auditor")
                call(client, "POST", "/v1/orgs", platform, 201, json={"name": "other-clinic"})
                other = call(
                    client, "POST", "/v1/orgs/other-clinic/keys", platform, 201, json={"role": "org-admin"}
                ).json()["key"]

                files = step("generate a synthetic case: two arches, two buccal bites, random poses",
                             lambda: write_case(generate_case(7), scratch / "case"))  # fmt: skip
                ids = step("upload the scans through the API", lambda: upload_case(client, clinician, files))
                leaked = client.get(f"/v1/scans/{ids['upper']}", headers={"authorization": f"Bearer {other}"})
                note(f"another organization asking for scan {ids['upper']}: {leaked.status_code}")

                job = step("align: the local executor runs `mesial job run`", lambda: run_job(client, clinician, ids))
                verdict = f", alignment {job['result']}" if job.get("result") else ""
                note(
                    f"job {job['id']}: {job['state']}{verdict}" + (f" — {job['message']}" if job.get("message") else "")
                )
                artifacts = step(f"download the results through signed links into {OUT}/",
                                 lambda: fetch_artifacts(client, clinician, job["id"]))  # fmt: skip
                note("artifacts: " + ", ".join(a["name"] for a in artifacts))
                show_link_checks(client, clinician, job["id"], artifacts[0]["name"], other)
                summary(job, files)

                call(client, "PUT", f"/v1/scans/{ids['upper']}/legal-hold", admin, 200)
                held = client.delete(f"/v1/scans/{ids['upper']}", headers={"authorization": f"Bearer {admin}"})
                note(f"legal hold on the upper scan; deleting it: {held.status_code} ({held.json()['error']['code']})")
                deleted = step("delete the other scans (objects and rows, receipts in the audit chain)",
                               lambda: [call(client, "DELETE", f"/v1/scans/{ids[r]}", admin, 204) for r in ids if r != "upper"])  # fmt: skip
                note(f"deleted {len(deleted)} scans")

                export = OUT / f"audit-{ORG}.jsonl"
                step("export the audit chain as the auditor",
                     lambda: export.write_bytes(call(client, "GET", "/v1/audit/export", auditor, 200).content))  # fmt: skip
                note(f"{sum(1 for _ in export.open())} lines in {export}")
            verdict = step(
                "verify the export offline (mesial audit verify)", lambda: mesial(env, "audit", "verify", str(export))
            )
            note(verdict.splitlines()[0] if verdict else "")
            tampered = OUT / "audit-tampered.jsonl"
            lines = export.read_text().splitlines(keepends=True)
            victim = next(i for i, line in enumerate(lines) if '"scan.deleted"' in line)
            lines[victim] = lines[victim].replace('"scan.deleted"', '"scan.viewed"')
            tampered.write_text("".join(lines))
            check = subprocess.run([MESIAL, "audit", "verify", str(tampered)], env=env, capture_output=True, text=True)
            note(
                f"one event edited (line {victim + 1}): exit {check.returncode}: {(check.stdout or check.stderr).strip().splitlines()[0]}"
            )

            keys = TenantKeys(
                VaultSettings(addr=services["openbao"].url, token=services["openbao"].credentials["root_token"])
            )
            receipt = step(
                f"crypto-shred mesial-org-{ORG} (what deleting the Organization does)", lambda: keys.shred(ORG)
            )
            note(receipt.proof)
        finally:
            stack.stop()
    console.rule("done")
    console.print(
        f"Open {OUT / 'report.html'} for the occlusion maps; {OUT}/ also holds the PNG views and the audit export."
    )
    console.print(
        "Cluster mode (operator, ScanJobs, NetworkPolicies) is exercised by the test suite on a real kube-apiserver (tests/e2e_cluster) and the kmock emulator."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
