/**
 * A TCP proxy in front of a server that can lose one reply: armed with a command name, it
 * forwards the next request that contains it, waits for the server's reply (so the command
 * has been applied), and then closes both connections instead of delivering that reply. The
 * client sees a lost connection for a command the server did apply: the case op-ids exist for.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';

export interface DroppingProxy {
  port: number;
  /** The next request containing `command` gets its reply dropped (once). */
  arm(command: string): void;
  /** How many replies were dropped so far. */
  readonly dropped: number;
  close(): Promise<void>;
}

export function startProxy(targetPort: number): Promise<DroppingProxy> {
  let armed: string | null = null;
  let dropped = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
    sockets.add(client);
    sockets.add(upstream);
    let dropNextReply = false;
    const closeBoth = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('data', (chunk) => {
      if (armed !== null && chunk.toString('latin1').toUpperCase().includes(armed)) {
        armed = null;
        dropNextReply = true;
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (dropNextReply) {
        dropped++;
        closeBoth();
        return;
      }
      client.write(chunk);
    });
    client.on('error', closeBoth);
    upstream.on('error', closeBoth);
    client.on('close', closeBoth);
    upstream.on('close', closeBoth);
  });
  return new Promise((res, rej) => {
    server.once('error', rej);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      if (typeof addr !== 'object' || addr === null) {
        rej(new Error('proxy: no address'));
        return;
      }
      res({
        port: addr.port,
        arm(command: string) {
          armed = command.toUpperCase();
        },
        get dropped() {
          return dropped;
        },
        close() {
          for (const s of sockets) {
            s.destroy();
          }
          return new Promise<void>((r) => server.close(() => r()));
        },
      });
    });
  });
}
