// @flotilla/app: process scaffolding for flotilla's apps.
export { runApp, FLOTILLA_VERSION } from './app.js';
export type { AppContext, Stop } from './app.js';
