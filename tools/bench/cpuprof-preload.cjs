// Preloaded into flotilla's apps by `npm run bench -- --cpu-prof DIR` and `roundtrips.ts
// --cpu-prof DIR` (NODE_OPTIONS --require; node refuses --cpu-prof itself in NODE_OPTIONS):
// profiles with the inspector and writes DIR/<title>-<app>-<pid>.cpuprofile. The whole
// process, written when it exits; or, with FLOTILLA_CPU_PROF_SIGNAL=1, from one SIGUSR2 to
// the next (written then), so a profile holds only the commands being measured.
const inspector = require('node:inspector');
const fs = require('node:fs');
const path = require('node:path');
const dir = process.env.FLOTILLA_CPU_PROF_DIR;
if (dir) {
  const session = new inspector.Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 1000 });
  const write = () => {
    // An in-thread session answers synchronously, so this works inside 'exit'.
    session.post('Profiler.stop', (err, res) => {
      if (err || !res) return;
      const name = `${path.basename(process.argv[1] || 'node', '.js')}-${path.basename(path.dirname(process.argv[1] || ''))}-${process.pid}.cpuprofile`;
      fs.writeFileSync(path.join(dir, name), JSON.stringify(res.profile));
    });
  };
  if (process.env.FLOTILLA_CPU_PROF_SIGNAL === '1') {
    let running = false;
    process.on('SIGUSR2', () => {
      running = !running;
      if (running) session.post('Profiler.start');
      else write();
    });
  } else {
    session.post('Profiler.start');
    process.on('exit', write);
  }
}
