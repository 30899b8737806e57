#!/usr/bin/env bash
# Run the whole test suite (unit, integration with one Serve app, end to end with serve run).
# Installs the system packages the tests drive when missing (ops/system-packages.sh; sudo
# unless root) and stops in one line naming any still missing before pytest starts.
# Uses the Redis at $REDIS_URL or 127.0.0.1:6379, or starts a private one if none answers.
source "$(dirname "$0")/bootstrap.sh"
export PATH="$PWD/.venv/bin:$PATH"  # the venv's tools first (kubectl, where PyPI provided it)
fusion_install_test_packages
fusion_check_test_packages || exit 1
set +e
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
