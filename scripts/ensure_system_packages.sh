#!/usr/bin/env bash
# The two programs the project needs from the system, not from PyPI: nginx (the front of the
# served app: `make serve`, the image) and a Java runtime (Spark, the batch_scoring pipeline).
# Install Debian's when one is missing and this user may (root with apt-get); otherwise say how,
# and go on: the pipelines and tests that need neither still run.
set -u
export PATH="$PATH:/usr/local/sbin:/usr/sbin"  # where Debian puts nginx
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null \
            && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
        && exit 0
fi
echo "note: not installed: ${missing[*]} (apt-get install ${missing[*]})." \
    "nginx serves the app (make serve); Java runs Spark (batch scoring)." >&2
exit 0
