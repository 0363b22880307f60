"""The private Slurm cluster harness itself: the Slurm executor's integration tests rely on it
running real jobs and reporting their states and exit codes as these tests show."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon_harness import alive, wait_until
from slurm_harness import SlurmCluster

pytestmark = pytest.mark.integration


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of TCP sockets listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_cluster_is_idle_private_and_on_loopback(slurm_cluster):
    """The started cluster answers ``scontrol ping``, its node is idle or running jobs, and
    both daemons listen on 127.0.0.1 only, on their own ports, with their own config."""
    assert slurm_cluster.ping()
    assert slurm_cluster.node_state() in {"idle", "mixed", "allocated"}
    assert slurm_cluster.env["SLURM_CONF"] == str(slurm_cluster.conf_path)
    for port in (slurm_cluster.ctld_port, slurm_cluster.slurmd_port):
        assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, little-endian hex
    shown = slurm_cluster.run("scontrol", "show", "config").stdout
    assert f"SlurmctldPort           = {slurm_cluster.ctld_port}" in shown


def test_successful_job_completes_with_exit_code_zero(slurm_cluster):
    """A tiny ``sbatch --parsable`` job runs to COMPLETED; squeue shows it, ``sacct -c``
    reports COMPLETED 0:0, and its stdout lands in the requested file."""
    job_id = slurm_cluster.sbatch(script="echo hello from slurm\n")
    assert job_id.isdigit()
    result = slurm_cluster.wait_final(job_id)
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0")
    assert slurm_cluster.squeue([job_id]) == {job_id: "COMPLETED"}
    output = slurm_cluster.directory / "jobs" / f"{job_id}.out"
    assert output.read_text() == "hello from slurm\n"


def test_failing_job_reports_failed_with_its_exit_code(slurm_cluster):
    """A job whose script exits 3 ends FAILED with exit code 3:0 in ``sacct -c`` and in
    ``scontrol show job``."""
    job_id = slurm_cluster.sbatch(script="echo oops >&2\nexit 3\n")
    result = slurm_cluster.wait_final(job_id)
    assert (result.state, result.exit_code) == ("FAILED", "3:0")
    shown = slurm_cluster.run("scontrol", "-o", "show", "job", job_id).stdout
    assert "JobState=FAILED" in shown and "ExitCode=3:0" in shown
    assert (slurm_cluster.directory / "jobs" / f"{job_id}.err").read_text() == "oops\n"


def test_one_squeue_call_reports_several_jobs(slurm_cluster):
    """One ``squeue -t all -j a,b,c`` call reports every job, finished ones included, and
    leaves out an id Slurm does not know without failing."""
    job_ids = [slurm_cluster.sbatch(f"--wrap=exit {code}") for code in (0, 1, 2)]
    results = {job_id: slurm_cluster.wait_final(job_id) for job_id in job_ids}
    assert [results[job_id].state for job_id in job_ids] == ["COMPLETED", "FAILED", "FAILED"]
    assert [results[job_id].exit_code for job_id in job_ids] == ["0:0", "1:0", "2:0"]
    unknown = str(int(max(job_ids, key=int)) + 100000)
    assert slurm_cluster.squeue([*job_ids, unknown]) == {
        job_ids[0]: "COMPLETED", job_ids[1]: "FAILED", job_ids[2]: "FAILED"}
    assert slurm_cluster.sacct([*job_ids, unknown]).keys() == set(job_ids)


def test_scancel_of_a_running_job_reports_cancelled(slurm_cluster):
    """A running sleep job cancelled with ``scancel`` ends CANCELLED (sacct -c and squeue),
    and its process is gone."""
    job_id = slurm_cluster.sbatch(script="echo $$ > pid.$SLURM_JOB_ID\nexec sleep 300\n")
    slurm_cluster.wait_state(job_id, "RUNNING")
    pid_file = slurm_cluster.directory / "jobs" / f"pid.{job_id}"
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(),
                         "the job to write its pid", 30))
    slurm_cluster.scancel(job_id)
    result = slurm_cluster.wait_final(job_id)
    assert result.state == "CANCELLED"
    assert slurm_cluster.wait_state(job_id, "CANCELLED", 30) == "CANCELLED"
    wait_until(lambda: not alive(pid), "the cancelled job's process to exit", 30)


def test_stop_leaves_nothing_running():
    """Stopping a cluster with a job still running kills its daemons and the job, and
    removes its directory."""
    cluster = SlurmCluster().start()
    try:
        assert cluster.start_seconds < 30
        job_id = cluster.sbatch(script="echo $$ > pid.$SLURM_JOB_ID\nexec sleep 300\n")
        cluster.wait_state(job_id, "RUNNING")
        pid_file = cluster.directory / "jobs" / f"pid.{job_id}"
        pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(),
                             "the job to write its pid", 30))
        daemon_pids = [process.pid for process in cluster._children.values()]
    finally:
        leftovers = cluster.stop()
    assert leftovers == []
    assert not cluster.running
    assert not any(alive(p) for p in [pid, *daemon_pids])
    assert not cluster.directory.exists()
