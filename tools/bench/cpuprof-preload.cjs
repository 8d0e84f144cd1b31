// Preloaded into flotilla's apps by `npm run bench -- --cpu-prof DIR` (NODE_OPTIONS
// --require; node refuses --cpu-prof itself in NODE_OPTIONS): profiles the whole process
// with the inspector and writes DIR/<title>-<pid>.cpuprofile when it exits.
const inspector = require('node:inspector');
const fs = require('node:fs');
const path = require('node:path');
const dir = process.env.FLOTILLA_CPU_PROF_DIR;
if (dir) {
  const session = new inspector.Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 1000 });
  session.post('Profiler.start');
  process.on('exit', () => {
    // An in-thread session answers synchronously, so this works inside 'exit'.
    session.post('Profiler.stop', (err, res) => {
      if (err || !res) return;
      const name = `${path.basename(process.argv[1] || 'node', '.js')}-${path.basename(path.dirname(process.argv[1] || ''))}-${process.pid}.cpuprofile`;
      fs.writeFileSync(path.join(dir, name), JSON.stringify(res.profile));
    });
  });
}
