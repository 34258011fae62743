/**
 * The in-app currency story (seed: updateAllUserAsset). The first version ran two
 * HINCRBYFLOATs in Promise.all: not atomic together, floats (5200 + 10.43 printed as
 * 5210.43000000000000016), and history keyed by timestamp + user id lost grants made in the
 * same millisecond. Here: one ASSET.INCR moves both fields or neither, exact decimal strings,
 * one change-log event per grant, and an op-id per grant so a retry never pays twice.
 *
 *   node dist/examples/currency.js [redis-url] [user-seq]
 */
import Redis from 'ioredis';
import { newOpId, withRetry, type Balances, type TallyApi } from '@tally/client';
import { fromIoredis } from '@tally/client/ioredis';
import { redisUrl, run, runName } from './common';

const USER_ASSET_TYPE = { BDP: 'BDP', TRAINING: 'TRAINING' } as const;

class UserAssetService {
  constructor(private readonly tally: TallyApi) {}

  /** Both currencies at once, atomically; `opId` identifies the grant across retries. */
  updateAllUserAsset(userSeq: string, addedUserBdp: string, addedUserTraining: string, opId = newOpId()): Promise<Balances<string>> {
    return withRetry(
      (id) =>
        this.tally.assetIncr(
          `user.asset.${userSeq}`,
          { [USER_ASSET_TYPE.BDP]: addedUserBdp, [USER_ASSET_TYPE.TRAINING]: addedUserTraining },
          { opId: id, meta: 'updateAllUserAsset' },
        ),
      { opId },
    );
  }
}

run(async () => {
  const redis = new Redis(redisUrl());
  try {
    const assets = new UserAssetService(fromIoredis(redis));
    const user = runName('u');
    await assets.updateAllUserAsset(user, '5200', '0', `signup-${user}`);
    const after = await assets.updateAllUserAsset(user, '10.43', '1.5');
    console.log(`user.asset.${user} after +10.43 BDP, +1.5 TRAINING:`, after);
    // Two rewards at the same moment (the chat reward of the seed): both count, each logged.
    await Promise.all([assets.updateAllUserAsset(user, '0', '10'), assets.updateAllUserAsset(user, '0', '10')]);
    const final = await fromIoredis(redis).assetGet(`user.asset.${user}`, ['BDP', 'TRAINING']);
    console.log(`user.asset.${user} after two concurrent +10 TRAINING:`, final);
    return after.BDP === '5210.43' && final.BDP === '5210.43' && final.TRAINING === '21.5';
  } finally {
    redis.disconnect();
  }
});
