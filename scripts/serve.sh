#!/usr/bin/env bash
# Serve the app as the image does (its CMD; `make serve` runs this too): nginx on $PORT in front
# (scripts/nginx.conf.template says why), gunicorn behind it on a private Unix socket, with
# gunicorn.conf.py's settings. When either ends, the other is stopped; SIGTERM stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian puts nginx in /usr/sbin, which is not on a non-root user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin"

if ! command -v nginx >/dev/null; then
    echo "error: nginx is not installed; the app is served behind it (slow clients)." \
        "Install it: apt-get install nginx (make setup does, as root), brew install nginx." >&2
    exit 1
fi

# glibc gives each thread that allocates its own malloc arena, and each arena keeps what a large
# image's decode freed: with 16 request threads that is hundreds of MB held for good. Two arenas
# hold the worker's memory to what it uses.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"

port="${PORT:-8080}"
upload_mb="${CHEST_CT_MAX_UPLOAD_MB:-10}"
max_body=$(python3 -c "import sys; print(int(float(sys.argv[1]) * 2**20) + 2**20)" "$upload_mb")
run_dir="$(mktemp -d "${TMPDIR:-/tmp}/chest-ct-serve.XXXXXX")"
# As root (a developer's or CI machine), nginx's workers would become another user, unable to
# reach the socket in this private folder: they stay this user. The image runs as non-root.
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"
sed -e "s|@PORT@|$port|g" -e "s|@RUN_DIR@|$run_dir|g" -e "s|@MAX_BODY@|$max_body|g" \
    -e "s|@USER@|$user_line|g" scripts/nginx.conf.template >"$run_dir/nginx.conf"
nginx -t -q -p "$run_dir" -c "$run_dir/nginx.conf" -e stderr

GUNICORN_BIND="unix:$run_dir/gunicorn.sock" gunicorn app:app &
gunicorn_pid=$!
nginx -p "$run_dir" -c "$run_dir/nginx.conf" -e stderr &
nginx_pid=$!

stop() {
    # gunicorn first, so that requests under way are answered through nginx; then nginx.
    kill -TERM "$gunicorn_pid" 2>/dev/null || true
    wait "$gunicorn_pid" 2>/dev/null || true
    kill -QUIT "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
    rm -rf "$run_dir"
    exit "$1"
}
trap 'stop 0' TERM INT

status=0
wait -n "$gunicorn_pid" "$nginx_pid" || status=$?
[ "$status" = 0 ] && status=1  # neither should end on its own
echo "serve.sh: a server process ended (status $status); stopping the other" >&2
stop "$status"
