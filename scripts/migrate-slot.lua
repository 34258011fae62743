-- Moves EVERY key of one hash slot to another node in one atomic step, for resharding a
-- cluster that runs tally with the legacy SETSLOT procedure (Redis 7.x; Valkey before 9).
--
--   EVAL "$(cat scripts/migrate-slot.lua)" 0 <slot> <target-host> <target-port> [timeout-ms] [auth args...]
--
-- Run it on the source node after `CLUSTER SETSLOT <slot> IMPORTING <source-id>` on the
-- target and `CLUSTER SETSLOT <slot> MIGRATING <target-id>` on the source; then assign the
-- slot with `CLUSTER SETSLOT <slot> NODE <target-id>` on the target and the source
-- (scripts/reshard-slot.sh does all of it).
--
-- Why one step: a tally command also writes keys that are not among its arguments (the
-- slot's stream, sequence hash and op-id records), which Redis's MIGRATING/ASK logic cannot
-- see. Moved key by key (redis-cli --cluster reshard), a command can run on the source while
-- some of those keys are already on the target: it starts a new stream and sequence there or
-- re-applies a retried op-id. A script runs alone on the node's main thread, so no command
-- interleaves between listing the keys and moving them; after it, every command for the slot
-- finds its keys missing on the source and is redirected (ASK) to the target, which has them all.
local slot, host, port = ARGV[1], ARGV[2], ARGV[3]
local timeout = ARGV[4] or '60000'
local auth = {}
for i = 5, #ARGV do auth[#auth + 1] = ARGV[i] end
local moved = 0
while true do
  local keys = redis.call('CLUSTER', 'GETKEYSINSLOT', slot, 1000)
  if #keys == 0 then return moved end
  local args = {'MIGRATE', host, port, '', 0, timeout}
  for _, a in ipairs(auth) do args[#args + 1] = a end
  args[#args + 1] = 'KEYS'
  for _, k in ipairs(keys) do args[#args + 1] = k end
  redis.call(unpack(args))
  moved = moved + #keys
end
