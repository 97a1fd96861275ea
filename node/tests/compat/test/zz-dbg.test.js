const orig = global.setTimeout;
global.setTimeout = function (fn, ms, ...a) { const t = orig(fn, ms, ...a); if (ms >= 20000) console.log('LONG TIMER', ms, new Error().stack.split('\n').slice(2,8).join('\n')); return t; };
require('./07-user-signin.test.js');
