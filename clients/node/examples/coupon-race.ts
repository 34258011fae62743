/**
 * The first-come coupon story: 1,000 users race for 100 coupons and exactly 100 win, each
 * with its own issue number; the losers get SoldOutError. Every claim carries an op-id, so a
 * claim retried after a lost connection cannot take a second coupon.
 *
 *   node dist/examples/coupon-race.js [redis-url] [campaign]
 */
import { createClient } from 'redis';
import { newOpId, SoldOutError, withRetry } from '@tally/client';
import { fromNodeRedis, tally } from '@tally/client/node-redis';
import { redisUrl, run, runName } from './common';

const USERS = 1000;
const COUPONS = 100;
const CONNECTIONS = 20;

run(async () => {
  const clients = await Promise.all(
    Array.from({ length: CONNECTIONS }, () =>
      createClient({ url: redisUrl(), modules: { tally } })
        .on('error', (err: unknown) => console.error('redis:', err))
        .connect(),
    ),
  );
  try {
    const api = clients.map((c) => fromNodeRedis(c));
    const campaign = runName('spring-sale-');
    await api[0]?.couponCreate(campaign, COUPONS, { opId: `create-${campaign}`, meta: 'spring sale' });
    const claims = Array.from({ length: USERS }, (_, i) => {
      const t = api[i % CONNECTIONS];
      return withRetry((opId) => t!.couponClaim(campaign, `user:${i}`, { opId }), { opId: newOpId() });
    });
    const results = await Promise.allSettled(claims);
    const issues = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value.issue] : []));
    const soldOut = results.filter((r) => r.status === 'rejected' && r.reason instanceof SoldOutError).length;
    const info = await api[0]!.couponInfo(campaign);
    console.log(`${campaign}: ${issues.length} won, ${soldOut} sold out;`, info);
    return (
      issues.length === COUPONS &&
      soldOut === USERS - COUPONS &&
      new Set(issues).size === COUPONS &&
      Math.min(...issues) === 1 &&
      Math.max(...issues) === COUPONS &&
      info.issued === COUPONS &&
      info.remaining === 0
    );
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
});
