// The declarations in bachata.d.ts name exactly the module's exports (no
// TypeScript compiler here: the names are read from the file).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as bachata from '../bachata.js';

test('bachata.d.ts declares every export and nothing else', () => {
  const dts = readFileSync(new URL('../bachata.d.ts', import.meta.url), 'utf8');
  const declared = new Set(
    [...dts.matchAll(/^export declare (?:const|class|function) (\w+)/gm)].map((m) => m[1]),
  );
  if (/^export default /m.test(dts)) declared.add('default');
  assert.deepEqual([...declared].sort(), Object.keys(bachata).sort());
});
