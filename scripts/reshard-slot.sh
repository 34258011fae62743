#!/usr/bin/env bash
# Moves one hash slot from SOURCE to TARGET with every key of the slot moved in one atomic
# step (scripts/migrate-slot.lua), the resharding procedure tally needs on servers without
# atomic slot migration (Redis 7.x). On Valkey 9+ use CLUSTER MIGRATESLOTS instead.
#
#   scripts/reshard-slot.sh SOURCE_HOST:PORT TARGET_HOST:PORT SLOT [timeout-ms]
#
# REDISCLI_AUTH / extra redis-cli options in $REDIS_CLI_OPTS are honoured. The source node
# is busy (blocked) while the slot's keys move: drain the shipper backlog first so the slot's
# stream is small, and move one slot at a time.
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 SOURCE_HOST:PORT TARGET_HOST:PORT SLOT [timeout-ms]" >&2; exit 2; }
src="$1" dst="$2" slot="$3" timeout="${4:-60000}"
# REDIS_CLI_OPTS holds several words (e.g. "--user u --pass p"): split on purpose
# shellcheck disable=SC2086
cli() { local hp="$1"; shift; redis-cli ${REDIS_CLI_OPTS:-} -h "${hp%:*}" -p "${hp##*:}" "$@"; }
check() { local out; out="$("$@")"; [[ "$out" == OK ]] || { echo "$*: $out" >&2; exit 1; }; }
src_id="$(cli "$src" CLUSTER MYID)"
dst_id="$(cli "$dst" CLUSTER MYID)"
check cli "$dst" CLUSTER SETSLOT "$slot" IMPORTING "$src_id"
check cli "$src" CLUSTER SETSLOT "$slot" MIGRATING "$dst_id"
moved="$(cli "$src" EVAL "$(cat "$(dirname "$0")/migrate-slot.lua")" 0 "$slot" "${dst%:*}" "${dst##*:}" "$timeout")"
[[ "$moved" =~ ^[0-9]+$ ]] || { echo "migrate-slot.lua: $moved (slot $slot is still MIGRATING; fix and rerun)" >&2; exit 1; }
check cli "$dst" CLUSTER SETSLOT "$slot" NODE "$dst_id"
check cli "$src" CLUSTER SETSLOT "$slot" NODE "$dst_id"
echo "slot $slot: $moved keys moved from $src to $dst in one step"
