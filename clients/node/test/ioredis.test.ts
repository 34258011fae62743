import Redis from 'ioredis';
import { fromIoredis } from '@tally/client/ioredis';
import { defineAdapterSuite } from './helpers/suite';

defineAdapterSuite('ioredis (call)', {
  async connect(server, options = {}) {
    const client = new Redis({
      host: '127.0.0.1',
      port: server.port,
      ...(options.user ? { username: options.user.name, password: options.user.password } : {}),
    });
    client.on('error', () => {});
    await client.ping();
    return {
      t: fromIoredis(client, options.codec ? { codec: options.codec } : {}),
      async close() {
        client.disconnect();
      },
    };
  },
});
