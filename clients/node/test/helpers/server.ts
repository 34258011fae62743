/**
 * redis-server processes with the tally module, on free 127.0.0.1 ports, started and stopped
 * by the tests. The server binary comes from TALLY_SERVER_BIN (default `redis-server`), the
 * module from TALLY_MODULE (default `<repo>/target/release/libtally.so`), copied once per
 * test process into a private temporary directory so a rebuild cannot change it mid-run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import Redis from 'ioredis';

/** The package root (clients/node): the nearest directory up with our package.json. */
export function packageRoot(): string {
  for (let dir = __dirname; ; dir = dirname(dir)) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj) && (JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === '@tally/client') {
      return dir;
    }
    if (dirname(dir) === dir) {
      throw new Error(`no @tally/client package.json above ${__dirname}`);
    }
  }
}

const workDir = mkdtempSync(join(tmpdir(), 'tally-node-test-'));
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of children) {
    child.kill('SIGKILL');
  }
  rmSync(workDir, { recursive: true, force: true });
});

let modulePath: string | undefined;

/** The module, copied once into this process's private directory. */
export function tallyModule(): string {
  if (modulePath === undefined) {
    const source = process.env.TALLY_MODULE ?? resolve(packageRoot(), '../../target/release/libtally.so');
    if (!existsSync(source)) {
      throw new Error(`the tally module ${source} does not exist: cargo build --release -p tally (or set TALLY_MODULE)`);
    }
    modulePath = join(workDir, 'libtally.so');
    copyFileSync(source, modulePath);
  }
  return modulePath;
}

export function serverBin(): string {
  return process.env.TALLY_SERVER_BIN ?? 'redis-server';
}

/** A port nothing listens on right now (the kernel's pick). */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? res(addr.port) : rej(new Error('no port'))));
    });
  });
}

/** Polls `check` until it returns true or `timeoutMs` passes (then throws `what`). */
export async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      if (await check()) {
        return;
      }
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

function pingOnce(port: number): Promise<boolean> {
  return new Promise((res) => {
    const sock = createConnection({ host: '127.0.0.1', port });
    let data = '';
    const done = (ok: boolean): void => {
      sock.destroy();
      res(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.on('error', () => done(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      data += d.toString();
      if (data.includes('\r\n')) {
        done(data.startsWith('+PONG'));
      }
    });
  });
}

export interface Server {
  port: number;
  url: string;
  dir: string;
  /** A plain ioredis connection for setup and assertions (XLEN, CONFIG, HGET, ...). */
  admin(): Redis;
  stop(): Promise<void>;
}

let serial = 0;

/** Starts redis-server + tally on a free port and waits until it answers PING. */
export async function startServer(extraArgs: string[] = []): Promise<Server> {
  const mod = tallyModule();
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const dir = join(workDir, `server-${process.pid}-${serial++}`);
    mkdirSync(dir, { recursive: true });
    const args = [
      '--port', String(port),
      '--bind', '127.0.0.1',
      '--dir', dir,
      '--save', '',
      '--appendonly', 'no',
      '--daemonize', 'no',
      '--logfile', join(dir, 'server.log'),
      '--loadmodule', mod,
      ...extraArgs,
    ];
    const child = spawn(serverBin(), args, { stdio: 'ignore' });
    children.add(child);
    let exited = false;
    child.once('exit', () => {
      exited = true;
      children.delete(child);
    });
    try {
      await waitFor(`${serverBin()} on port ${port}`, async () => {
        if (exited) {
          throw new Error(`the server exited: ${readLog(dir)}`);
        }
        return pingOnce(port);
      });
    } catch (err) {
      child.kill('SIGKILL');
      if (attempt < 3 && /Address already in use/.test(readLog(dir))) {
        continue;
      }
      throw err;
    }
    const admins: Redis[] = [];
    return {
      port,
      url: `redis://127.0.0.1:${port}`,
      dir,
      admin() {
        const r = new Redis({ host: '127.0.0.1', port, lazyConnect: false, maxRetriesPerRequest: 1 });
        admins.push(r);
        return r;
      },
      async stop() {
        for (const r of admins) {
          r.disconnect();
        }
        if (exited) {
          return;
        }
        const gone = new Promise<void>((r) => child.once('exit', () => r()));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await gone;
        clearTimeout(timer);
      },
    };
  }
}

function readLog(dir: string): string {
  try {
    return readFileSync(join(dir, 'server.log'), 'utf8').slice(-2000);
  } catch {
    return '(no log)';
  }
}

/** XLEN of the standalone change log. */
export async function xlen(admin: Redis, stream = 'tally:log'): Promise<number> {
  return Number(await admin.call('XLEN', stream));
}

/** One field of `INFO tally`. */
export async function infoField(admin: Redis, field: string): Promise<string> {
  const info = String(await admin.call('INFO', 'tally'));
  const line = info.split('\r\n').find((l) => l.startsWith(`${field}:`));
  if (line === undefined) {
    throw new Error(`INFO tally has no ${field}`);
  }
  return line.slice(field.length + 1);
}

export interface ClusterNodes {
  nodes: Server[];
  /** The node serving `key`'s slot. */
  nodeFor(key: string): Promise<Server>;
  stop(): Promise<void>;
}

/**
 * Three redis-server primaries with `--cluster-enabled yes` and the module, a third of the
 * slots each (CLUSTER ADDSLOTSRANGE), joined with CLUSTER MEET; resolves once every node
 * reports `cluster_state:ok` and sees all three slot ranges.
 */
export async function startCluster(): Promise<ClusterNodes> {
  const nodes: Server[] = [];
  const busPorts: number[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const busPort = await freePort();
      busPorts.push(busPort);
      nodes.push(
        await startServer([
          '--cluster-enabled', 'yes',
          '--cluster-config-file', 'nodes.conf',
          '--cluster-port', String(busPort),
          '--cluster-node-timeout', '5000',
        ]),
      );
    }
    const admins = nodes.map((n) => n.admin());
    const ranges: Array<[number, number]> = [
      [0, 5460],
      [5461, 10922],
      [10923, 16383],
    ];
    await Promise.all(admins.map((a, i) => a.call('CLUSTER', 'ADDSLOTSRANGE', String(ranges[i]?.[0]), String(ranges[i]?.[1]))));
    const first = admins[0] as Redis;
    for (let i = 1; i < nodes.length; i++) {
      await first.call('CLUSTER', 'MEET', '127.0.0.1', String(nodes[i]?.port), String(busPorts[i]));
    }
    for (const a of admins) {
      await waitFor('cluster_state:ok and 3 slot ranges on every node', async () => {
        const info = String(await a.call('CLUSTER', 'INFO'));
        const slots = (await a.call('CLUSTER', 'SLOTS')) as unknown[];
        return info.includes('cluster_state:ok') && info.includes('cluster_known_nodes:3') && slots.length === 3;
      });
    }
    return {
      nodes,
      async nodeFor(key: string) {
        const slot = Number(await first.call('CLUSTER', 'KEYSLOT', key));
        const i = ranges.findIndex(([lo, hi]) => slot >= lo && slot <= hi);
        return nodes[i] as Server;
      },
      async stop() {
        await Promise.all(nodes.map((n) => n.stop()));
      },
    };
  } catch (err) {
    await Promise.all(nodes.map((n) => n.stop()));
    throw err;
  }
}
