# bench/lib.sh: what bench/run (`make bench`) and bench/limits (`make bench-limits`) share. Sourced,
# not run. The caller sets ROOT and BUILD_DIR first; every knob is an environment variable
# (bench/README.md). Defines the knobs' defaults, checks the binaries, and the helpers: process
# control, /proc CPU accounting, one wrk run (run_wrk), median and ratio.

DURATION=${BENCH_DURATION:-6}           # seconds per wrk run
ROUNDS=${BENCH_ROUNDS:-5}               # wrk runs per proxy and mode (medians are reported)
WARMUP=${BENCH_WARMUP:-2}               # seconds of warm-up per proxy and mode
CONNS=${BENCH_CONNECTIONS:-64}          # wrk connections (all keep-alive)
WRK_THREADS=${BENCH_WRK_THREADS:-1}
URL_PATH=${BENCH_PATH:-/api/items/1}    # a small JSON response from the storefront
WRK_SCRIPT=${WRK_SCRIPT:-}              # a wrk Lua script (-s), set by bench/limits
DEMO_THREADS=${BENCH_DEMO_THREADS:-1}
PROXY_CPU=${BENCH_PROXY_CPU:-0}         # the proxies are pinned here...
LOAD_CPU=${BENCH_LOAD_CPU-1}            # ...wrk here ("" = no pinning at all)...
DEMO_CPU=${BENCH_DEMO_CPU-$LOAD_CPU}    # ...and the storefront here
SLUICE_PORT=${BENCH_SLUICE_PORT:-8080}
NGINX_PORT=${BENCH_NGINX_PORT:-8081}
ADMIN_PORT=${BENCH_ADMIN_PORT:-9911}
UPSTREAM_PORT=${BENCH_UPSTREAM_PORT:-9080}
NGINX=${NGINX:-/usr/sbin/nginx}
WRK=${WRK:-wrk}

SLUICE_BIN="$BUILD_DIR/proxy/sluice"
DEMO_BIN="$BUILD_DIR/demo/sluice-demo-storefront"

die() { echo "bench: $*" >&2; exit 1; }

[ -x "$SLUICE_BIN" ] || die "no sluice binary at $SLUICE_BIN (build first: make build, or cmake --build $BUILD_DIR)"
[ -x "$DEMO_BIN" ] || die "no demo storefront at $DEMO_BIN (build first)"
[ -x "$NGINX" ] || die "no nginx at $NGINX (scripts/install-deps installs nginx-light)"
command -v "$WRK" >/dev/null || die "wrk not found (scripts/install-deps installs it)"
command -v curl >/dev/null || die "curl not found"

CORES=$(nproc)
if [ -n "$LOAD_CPU" ] && { [ "$CORES" -lt 2 ] || ! command -v taskset >/dev/null; }; then
  echo "bench: fewer than 2 cores or no taskset: running unpinned" >&2
  LOAD_CPU=""
fi
pin_load() { if [ -n "$LOAD_CPU" ]; then taskset -c "$LOAD_CPU" "$@"; else "$@"; fi; }

port_taken() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

stop_pid() {  # stop_pid PID: TERM, wait up to 5 s, then KILL; only processes this script started
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

wait_http() {  # wait_http URL NAME LOG: until URL answers 200, up to 5 s
  for _ in $(seq 50); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null)" = 200 ]; then return 0; fi
    sleep 0.1
  done
  echo "bench: $2 did not answer 200 on $1; its log:" >&2
  tail -n 20 "$3" >&2 || true
  exit 1
}

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() {  # "utime stime" of a process, all threads, in clock ticks (fields 14, 15 of stat)
  local stat
  stat=$(cat "/proc/$1/stat") || die "process $1 is gone"
  stat=${stat##*) }   # the command name may contain spaces; fields restart after ") "
  set -- $stat        # now $1 is field 3 (state)
  echo "${12} ${13}"
}
child_of() {  # child_of PID: a process whose parent is PID (nginx's worker)
  local parent=$1 f s
  for f in /proc/[0-9]*/stat; do
    s=$(cat "$f" 2>/dev/null) || continue
    s=${s##*) }
    set -- $s   # $1 state, $2 ppid
    if [ "${2:-}" = "$parent" ]; then f=${f#/proc/}; echo "${f%/stat}"; return 0; fi
  done
  return 1
}
# launch CPU CMD...: run CMD in the background pinned to CPU ("" = unpinned); exec keeps $! = CMD's pid
launch() {
  local cpu=$1; shift
  if [ -n "$LOAD_CPU" ] && [ -n "$cpu" ]; then exec taskset -c "$cpu" "$@"; else exec "$@"; fi
}

to_ms() {  # wrk latency like 812.00us, 1.23ms, 2.01s -> milliseconds
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) printf "%.3f", substr(v, 1, length(v) - 2) / 1000;
    else if (v ~ /ms$/) printf "%.3f", substr(v, 1, length(v) - 2);
    else if (v ~ /m$/) printf "%.3f", substr(v, 1, length(v) - 1) * 60000;
    else if (v ~ /s$/) printf "%.3f", substr(v, 1, length(v) - 1) * 1000;
    else printf "%.3f", v }'
}

ERRORS=0
# run_wrk NAME PORT PID SECONDS -> sets RPS P99 CPU_US_REQ CPU_SPLIT CPU_PCT DEMO_PCT WRK_PCT REQS ERRS
# (the storefront's pid is DEMO_PID; with WRK_SCRIPT set, wrk runs that script: -s WRK_SCRIPT)
run_wrk() {
  local name=$1 port=$2 pid=$3 secs=$4 out
  local t0 t1 d0 d1 u0 u1 s0 s1
  local script=()
  [ -z "$WRK_SCRIPT" ] || script=(-s "$WRK_SCRIPT")
  read -r u0 s0 <<<"$(cpu_ticks "$pid")"; d0=$(cpu_ticks "$DEMO_PID")
  out=$( { TIMEFORMAT='wrk-cpu %U %S'; time pin_load "$WRK" -t"$WRK_THREADS" -c"$CONNS" -d"${secs}s" --latency \
           "${script[@]}" "http://127.0.0.1:$port$URL_PATH"; } 2>&1 ) || { echo "$out" >&2; die "wrk failed against $name"; }
  kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) exited during the run; logs in $TMP (BENCH_KEEP=1 keeps them)"
  kill -0 "$DEMO_PID" 2>/dev/null || die "the demo storefront exited during the run"
  read -r u1 s1 <<<"$(cpu_ticks "$pid")"; d1=$(cpu_ticks "$DEMO_PID")
  t0=$((u0 + s0)); t1=$((u1 + s1)); d0=$(( ${d0% *} + ${d0#* } )); d1=$(( ${d1% *} + ${d1#* } ))
  REQS=$(awk '/requests in/ { print $1 }' <<<"$out")
  RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
  P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
  local non2xx sock
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out"); non2xx=${non2xx:-0}
  sock=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' <<<"$out"); sock=${sock:-0}
  ERRS="non-2xx/3xx $non2xx, socket errors $sock"
  if [ -z "$REQS" ] || [ "$REQS" -eq 0 ]; then echo "$out" >&2; die "wrk completed no request against $name"; fi
  if [ "$non2xx" -ne 0 ] || [ "$sock" -ne 0 ]; then
    ERRORS=1
    echo "bench: $name: $(grep -E 'Non-2xx|Socket errors' <<<"$out" | sed 's/^ *//' | paste -sd';')" >&2
  fi
  CPU_US_REQ=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$REQS" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
  CPU_SPLIT=$(awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$CLK_TCK" -v n="$REQS" \
    'BEGIN { printf "%.1f+%.1f", u * 1e6 / hz / n, s * 1e6 / hz / n }')
  CPU_PCT=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN { printf "%.0f", d / hz / s * 100 }')
  DEMO_PCT=$(awk -v d=$((d1 - d0)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN { printf "%.0f", d / hz / s * 100 }')
  WRK_PCT=$(awk -v s="$secs" '$1 == "wrk-cpu" { printf "%.0f", ($2 + $3) / s * 100 }' <<<"$out")
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
