/**
 * What the examples share: where Redis is. The URL is the first argument, else
 * TALLY_REDIS_URL, else the demo stack's redis://127.0.0.1:6390 (scripts/demo.sh).
 */
export function redisUrl(argv: readonly string[] = process.argv): string {
  return argv[2] ?? process.env.TALLY_REDIS_URL ?? 'redis://127.0.0.1:6390';
}

/** The second argument, else a name unique to this run (so a rerun starts afresh). */
export function runName(prefix: string, argv: readonly string[] = process.argv): string {
  return argv[3] ?? `${prefix}${Date.now().toString(36)}`;
}

/** Runs `main`, printing a failure and exiting 1 (2 when the outcome was wrong). */
export function run(main: () => Promise<boolean>): void {
  main().then(
    (ok) => {
      process.exitCode = ok ? 0 : 2;
    },
    (err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    },
  );
}
