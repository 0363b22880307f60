# Test hook (sourced by scripts/test): make sure Slurm and munge are installed.
#
# The integration tests start their own single-node Slurm cluster (a private munged,
# slurmctld and slurmd on free loopback ports, in a temporary directory; see
# tests/integration/slurm_harness.py), so this hook only installs the binaries: Debian's
# slurmctld, slurmd, slurm-client and munge packages, without Recommends (which would drag
# in every slurm-wlm-*-plugin).  Their postinst scripts would start the system munge and
# Slurm services through invoke-rc.d, so unless the machine already has a policy-rc.d, one
# that denies every service start ("exit 101") is in place while apt runs and removed
# afterwards.  The munge key the package creates in /etc/munge is never used.

_daggy_install_slurm() {
    local policy=/usr/sbin/policy-rc.d created=0 status=0
    if [ ! -e "$policy" ] && command -v apt-get >/dev/null 2>&1; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' >'$policy' && chmod 755 '$policy'"
        created=1
    fi
    apt_install slurmctld slurmd slurm-client munge || status=$?
    if [ "$created" = 1 ]; then
        as_root rm -f "$policy"
    fi
    return "$status"
}

_daggy_slurm_missing() {
    local command
    for command in slurmctld slurmd sbatch squeue sacct scontrol scancel sinfo munged mungekey; do
        # The daemons live in /usr/sbin, which a non-root PATH may lack.
        if ! command -v "$command" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$command" ]; then
            return 0
        fi
    done
    return 1
}

if _daggy_slurm_missing; then
    _daggy_install_slurm
    if _daggy_slurm_missing; then
        say "Slurm or munge is still missing after installing Debian's slurmctld, slurmd, slurm-client and munge packages"
        unset -f _daggy_install_slurm _daggy_slurm_missing
        return 1
    fi
fi
unset -f _daggy_install_slurm _daggy_slurm_missing
