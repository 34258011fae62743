/**
 * The usage billing story: a monthly quota of 100 API calls and 150 calls at once. Reading
 * `used < limit` and then incrementing lets a burst through; USAGE.CONSUME checks and counts
 * in one step, so exactly 100 calls pass and 50 get LimitExceededError.
 *
 *   node dist/examples/usage-quota.js [redis-url] [counter-key]
 */
import Redis from 'ioredis';
import { LimitExceededError, withRetry } from '@tally/client';
import { fromIoredis } from '@tally/client/ioredis';
import { redisUrl, run, runName } from './common';

const LIMIT = '100';
const CALLS = 150;

run(async () => {
  const redis = new Redis(redisUrl());
  try {
    const t = fromIoredis(redis);
    const key = runName('api:acme:');
    await t.usageLimit(key, LIMIT, { period: 'month', opId: `plan-${key}` });
    const calls = Array.from({ length: CALLS }, () => withRetry((opId) => t.usageConsume(key, '1', { opId })));
    const results = await Promise.allSettled(calls);
    const passed = results.filter((r) => r.status === 'fulfilled').length;
    const refused = results.filter((r) => r.status === 'rejected' && r.reason instanceof LimitExceededError).length;
    const usage = await t.usageGet(key);
    console.log(`${key}: ${passed} calls passed, ${refused} refused;`, usage);
    return passed === 100 && refused === CALLS - 100 && usage.used === LIMIT && usage.remaining === '0';
  } finally {
    redis.disconnect();
  }
});
