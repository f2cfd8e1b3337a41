#!/usr/bin/env bash
# Walks the example release hello through what the erel-sync agent does, by hand, with timings:
# extract 0.1.0, render vm.args/sys.config, boot, hot upgrade to 0.2.0 (state converted), make
# it permanent, hot upgrade to the unhealthy 0.3.0, roll back, change config live, stop, boot
# the permanent version again, stop. Exits non-zero at the first unexpected answer.
#
#   bash erlang/build-examples.sh build/examples
#   bash erlang/examples/walkthrough.sh build/examples [WORKDIR]
#
# The cookie lives in WORKDIR/home/.erlang.cookie (0400); the node and erl_call run with HOME
# pointing there, so the cookie is on no command line. Only processes this script started are
# stopped (by PID); the work dir is removed at the end unless KEEP=1.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 EXAMPLES_OUTDIR [WORKDIR]" >&2; exit 2; }
OUT="$(cd "$1" && pwd -P)"
WORK="${2:-$(mktemp -d "${TMPDIR:-/tmp}/erel-walk.XXXXXX")}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd -P)"
ROOT="$WORK/hello"
CHOME="$WORK/home"
NODE="erelwalk$$"
PIPES="$WORK/pipes"
ERL_CALL="$(command -v erl_call || ls /usr/lib/erlang/lib/erl_interface-*/bin/erl_call | tail -1)"
BEAM_PID=""

for f in hello-0.1.0 hello-0.2.0 hello-0.3.0; do
    [ -f "$OUT/$f.tar.gz" ] || { echo "missing $OUT/$f.tar.gz (run erlang/build-examples.sh)" >&2; exit 1; }
done

cleanup() {
    local rc=$?
    if [ -n "$BEAM_PID" ] && kill -0 "$BEAM_PID" 2>/dev/null; then
        echo "cleanup: killing node OS process $BEAM_PID" >&2
        kill "$BEAM_PID" 2>/dev/null || true
    fi
    [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

now() { date +%s%N; }
ms() { echo $((($2 - $1) / 1000000)); }
fail() { echo "FAILED: $*" >&2; exit 1; }

# erl_call -a 'Mod Fun [Args]': prints the decoded JSON of an erel1 envelope, else the raw output.
rpc() {
    local out
    out="$(HOME="$CHOME" "$ERL_CALL" -R -sname "$NODE" -timeout 60 -a "$1")" || return 1
    case "$out" in
        '"erel1:'*) out="${out#\"erel1:}"; printf '%s\n' "${out%\"}" | base64 -d; echo ;;
        *) printf '%s\n' "$out" ;;
    esac
}

# step 'Mod Fun [Args]' EXPECTED-SUBSTRING: runs, times, prints, checks.
step() {
    local t0 t1 out
    t0=$(now)
    out="$(rpc "$1")" || fail "$1: erl_call failed"
    t1=$(now)
    printf '%5s ms  %s\n          -> %s\n' "$(ms "$t0" "$t1")" "$1" "$out"
    case "$out" in *"$2"*) ;; *) fail "$1: expected '$2'" ;; esac
}

render() { # VSN GREETING: what the agent writes before booting or installing VSN
    printf -- '-sname %s\n+K true\n' "$NODE" >"$ROOT/releases/$1/vm.args"
    printf '[{hello, [{greeting, "%s"}]}].\n' "$2" >"$ROOT/releases/$1/sys.config"
}

# The agent's way to boot one given version: run_erl (from the release's ERTS) running
# `bin/hello-VSN console`. (`bin/hello-VSN daemon` would not do: its run_erl line execs
# `bin/hello console`, which boots the version bin/hello was written for.)
boot() { # VSN
    local t0 t1 out first=""
    mkdir -p "$PIPES" "$ROOT/log"
    t0=$(now)
    HOME="$CHOME" RUN_ERL_DISABLE_FLOWCNTRL=true "$ROOT"/erts-*/bin/run_erl -daemon "$PIPES/" "$ROOT/log" \
        "exec \"$ROOT/bin/hello-$1\" console"
    wait_up "$t0"
    printf '%5s ms  run_erl -daemon returned\n' "$(ms "$t0" "$RUN_ERL_RETURNED")"
}

# The relx way: `bin/hello daemon` boots the version of bin/hello (erel's make_permanent keeps
# it the permanent one); the script itself returns only after a `sleep 1` poll.
boot_relx() {
    local t0 t1
    t0=$(now)
    HOME="$CHOME" PIPE_DIR="$PIPES/" timeout 60 "$ROOT/bin/hello" daemon &
    local script_pid=$!
    wait_up "$t0"
    wait "$script_pid" || fail "bin/hello daemon failed"
    t1=$(now)
    printf '%5s ms  bin/hello daemon returned\n' "$(ms "$t0" "$t1")"
}

wait_up() { # T0: poll erel_rpc:status until ok:true
    local t0="$1" out first="" t1
    RUN_ERL_RETURNED=$(now)
    while :; do
        out="$(rpc 'erel_rpc status []' 2>/dev/null || true)"
        case "$out" in *'"ok":'*) [ -n "$first" ] || first=$(now) ;; esac
        case "$out" in *'"ok":true'*) break ;; esac
        [ $(($(now) - t0)) -lt 30000000000 ] || fail "node did not answer within 30 s (see $ROOT/log)"
        sleep 0.02
    done
    t1=$(now)
    BEAM_PID="$(rpc 'os getpid []' | tr -d '"')"
    printf '%5s ms  first erel1 answer (may be ok:false "still booting")\n' "$(ms "$t0" "$first")"
    printf '%5s ms  erel_rpc:status ok:true (os pid %s)\n' "$(ms "$t0" "$t1")" "$BEAM_PID"
}

stop() {
    local t0 t1 t2
    t0=$(now)
    rpc 'init stop []' >/dev/null || fail "init:stop"
    while HOME="$CHOME" "$ERL_CALL" -R -sname "$NODE" -a 'erlang node []' >/dev/null 2>&1; do sleep 0.02; done
    t1=$(now)
    while kill -0 "$BEAM_PID" 2>/dev/null; do sleep 0.02; done
    t2=$(now)
    printf '%5s ms  init:stop -> node unreachable\n%5s ms  init:stop -> OS process %s gone\n' \
        "$(ms "$t0" "$t1")" "$(ms "$t0" "$t2")" "$BEAM_PID"
    BEAM_PID=""
}

mkdir -p "$ROOT" "$CHOME"
head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$CHOME/.erlang.cookie"
chmod 400 "$CHOME/.erlang.cookie"

echo "== extract hello-0.1.0 into $ROOT, render, boot"
t0=$(now); tar -xzf "$OUT/hello-0.1.0.tar.gz" -C "$ROOT"; t1=$(now)
printf '%5s ms  tar -xzf hello-0.1.0.tar.gz\n' "$(ms "$t0" "$t1")"
render 0.1.0 "hello from 0.1.0"
boot 0.1.0
step 'erel_rpc status []' '"current":"0.1.0"'
step 'erel_rpc health []' '"healthy":true'
step 'hello_server bump []' '1'
step 'hello_server bump []' '2'
step 'hello_server put ["color", "blue"]' 'ok'
step 'hello_server get []' '"shape":"v1","count":2'

echo "== hot upgrade to 0.2.0"
cp "$OUT/hello-0.2.0.tar.gz" "$ROOT/releases/0.2.0.tar.gz"
step 'erel_rpc unpack ["0.2.0"]' '"value":"0.2.0"'
step 'erel_rpc unpack ["0.2.0"]' '"value":"0.2.0"'
render 0.2.0 "hello from 0.2.0"
step 'erel_rpc relup_from ["0.2.0"]' '"value":["0.1.0"]'
step 'erel_rpc install ["0.2.0"]' '"from":"0.1.0","to":"0.2.0"'
step 'hello_server get []' '"count_at_upgrade":2'
step 'erel_rpc health []' '"healthy":true'
step 'erel_rpc make_permanent ["0.2.0"]' '"permanent":"0.2.0"'
echo "          releases/start_erl.data: $(cat "$ROOT/releases/start_erl.data"); bin/hello: $(grep '^REL_VSN=' "$ROOT/bin/hello")"

echo "== hot upgrade to the unhealthy 0.3.0, then roll back"
cp "$OUT/hello-0.3.0.tar.gz" "$ROOT/releases/0.3.0.tar.gz"
step 'erel_rpc unpack ["0.3.0"]' '"value":"0.3.0"'
render 0.3.0 "hello from 0.3.0"
step 'erel_rpc relup_from ["0.3.0"]' '"value":["0.2.0"]'
step 'erel_rpc install ["0.3.0"]' '"from":"0.2.0","to":"0.3.0"'
step 'erel_rpc health []' '"healthy":false'
step 'erel_rpc check [hello_health, check]' '"healthy":false'
step 'erel_rpc status []' '"current":"0.3.0","permanent":"0.2.0"'
step 'erel_rpc rollback []' '"from":"0.3.0","to":"0.2.0"'
step 'erel_rpc rollback []' '"from":"0.2.0","to":"0.2.0"'
step 'hello_server get []' '"release_vsn":"0.2.0","module_vsn":2,"shape":"v2","count":2,"pairs":{"color":"blue"}'
step 'erel_rpc health []' '"healthy":true'

echo "== live config"
payload="$(printf '{"hello":{"greeting":"changed live","extra":{"$tuple":[{"$atom":"a"},1]}}}' | base64 -w0)"
step "erel_rpc apply_config [\"$payload\"]" '"changed":["hello"]'
step 'hello_server get []' '"greeting":"changed live"'
step 'application get_env [hello, extra]' '{ok, {a, 1}}'

echo "== errors"
step 'erel_rpc install ["9.9.9"]' '"ok":false'
step 'erel_rpc unpack ["9.9.9"]' '"ok":false'
step 'erel_rpc install ["../x"]' '"ok":false'

echo "== graceful stop, boot the permanent version again with bin/hello daemon"
stop
boot_vsn="$(cut -d' ' -f2 "$ROOT/releases/start_erl.data")"
[ "$boot_vsn" = 0.2.0 ] || fail "start_erl.data says $boot_vsn"
boot_relx
step 'erel_rpc status []' '"current":"0.2.0","permanent":"0.2.0"'
step 'hello_server get []' '"greeting":"hello from 0.2.0"'
stop
if epmd -names 2>/dev/null | grep -q "name $NODE "; then fail "$NODE still registered in epmd"; fi
echo "OK: walkthrough passed; nothing left running"
