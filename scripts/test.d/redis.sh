# Test hook (sourced by scripts/test): make sure `redis-server` is installed.
#
# The integration tests start their own redis-server processes on free loopback ports in
# temporary directories (tests/integration/redis_harness.py), so this hook only installs the
# binary; it never starts or uses the system Redis on :6379.  Debian's postinst would start
# that service through invoke-rc.d, so unless the machine already has a policy-rc.d, one that
# denies every service start ("exit 101") is in place while apt runs and removed afterwards.
# Exports DAGGY_TEST_REDIS_SERVER, the binary the tests run; when it is already set to an
# executable (say, a redis-server built from source), that one is used and nothing installed.

_daggy_install_redis_server() {
    local policy=/usr/sbin/policy-rc.d created=0 status=0
    if [ ! -e "$policy" ] && command -v apt-get >/dev/null 2>&1; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' >'$policy' && chmod 755 '$policy'"
        created=1
    fi
    apt_install redis-server || status=$?
    if [ "$created" = 1 ]; then
        as_root rm -f "$policy"
    fi
    return "$status"
}

if [ -n "${DAGGY_TEST_REDIS_SERVER:-}" ] && [ -x "$DAGGY_TEST_REDIS_SERVER" ]; then
    :
else
    if ! command -v redis-server >/dev/null 2>&1; then
        _daggy_install_redis_server
    fi
    if ! DAGGY_TEST_REDIS_SERVER="$(command -v redis-server)"; then
        say "redis-server is still not on PATH after installing Debian's redis-server package"
        return 1
    fi
fi
export DAGGY_TEST_REDIS_SERVER
unset -f _daggy_install_redis_server
