#!/usr/bin/env bash
# Spark (the batch_scoring pipeline) needs a Java runtime. Install Debian's when it is missing and
# this user may (root with apt-get); otherwise say how, and go on: nothing else needs Java.
set -u
command -v java >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q openjdk-17-jre-headless >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q openjdk-17-jre-headless >/dev/null; } \
        && exit 0
fi
echo "note: no Java runtime; batch scoring on Spark needs one (apt-get install openjdk-17-jre-headless)," \
    "the rest of the project does not" >&2
exit 0
