#!/usr/bin/env node
// bnconform exchange runner for TensorFlow.js (@tensorflow/tfjs, pure-JavaScript CPU backend).
//
//   node run.js DIR        (DIR: the folder `bnconform export --runner node` wrote; default: this file's folder)
//
// Reads DIR/manifest.json and every case file it lists (format: docs/exchange.md), runs each case through
// tf.layers.batchNormalization, and writes one observation file per case to
// DIR/observations/<adapter>/<case>.json, each written to a temporary name and renamed, so an interrupted run
// leaves whole files only (`bnconform import` imports what is complete). A case the runtime cannot run is an
// observation with "skip"; a case that throws is an observation with "raised" (the suite records an error);
// gradients that throw after the forward ran are listed in "failed" (the forward's quantities are kept).
// Everything it prints goes to stderr; the exit status is 0 when every case was written.
'use strict';

const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const ADAPTER = 'tfjs.layers.batchNormalization';
const FORMAT_VERSION = 1;

function loadTf() {
  const tf = require('@tensorflow/tfjs');
  // The pure-JavaScript CPU kernels: deterministic, and the backend users get in Node without tfjs-node.
  return tf.setBackend('cpu').then(() => tf);
}

function decode(enc) {
  if (enc.dtype !== 'float64') throw new Error(`input arrays are float64, not ${enc.dtype}`);
  const bytes = Buffer.from(enc.data, 'base64');
  const copy = new Uint8Array(bytes); // aligned copy: a Buffer may start at any offset of its pool
  const values = new Float64Array(copy.buffer, 0, copy.byteLength / 8);
  const expected = enc.shape.reduce((a, b) => a * b, 1);
  if (values.length !== expected) throw new Error(`array of shape [${enc.shape}] holds ${values.length} values`);
  return {shape: enc.shape, values};
}

function encode(tf, tensor, shape) {
  const data = tensor.dataSync();
  if (!(data instanceof Float32Array)) throw new Error(`unexpected ${tensor.dtype} result`);
  return {dtype: 'float32', shape, data: Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64')};
}

// Float32 input as the framework sees it (the values are exactly representable: the suite rounded them).
function tensor(tf, arr) {
  return tf.tensor(Float32Array.from(arr.values), arr.shape, 'float32');
}

function unsupported(c) {
  if (c.dtype !== 'float32') return `TensorFlow.js computes floating point in float32 only, not ${c.dtype}`;
  if (c.shape.length > 4) {
    return `tf.layers.batchNormalization throws NotImplementedError for rank ${c.shape.length} ` +
        '(tfjs-layers/src/layers/normalization.ts: ranks 2-4 only)';
  }
  if (c.momentum === null && !c.use_defaults) return 'tf.layers.batchNormalization has no cumulative average';
  if (!c.track_running_stats) return 'tf.layers.batchNormalization always keeps moving statistics';
  if (c.memory_format !== 'contiguous') return 'TensorFlow.js tensors have no memory format';
  return null;
}

// One case: every step through the same layer; gradients (and second order) at the last step, in its mode.
function runCase(tf, c) {
  const C = c.shape[c.axis];
  const cfg = {axis: c.axis, center: c.affine, scale: c.affine};
  if (!c.use_defaults) {
    cfg.momentum = c.momentum_old; // tfjs' momentum is the weight on the old value
    cfg.epsilon = c.eps;
  }
  const layer = tf.layers.batchNormalization(cfg);
  layer.build(c.shape);
  const a = c.arrays;
  const weights = c.affine ? [a.gamma, a.beta, a.running_mean, a.running_var] : [a.running_mean, a.running_var];
  layer.setWeights(weights.map((w) => tensor(tf, decode(w))));
  const wants = new Set(c.quantities);
  const firstOrder = ['dx', 'dgamma', 'dbeta'].some((q) => wants.has(q));
  const secondOrder = ['d2x', 'd2gamma'].some((q) => wants.has(q));
  const ys = [];
  const means = [];
  const vars = [];
  const values = {};
  const failed = {};
  const stats = () => {
    const w = layer.getWeights();
    const k = c.affine ? 2 : 0;
    means.push(w[k].clone());
    vars.push(w[k + 1].clone());
  };
  c.modes.forEach((mode, step) => {
    const training = mode === 'train';
    const x = tensor(tf, decode(a.xs[step]));
    if (step < c.modes.length - 1 || !(firstOrder || secondOrder)) {
      ys.push(layer.apply(x, {training}));
      stats();
      return;
    }
    const xVar = tf.variable(x, true, `bnconform_x_${step}`);
    const dy = tensor(tf, decode(a.dy));
    const params = c.affine ? [layer.trainableWeights[0].read(), layer.trainableWeights[1].read()] : [];
    let y = null;
    // <y, dy> and its gradients; run once, so the moving statistics are updated exactly once.
    const firstOrderGrads = () => tf.variableGrads(() => {
      const out = layer.apply(xVar, {training});
      y = tf.keep(out);
      return tf.sum(tf.mul(out, dy));
    }, [xVar, ...params]).grads;
    // A gradient the runtime does not return (d2x in inference: dx does not depend on x) is zero.
    const grad = (grads, v, shape) => encode(tf, grads[v.name] || tf.zerosLike(v), shape);
    try {
      let g;
      if (secondOrder) {
        const v = tensor(tf, decode(a.v));
        let kept = null;
        const outer = tf.variableGrads(() => {
          g = firstOrderGrads();
          kept = Object.fromEntries(Object.entries(g).map(([k, t]) => [k, tf.keep(t.clone())]));
          return tf.sum(tf.mul(g[xVar.name], v));
        }, [xVar, ...params]).grads;
        g = kept;
        values.d2x = grad(outer, xVar, c.shape);
        if (c.affine) values.d2gamma = grad(outer, params[0], [C]);
      } else {
        g = firstOrderGrads();
      }
      values.dx = grad(g, xVar, c.shape);
      if (c.affine) {
        values.dgamma = grad(g, params[0], [C]);
        values.dbeta = grad(g, params[1], [C]);
      }
    } catch (e) {
      // The forward ran (y and the statistics are observed); the gradients threw: report them as failed.
      if (y === null) throw e;
      for (const q of ['dx', 'dgamma', 'dbeta', 'd2x', 'd2gamma']) failed[q] = `${e.name || 'Error'}: ${e.message}`;
    }
    ys.push(y);
    stats();
    xVar.dispose();
  });
  const steps = c.modes.length;
  values.y = encode(tf, tf.stack(ys), [steps, ...c.shape]);
  values.running_mean = encode(tf, tf.stack(means), [steps, C]);
  values.running_var = encode(tf, tf.stack(vars), [steps, C]);
  const why = 'tf.layers.batchNormalization does not expose its batch statistics';
  const unsupportedQ = {batch_mean: why, batch_var: why, num_batches_tracked: 'tf.layers.batchNormalization keeps no step counter'};
  for (const q of Object.keys(values)) if (!wants.has(q)) delete values[q];
  for (const q of Object.keys(failed)) if (!wants.has(q)) delete failed[q];
  return {values, unsupported: unsupportedQ, failed};
}

function writeAtomic(file, obj) {
  fs.mkdirSync(path.dirname(file), {recursive: true});
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(obj) + '\n');
  fs.renameSync(tmp, file);
}

async function main() {
  const dir = path.resolve(process.argv[2] || __dirname);
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  if (manifest.format !== 'bnconform-exchange' || manifest.version !== FORMAT_VERSION) {
    throw new Error(`${dir}/manifest.json: not a bnconform exchange folder of version ${FORMAT_VERSION}`);
  }
  const tf = await loadTf();
  const runtime = {
    name: '@tensorflow/tfjs', version: tf.version.tfjs, api: 'tf.layers.batchNormalization',
    backend: tf.getBackend(), device: 'cpu', host: `node ${process.version}`,
  };
  let unwritten = 0;
  for (const entry of manifest.cases) {
    const raw = fs.readFileSync(path.join(dir, entry.file));
    const c = JSON.parse(raw.toString('utf8'));
    const obs = {
      format: 'bnconform-exchange-observation', version: FORMAT_VERSION, case_id: c.case_id, adapter: ADAPTER,
      case_sha256: crypto.createHash('sha256').update(raw).digest('hex'), runtime,
      skip: null, raised: null, values: {}, unsupported: {}, failed: {},
    };
    const why = unsupported(c);
    if (why) {
      obs.skip = why;
    } else {
      try {
        Object.assign(obs, tf.tidy(() => {
          const out = runCase(tf, c);
          return out;
        }));
      } catch (e) {
        obs.raised = `${e.name || 'Error'}: ${e.message}`;
      }
    }
    try {
      writeAtomic(path.join(dir, manifest.observations, ADAPTER, `${c.case_id}.json`), obs);
    } catch (e) {
      unwritten += 1;
      process.stderr.write(`run.js: ${c.case_id}: cannot write its observation: ${e.message}\n`);
    }
    tf.disposeVariables();
  }
  process.stderr.write(`run.js: ${manifest.cases.length - unwritten} of ${manifest.cases.length} cases written to ` +
      `${path.join(dir, manifest.observations, ADAPTER)}\n`);
  process.exitCode = unwritten ? 1 : 0;
}

main().catch((e) => {
  process.stderr.write(`run.js: ${e.message}\n`);
  process.exitCode = 2;
});
