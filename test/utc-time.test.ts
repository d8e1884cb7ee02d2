/** Dates as text from their UTC fields: the very strings toISOString and toUTCString write. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { httpDate, isoTimestamp } from '../agent/utc-time.ts';

/** From 1970 to 2200: every instant an agent will log or answer at, leap days and year ends included. */
const instants = fc.integer({ min: 0, max: Date.UTC(2200, 0, 1) });

describe('dates as text', () => {
  it('isoTimestamp writes what toISOString writes', () => {
    fc.assert(fc.property(instants, (ms) => isoTimestamp(ms) === new Date(ms).toISOString()), { numRuns: 5_000 });
  });

  it('httpDate writes what toUTCString writes (the HTTP date)', () => {
    fc.assert(fc.property(instants, (ms) => httpDate(ms) === new Date(ms).toUTCString()), { numRuns: 5_000 });
  });

  it('at the edges of a day, a year and a leap day', () => {
    for (const ms of [0, Date.UTC(2024, 1, 29, 23, 59, 59, 999), Date.UTC(2026, 11, 31, 23, 59, 59, 999), Date.UTC(2027, 0, 1)]) {
      assert.equal(isoTimestamp(ms), new Date(ms).toISOString());
      assert.equal(httpDate(ms), new Date(ms).toUTCString());
    }
  });
});
