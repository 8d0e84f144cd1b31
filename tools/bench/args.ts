// Command line of `npm run bench`.

export interface BenchArgs {
  /** Workload names to run; all when empty. */
  only: string[];
  /** Rounds for every workload, overriding each one's default. */
  rounds?: number;
  /** Small sizes and 1-2 rounds: proves the harness, measures little (the smoke test). */
  quick: boolean;
  /** Directory for benchmarks.json, benchmarks.svg and benchmarks.md. */
  out?: string;
  /** Profile flotilla's apps with --cpu-prof; profiles go to this directory. */
  cpuProf?: string;
  help: boolean;
}

export const USAGE = `usage: npm run bench -- [options]
  --only a,b        run only these workloads (see --list)
  --rounds N        rounds per workload (default: each workload's own)
  --quick           small sizes, 1-2 rounds: a smoke run of the harness
  --out DIR         write benchmarks.json, benchmarks.svg and update benchmarks.md there
                    (default: docs/ for full runs, a temporary directory for --quick)
  --cpu-prof DIR    run flotilla's apps with node --cpu-prof, profiles written to DIR
  --list            print the workloads and exit
`;

export function parseArgs(argv: readonly string[]): BenchArgs & { list: boolean } {
  const out: BenchArgs & { list: boolean } = { only: [], quick: false, help: false, list: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined || v === '') throw new Error(`${flag} needs a value\n${USAGE}`);
      return v;
    };
    switch (flag) {
      case '--only':
        out.only.push(...value().split(',').map((s) => s.trim()).filter(Boolean));
        break;
      case '--rounds': {
        const n = Number(value());
        if (!Number.isInteger(n) || n < 1) throw new Error(`--rounds: want a positive integer\n${USAGE}`);
        out.rounds = n;
        break;
      }
      case '--quick':
        out.quick = true;
        break;
      case '--out':
        out.out = value();
        break;
      case '--cpu-prof':
        out.cpuProf = value();
        break;
      case '--list':
        out.list = true;
        break;
      case '-h':
      case '--help':
        out.help = true;
        break;
      default:
        throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  }
  return out;
}
