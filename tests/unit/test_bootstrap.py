"""The README's set-up path installs the system packages the suite drives, and ops/test.sh
stops in one line naming any still missing.

The real scripts run on a copy of their files, on a PATH that holds only a few core tools and
fakes of ``apt-get``, ``sudo``, ``id`` and the venv's python that record how they were called
(so nothing is installed or removed on this machine). The fake ``apt-get install`` "installs"
by putting stub binaries on that PATH, as the real packages would, and refuses the packages
named in ``$FAKE_APT_UNAVAILABLE`` the way apt refuses a name it cannot find: the whole batch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash") or "/bin/bash"
TOOLS = ("bash", "env", "cat", "sha256sum", "cut", "dirname", "mkdir", "cp", "touch", "chmod")
# what each fake package puts on PATH (Debian's prometheus package carries promtool)
BINARIES = {"prometheus": ["prometheus", "promtool"]}
ALL = ["prometheus", "kubectl", "chromium", "redis-server", "curl"]

FAKE_APT = r"""#!BASH
echo "apt-get $* DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-}" >> "$LOG"
[ "$1" = install ] || exit 0
shift
packages=()
for p in "$@"; do
  case "$p" in -*) ;; *) packages+=("$p") ;; esac
done
for p in "${packages[@]}"; do
  for u in $FAKE_APT_UNAVAILABLE; do
    [ "$p" = "$u" ] && { echo "E: Unable to locate package $p" >&2; exit 100; }
  done
done
for p in "${packages[@]}"; do
  touch "$STATE/$p"
  case "$p" in prometheus) bins="prometheus promtool" ;; *) bins="$p" ;; esac
  for b in $bins; do printf '#!BASH\n' > "$INSTALLED/$b"; chmod +x "$INSTALLED/$b"; done
done
"""
FAKE_SUDO = '#!BASH\necho "sudo $*" >> "$LOG"\nexec "$@"\n'
FAKE_ID = '#!BASH\necho "${FAKE_UID:-0}"\n'
FAKE_PYTHON = r"""#!BASH
echo "python $*" >> "$LOG"
case "$1 $2" in
  "-c import ensurepip") [ -e "$STATE/python3-venv" ] ;;
  "-m venv") mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
  *) exit 0 ;;
esac
"""


def _script(path: Path, text: str) -> None:
    path.write_text(text.replace("BASH", BASH))
    path.chmod(0o755)


@pytest.fixture
def machine(tmp_path):
    """A copy of the set-up scripts and a PATH without any of the test packages: returns
    ``run(script, *args, **env) -> CompletedProcess`` (run in the copy) and the call log."""
    tree = tmp_path / "repo"
    for rel in ("ops/bootstrap.sh", "ops/system-packages.sh", "ops/test.sh",
                "ops/serve-local.sh", "pyproject.toml", "clients/python/pyproject.toml"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tree / rel)
    fakebin, installed, state = tmp_path / "bin", tmp_path / "installed", tmp_path / "state"
    for d in (fakebin, installed, state):
        d.mkdir()
    for tool in TOOLS:
        (fakebin / tool).symlink_to(shutil.which(tool))
    _script(fakebin / "apt-get", FAKE_APT)
    _script(fakebin / "sudo", FAKE_SUDO)
    _script(fakebin / "id", FAKE_ID)
    _script(fakebin / "python3", FAKE_PYTHON)
    log = tmp_path / "calls.log"
    log.touch()
    base = {"PATH": f"{fakebin}{os.pathsep}{installed}", "LOG": str(log), "STATE": str(state),
            "INSTALLED": str(installed), "HOME": str(tmp_path), "FAKE_APT_UNAVAILABLE": ""}

    def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([BASH, str(tree / script), *args], cwd=tmp_path,
                              env=base | env, capture_output=True, text=True, timeout=60)

    run.log = lambda: log.read_text().splitlines()  # type: ignore[attr-defined]
    run.tree, run.installed = tree, installed  # type: ignore[attr-defined]
    return run


def test_test_sh_installs_every_missing_package_once_then_runs_pytest(machine):
    out = machine("ops/test.sh", "-q", "tests/unit/x.py")
    assert out.returncode == 0, out.stderr
    calls = machine.log()
    apt = [c for c in calls if c.startswith("apt-get")]
    # one update, before the first install: the venv's package, then the test packages
    assert apt == ["apt-get update -qq DEBIAN_FRONTEND=",
                   "apt-get install -y -qq python3-venv DEBIAN_FRONTEND=noninteractive",
                   f"apt-get install -y -qq {' '.join(ALL)} DEBIAN_FRONTEND=noninteractive"]
    assert not [c for c in calls if c.startswith("sudo")]  # root: no sudo
    said = [line for line in out.stderr.splitlines() if "installing" in line]
    assert len(said) == 2 and all(p in said[1] for p in ALL), out.stderr
    assert "python3-venv" in said[0]
    # the fresh venv needed python3-venv first, then the project install, then pytest
    assert calls.index("apt-get install -y -qq python3-venv DEBIAN_FRONTEND=noninteractive") \
        < calls.index("python -m venv .venv") < calls.index("python -m pip install -q "
                                                            "--upgrade pip")
    assert calls[-1] == "python -m pytest -q tests/unit/x.py"

    again = machine("ops/test.sh")
    assert again.returncode == 0, again.stderr
    new = machine.log()[len(calls):]
    assert not [c for c in new if c.startswith(("apt-get", "sudo"))], new  # idempotent
    assert "installing" not in again.stderr
    assert new == ["python -m pytest"]  # nor pip: the install files did not change


def test_sudo_only_when_not_root(machine):
    out = machine("ops/test.sh", FAKE_UID="1000")
    assert out.returncode == 0, out.stderr
    calls = machine.log()
    for i, call in enumerate(calls):
        if call.startswith("apt-get"):
            assert calls[i - 1].startswith("sudo "), calls
    assert "sudo apt-get install" in out.stderr


def test_only_missing_packages_are_installed(machine):
    for present in ("prometheus", "promtool", "chromium-browser", "curl"):
        _script(machine.installed / present, "#!BASH\n")
    out = machine("ops/test.sh")
    assert out.returncode == 0, out.stderr
    assert ("apt-get install -y -qq kubectl redis-server DEBIAN_FRONTEND=noninteractive"
            in machine.log())


def test_an_unavailable_package_is_named_in_one_line_and_pytest_never_runs(machine):
    out = machine("ops/test.sh", FAKE_APT_UNAVAILABLE="kubectl")
    assert out.returncode == 1
    calls = machine.log()
    assert "python -m pytest" not in calls
    # one name apt cannot find fails the batch: the others are then installed one by one
    for package in set(ALL) - {"kubectl"}:
        assert (machine.installed / BINARIES.get(package, [package])[0]).exists(), package
    missing = [line for line in out.stderr.splitlines() if "missing" in line]
    assert len(missing) == 1, out.stderr
    named = set(re.findall(r"[a-z][a-z0-9-]+", missing[0])) & set(ALL)
    assert named == {"kubectl"}, missing[0]


def test_the_check_names_the_package_of_a_missing_binary(machine):
    for present in ("prometheus", "kubectl", "chromium", "redis-server", "curl"):
        _script(machine.installed / present, "#!BASH\n")
    # promtool is gone and apt cannot help: the package named is prometheus
    out = machine("ops/test.sh", FAKE_APT_UNAVAILABLE="prometheus")
    assert out.returncode == 1
    assert "missing system packages the tests need: prometheus " in out.stderr, out.stderr


def test_serve_local_installs_no_test_package(machine):
    out = machine("ops/serve-local.sh")
    assert out.returncode == 0, out.stderr
    calls = machine.log()
    assert "apt-get install -y -qq python3-venv DEBIAN_FRONTEND=noninteractive" in calls
    assert not [c for c in calls if "install" in c and any(p in c for p in ALL)], calls
    assert calls[-1] == "python ops/serve_local.py ops/serve/local.yaml"


def test_every_binary_a_test_looks_up_is_installed_by_the_test_command():
    listed = subprocess.run(
        [BASH, "-c", 'source ops/system-packages.sh; printf "%s\\n" "${FUSION_TEST_PACKAGES[@]}"'],
        cwd=ROOT, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True)
    binaries = {b for entry in listed.stdout.split() for b in entry.rsplit(":", 1)[0].split("|")}
    used = set()
    for path in set((ROOT / "tests").rglob("*.py")) - {Path(__file__)}:
        used |= set(re.findall(r"shutil\.which\(\"([^\"]+)\"\)", path.read_text()))
    from tests.browser import CANDIDATES
    from tests.unit.k8s_render import __file__ as k8s_render
    assert '["kubectl", "kustomize"' in Path(k8s_render).read_text()
    used |= {"kubectl", "redis-server", *CANDIDATES}
    assert used <= binaries, used - binaries


def test_without_apt_the_packages_are_named_and_nothing_is_run(machine):
    (machine.installed.parent / "bin" / "apt-get").unlink()
    out = machine("ops/test.sh")
    assert out.returncode == 1
    assert "install these system packages yourself: prometheus kubectl" in out.stderr
    assert not [c for c in machine.log() if c.startswith(("sudo", "python -m pytest"))]
