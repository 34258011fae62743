import { createClient } from 'redis';
import { fromNodeRedis, tally } from '@tally/client/node-redis';
import { defineAdapterSuite } from './helpers/suite';

for (const RESP of [2, 3] as const) {
  defineAdapterSuite(`node-redis v5, RESP${RESP} (createClient({ modules: { tally } }))`, {
    async connect(server, options = {}) {
      const client = createClient({
        RESP,
        socket: { host: '127.0.0.1', port: server.port },
        ...(options.user ? { username: options.user.name, password: options.user.password } : {}),
        modules: { tally },
      });
      client.on('error', () => {});
      await client.connect();
      return {
        t: fromNodeRedis(client, options.codec ? { codec: options.codec } : {}),
        async close() {
          client.destroy();
        },
      };
    },
  });
}
