# Sourced by the scripts: makes `nats-server` (installed by setup.sh from PyPI) findable when
# pip put it in a scripts directory that is not on PATH, by setting SANDBUS_NATS_SERVER, which
# sandbus and the test harness honour.
if ! command -v nats-server >/dev/null 2>&1 && [ -z "${SANDBUS_NATS_SERVER:-}" ]; then
  for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
             "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts", "posix_user"))')"; do
    if [ -x "$dir/nats-server" ]; then
      export SANDBUS_NATS_SERVER="$dir/nats-server"
      break
    fi
  done
fi
