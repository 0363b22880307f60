# Test hook (sourced by scripts/test): make sure Debian's Chromium is installed.
#
# The web UI's browser tests (tests/integration/test_ui_browser.py) drive the system
# Chromium headless through Playwright (a Python package from the test extras); Playwright's
# own browser downloads are never used.  Exports DAGGY_TEST_CHROMIUM, the browser the tests
# start; when it is already set to an executable, that one is used and nothing installed.
# chromium-driver comes along so that the same browser can be driven over WebDriver too, and
# a font so that pages render text (the install takes no recommends).

if [ -n "${DAGGY_TEST_CHROMIUM:-}" ] && [ -x "$DAGGY_TEST_CHROMIUM" ]; then
    :
else
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        apt_install chromium chromium-driver fonts-dejavu-core
    fi
    if ! DAGGY_TEST_CHROMIUM="$(command -v chromium)"; then
        say "chromium is still not on PATH after installing Debian's chromium package"
        return 1
    fi
fi
export DAGGY_TEST_CHROMIUM
